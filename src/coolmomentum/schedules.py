"""Cooling schedules for CoolMomentum: the momentum coefficient ``rho`` as a function of the step.

Pure Python; no framework is imported here. Every framework adapter evaluates the same
:class:`Schedule`, passing its own array namespace as ``ops`` (anything with ``exp``, ``cos``
and ``clip``: :mod:`math` is the default, ``torch``, ``jax.numpy`` and ``keras.ops`` all fit),
so the formulas exist once.

With ``j = clip(step - hot_steps, 0, S)`` and ``S = total_steps``:

``exponential`` (paper Eq. 20)
    ``rho = 1 - (1 - rho_0) / alpha**j`` with ``alpha = (1 - rho_0)**(1/S)``,
    evaluated as ``1 - (1 - rho_0)**(1 - j/S)`` so that ``j = S`` gives exactly 0.
``exponential-temperature``
    ``(1 - rho) / (1 + rho) = c / beta**j`` with ``c = (1 - rho_0) / (1 + rho_0)``,
    ``beta = c**(1/S)``: the temperature falls geometrically.
``linear-temperature``
    ``rho = rho_0 (1 - j/S) / (1 - rho_0 j/S)``: the temperature falls linearly.
``cosine-temperature``
    ``(1 + rho) / (1 - rho) = 1 + (K_0 - 1) (1 + cos(pi j/S)) / 2`` with
    ``K_0 = (1 + rho_0) / (1 - rho_0)``: the temperature, and with it the effective step
    ``lr (1 + rho) / (2 (1 - rho))``, falls along half a cosine, as a cosine learning-rate
    decay does (to the step ``lr / 2`` of ``rho = 0``). Equivalently
    ``rho = rho_0 w / (1 - rho_0 + rho_0 w)`` with ``w = (1 + cos(pi j/S)) / 2``.
``constant``
    ``rho = rho_0``.

The step counts optimizer steps from 0; the first step uses ``rho_0``. With no ``schedule``
given, every port cools along :data:`DEFAULT_SCHEDULE` (``cosine-temperature``), or along the
paper's Eq. 20 (``exponential``) when its cooling rate ``alpha`` is given
(:func:`resolve_schedule`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._numbers import check_number, is_number

__all__ = [
    "DEFAULT_SCHEDULE",
    "SCHEDULES",
    "Schedule",
    "alpha_from_total_steps",
    "coolmomentum_to_sgd",
    "resolve_schedule",
    "rho",
    "sgd_to_coolmomentum",
    "temperature_ratio",
    "total_steps_from_alpha",
]

SCHEDULES = (
    "exponential",
    "exponential-temperature",
    "linear-temperature",
    "cosine-temperature",
    "constant",
)
_NEEDS_TOTAL_STEPS = SCHEDULES[:-1]
# The schedule when none is named. The optimizer study (benchmarks/results/study.md) tuned each
# shape on its own: cosine-temperature scored above the paper's Eq. 20 at every workload and
# budget but the convnet's longest (level there), and within 0.2 points of the best shape at
# each workload's first budget (rho_0 0.99).
DEFAULT_SCHEDULE = "cosine-temperature"

RhoFn = Callable[[Any], Any]


def resolve_schedule(schedule: str | RhoFn | None, alpha: float | None) -> str | RhoFn:
    """The schedule to use: ``schedule`` itself, or, where it is ``None``, the paper's Eq. 20
    (``"exponential"``) if its cooling rate ``alpha`` is given and :data:`DEFAULT_SCHEDULE`
    otherwise."""
    if schedule is not None:
        return schedule
    return "exponential" if alpha is not None else DEFAULT_SCHEDULE


class _MathOps:
    """The array operations a schedule needs, for Python floats."""

    exp = staticmethod(math.exp)
    cos = staticmethod(math.cos)

    @staticmethod
    def clip(x: float, lo: float, hi: float) -> float:
        return min(max(x, lo), hi)


def _check_momentum(name: str, value: float, hint: str = "") -> None:
    """A momentum coefficient, named ``name`` as the caller passed it, must be in [0, 1)."""
    if not is_number(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1){hint}, got {value!r}")


def _check_rho_0(rho_0: float) -> None:
    _check_momentum("rho_0", rho_0, " (the paper uses 0.99)")


def total_steps_from_alpha(alpha: float, rho_0: float) -> float:
    """The number of cooling steps ``S = ln(1 - rho_0) / ln(alpha)`` for the paper's ``alpha``.

    ``alpha = 1`` means no cooling and gives ``math.inf``. The result is generally not an
    integer; schedules accept fractional ``S``.
    """
    _check_rho_0(rho_0)
    if not is_number(alpha) or not 0.0 < alpha <= 1.0:
        raise ValueError(
            f"alpha must be in (0, 1] (1 means no cooling; the paper's runs use about "
            f"0.99998), got {alpha!r}"
        )
    if alpha == 1.0:
        return math.inf
    if rho_0 == 0.0:
        return 0.0
    return math.log1p(-rho_0) / math.log(alpha)


def alpha_from_total_steps(total_steps: float, rho_0: float) -> float:
    """The paper's cooling rate ``alpha = (1 - rho_0)**(1/S)`` for ``S = total_steps``."""
    _check_rho_0(rho_0)
    check_number("total_steps", total_steps, positive=True)
    return math.exp(math.log1p(-rho_0) / total_steps)


def temperature_ratio(rho: float) -> float:
    """``T(rho) / T(0) = (1 + rho) / (1 - rho)`` at a fixed learning rate."""
    _check_momentum("rho", rho)
    return (1.0 + rho) / (1.0 - rho)


def sgd_to_coolmomentum(lr: float, momentum: float) -> dict[str, float]:
    """CoolMomentum settings that start where ``SGD(lr, momentum)`` runs.

    ``SGD(lr=eta, momentum=mu)`` equals CoolMomentum with ``lr = 2 eta / (1 + mu)`` at
    ``rho = mu``. Returns ``{"lr": ..., "rho_0": ...}``.
    """
    check_number("lr", lr)
    _check_momentum("momentum", momentum)
    return {"lr": 2.0 * lr / (1.0 + momentum), "rho_0": float(momentum)}


def coolmomentum_to_sgd(lr: float, rho: float) -> dict[str, float]:
    """The ``SGD`` settings equal to CoolMomentum's step at ``rho``.

    Returns ``{"lr": lr * (1 + rho) / 2, "momentum": rho}``.
    """
    check_number("lr", lr)
    _check_momentum("rho", rho)
    return {"lr": lr * (1.0 + rho) / 2.0, "momentum": float(rho)}


@dataclass(frozen=True)
class Schedule:
    """A validated cooling schedule; call it with a step to get ``rho``.

    Build it with :meth:`create`, which checks every argument. ``total_steps`` here is the
    resolved ``S`` (``math.inf`` for ``alpha = 1``; ``None`` where the schedule needs none).
    """

    rho_0: float
    total_steps: float | None
    kind: str
    hot_steps: int
    fn: RhoFn | None = None

    @classmethod
    def create(
        cls,
        rho_0: float = 0.99,
        total_steps: float | None = None,
        alpha: float | None = None,
        schedule: str | RhoFn | None = None,
        hot_steps: int = 0,
    ) -> Schedule:
        schedule = resolve_schedule(schedule, alpha)
        if callable(schedule):
            if hot_steps:
                raise ValueError(
                    "hot_steps cannot be combined with a callable schedule: the callable "
                    "receives the raw step and decides rho itself"
                )
            return cls(0.0, None, "callable", 0, schedule)
        if schedule not in SCHEDULES:
            raise ValueError(
                f"schedule must be one of {', '.join(map(repr, SCHEDULES))} or a callable "
                f"step -> rho, got {schedule!r}"
            )
        _check_rho_0(rho_0)
        if not isinstance(hot_steps, int) or isinstance(hot_steps, bool) or hot_steps < 0:
            raise ValueError(f"hot_steps must be an integer >= 0, got {hot_steps!r}")
        if total_steps is not None and alpha is not None:
            raise ValueError(
                "pass either total_steps or alpha, not both (alpha = (1 - rho_0)**(1/total_steps))"
            )
        if alpha is not None:
            if schedule != "exponential":
                raise ValueError(
                    f"alpha is the cooling rate of the 'exponential' schedule; "
                    f"give total_steps for schedule={schedule!r}"
                )
            total_steps = total_steps_from_alpha(alpha, rho_0)
        elif total_steps is not None:
            check_number(
                "total_steps",
                total_steps,
                positive=True,
                hint=" (the number of cooling steps, usually epochs * steps per epoch)",
            )
            total_steps = float(total_steps)
        elif schedule in _NEEDS_TOTAL_STEPS:
            raise ValueError(
                f"schedule={schedule!r} needs total_steps (the number of cooling steps, "
                f"usually epochs * steps per epoch) or, for 'exponential', alpha"
            )
        if schedule == "constant" or rho_0 == 0.0:
            return cls(float(rho_0), None, "constant", hot_steps)
        return cls(float(rho_0), total_steps, schedule, hot_steps)

    def __call__(self, step: Any, ops: Any = _MathOps) -> Any:
        """``rho`` at ``step`` (a number, or a scalar of the array namespace ``ops``)."""
        if self.fn is not None:
            return self.fn(step)
        if self.total_steps is None or math.isinf(self.total_steps):  # alpha = 1: no cooling
            return self.rho_0
        s = self.total_steps
        # u = 1 - j/S, computed as (S - j) / S: exactly 0 at j = S even where a compiler fuses
        # 1 - j * (1/S) into one multiply-add (XLA does), which would leave rho slightly < 0.
        u = (s - ops.clip(step - self.hot_steps, 0, s)) / s
        if self.kind == "exponential":
            return 1.0 - ops.exp(math.log1p(-self.rho_0) * u)
        if self.kind == "exponential-temperature":
            c = (1.0 - self.rho_0) / (1.0 + self.rho_0)
            t = ops.exp(math.log(c) * u)
            return (1.0 - t) / (1.0 + t)
        if self.kind == "cosine-temperature":
            # The linear rule with u replaced by (1 - cos(pi u)) / 2, which is exactly 0 at
            # u = 0 and 1 at u = 1.
            u = (1.0 - ops.cos(math.pi * u)) / 2.0
        # linear-temperature
        return self.rho_0 * u / (1.0 - self.rho_0 + self.rho_0 * u)


def rho(
    step: float,
    *,
    rho_0: float = 0.99,
    total_steps: float | None = None,
    alpha: float | None = None,
    schedule: str | RhoFn | None = None,
    hot_steps: int = 0,
) -> float:
    """The momentum coefficient at optimizer step ``step`` (counted from 0).

    >>> rho(0, rho_0=0.99, total_steps=100)
    0.99
    >>> rho(100, rho_0=0.99, total_steps=100)
    0.0
    """
    check_number("step", step)
    value = Schedule.create(rho_0, total_steps, alpha, schedule, hot_steps)(step)
    return float(value)
