"""CoolMomentum: momentum SGD from Langevin dynamics with simulated annealing.

``import coolmomentum`` imports no framework; ``coolmomentum.CoolMomentum`` (the PyTorch
optimizer), ``coolmomentum.MomentumCooling`` (cooling for other optimizers) and
``coolmomentum.param_groups`` (weight decay without biases and norms) import torch on first use.
"""

from __future__ import annotations

import importlib
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
    from .cooling import MomentumCooling
    from .torch import CoolMomentum
    from .weight_decay import param_groups

__version__ = "0.1.0"

__all__ = [
    "SCHEDULES",
    "CoolMomentum",
    "MomentumCooling",
    "Schedule",
    "alpha_from_total_steps",
    "coolmomentum_to_sgd",
    "param_groups",
    "rho",
    "schedules",
    "sgd_to_coolmomentum",
    "temperature_ratio",
    "total_steps_from_alpha",
]


# Attributes that import torch, and the module each lives in.
_LAZY = {"CoolMomentum": "torch", "MomentumCooling": "cooling", "param_groups": "weight_decay"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'coolmomentum' has no attribute {name!r}")
