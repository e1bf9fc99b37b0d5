"""The statistics every CoolMomentum port reports, defined once.

Each port (``coolmomentum.torch``, ``coolmomentum.optax``, ``coolmomentum.keras``) reports a
dict with these keys, meaning the same everywhere:

``step``
    the number of steps taken (the schedule position of the next step).
``rho``
    the ``rho`` of the latest step (``rho_0`` before the first); ``None`` in a PyTorch total
    over param groups whose latest ``rho`` differ.
``temperature``
    ``temperature_sum / temperature_count``: the mean of ``v_k**2`` over the updated elements
    and over the steps of the window, the authors' rescaled temperature ``T dt**2``; ``None``
    when the window is empty or temperature tracking is off.
``temperature_sum``
    the sum of ``v_k**2`` over the elements and the steps of the window (accumulated in
    float64 where the backend has it).
``temperature_count``
    the number of (element, step) pairs in that sum; a complex element counts twice.
``temperature_steps``
    the number of steps in the window.

The window starts empty and collects every step until a reset (``stats(reset=True)`` in
PyTorch and Keras, ``reset_temperature(state)`` in optax) empties it. Sums and counts, not
means, are kept so that windows add up: over param groups (:func:`combine`, element-weighted)
and over ranks (``stats(all_reduce=True)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["KEYS", "combine", "window"]

KEYS = (
    "step",
    "rho",
    "temperature",
    "temperature_sum",
    "temperature_count",
    "temperature_steps",
)


def window(
    step: int, rho: float | None, total: float, count: int, steps: int
) -> dict[str, Any]:
    """The statistics dict of one window: ``total`` of ``v**2`` over ``count`` element-steps."""
    return {
        "step": step,
        "rho": rho,
        "temperature": total / count if count > 0 else None,
        "temperature_sum": total,
        "temperature_count": count,
        "temperature_steps": steps,
    }


def combine(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The element-weighted total of several windows (e.g. one per param group)."""
    if not parts:
        return window(0, None, 0.0, 0, 0)
    rhos = {part["rho"] for part in parts}
    return window(
        max(part["step"] for part in parts),
        rhos.pop() if len(rhos) == 1 else None,
        sum(part["temperature_sum"] for part in parts),
        sum(part["temperature_count"] for part in parts),
        max(part["temperature_steps"] for part in parts),
    )
