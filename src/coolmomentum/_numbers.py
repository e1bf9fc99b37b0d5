"""Checks of numeric arguments, and the precision schedule arithmetic runs in.

Shared by :mod:`coolmomentum.schedules`, the framework adapters and the physics front, so
that every entry point rejects the same inputs with the same words. No framework is imported
here.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["check_number", "is_number", "schedule_float"]


def is_number(x: object) -> bool:
    """A Python ``int`` or ``float``; ``bool`` is not a number here."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_number(
    name: str,
    value: object,
    *,
    positive: bool = False,
    finite: bool = False,
    hint: str = "",
    arrays: bool = False,
) -> Any:
    """``value`` if it is a number >= 0 (``> 0`` with ``positive``), else a ValueError.

    The message names ``name`` and the bound, then ``hint`` (e.g. `` (the step dt**2, e.g.
    0.01)``). ``finite`` also rejects ``inf``; NaN never passes. With ``arrays``, objects with a
    ``dtype`` (a schedule's array or a 0-d tensor) pass unchecked: their value may be known
    only inside a compiled function.
    """
    if arrays and not isinstance(value, bool) and hasattr(value, "dtype"):
        return value
    bound = "> 0" if positive else ">= 0"
    ok = is_number(value) and (value > 0 if positive else value >= 0)  # type: ignore[operator]
    if ok and finite:
        ok = math.isfinite(value)  # type: ignore[arg-type]
    if not ok:
        kind = "a finite number" if finite else "a number"
        raise ValueError(f"{name} must be {kind} {bound}{hint}, got {value!r}")
    return value


def schedule_float(backend: str, device_type: str = "cpu") -> str:
    """The dtype name ``rho`` and the step coefficient are computed in: float64 unless the
    backend cannot (MPS has no float64; JAX has it only in x64 mode)."""
    if backend == "jax":
        import jax

        return str(jax.dtypes.canonicalize_dtype("float64"))
    if device_type == "mps":
        return "float32"
    return "float64"
