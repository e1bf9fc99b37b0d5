"""CoolMomentum: momentum SGD from Langevin dynamics with simulated annealing.

``import coolmomentum`` imports no framework; ``coolmomentum.CoolMomentum`` (the PyTorch
optimizer) imports torch on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import schedules
from .schedules import (
    SCHEDULES,
    Schedule,
    alpha_from_total_steps,
    coolmomentum_to_sgd,
    rho,
    sgd_to_coolmomentum,
    temperature_ratio,
    total_steps_from_alpha,
)

if TYPE_CHECKING:
    from .torch import CoolMomentum

__version__ = "0.1.0"

__all__ = [
    "SCHEDULES",
    "CoolMomentum",
    "Schedule",
    "alpha_from_total_steps",
    "coolmomentum_to_sgd",
    "rho",
    "schedules",
    "sgd_to_coolmomentum",
    "temperature_ratio",
    "total_steps_from_alpha",
]


def __getattr__(name: str) -> Any:
    if name == "CoolMomentum":
        from .torch import CoolMomentum

        return CoolMomentum
    raise AttributeError(f"module 'coolmomentum' has no attribute {name!r}")
