"""The optimizers a run can train with: one registry entry per name.

Each :class:`OptimizerKind` holds what is particular to one optimizer: its own
hyperparameters (a small frozen dataclass whose fields are command-line flags), how it is
built, which learning-rate schedules it takes, and what it reports as its momentum. The names
live here alone (:data:`KINDS`); presets, the command line and the study read them from here.
A cooled optimizer (an optimizer of ``torch.optim`` whose momentum a
:class:`~coolmomentum.MomentumCooling` drives) is one entry like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch

from coolmomentum import CoolMomentum, MomentumCooling
from coolmomentum.schedules import DEFAULT_SCHEDULE, SCHEDULES, Schedule

from ..settings import ConfigError, check, setting
from .tf_rmsprop import TFRMSprop

__all__ = [
    "KINDS",
    "LR_SCHEDULES",
    "SCHEDULE_FREE_BN_BATCHES",
    "Built",
    "CoolingHyperparameters",
    "MomentumReport",
    "MomentumWarmup",
    "OptimizerKind",
    "RunContext",
    "kind",
]

LR_SCHEDULES = ("constant", "cosine", "wsd")
# One flag, --momentum, sets the momentum of three optimizers.
_MOMENTUM_HELP = "momentum of SGD and TF RMSProp; schedule-free SGD's interpolation beta"
# Batches over which a schedule-free run's batch-norm statistics are recomputed at the
# averaged weights before each evaluation (the schedulefree README's recipe).
SCHEDULE_FREE_BN_BATCHES = 50


# --- hyperparameters -------------------------------------------------------------------------


@dataclass(frozen=True)
class NoHyperparameters:
    """An optimizer with no settings of its own beyond lr and weight decay (Adam's betas and
    eps keep PyTorch's defaults)."""


@dataclass(frozen=True)
class CoolingHyperparameters:
    """How the momentum coefficient is cooled: CoolMomentum's ``rho``, or the momentum (first
    beta) of a cooled optimizer."""

    rho_0: float = setting(0.99, "the starting momentum coefficient of the cooling")
    schedule: str = setting(DEFAULT_SCHEDULE, "the cooling schedule", choices=SCHEDULES)
    total_steps: int | None = setting(
        None, "cooling steps (default: every step of the run after the hot phase)"
    )
    hot_epochs: float = setting(0.0, "epochs held at rho_0 before the cooling starts")
    momentum_warmup_steps: int = setting(
        0, "momentum 0 for the global steps before this one, then the cooling schedule"
    )

    def __post_init__(self) -> None:
        for name in ("hot_epochs", "momentum_warmup_steps"):
            value = getattr(self, name)
            check(value >= 0, f"{name} must be >= 0, got {value}")


@dataclass(frozen=True)
class DemonHyperparameters(CoolingHyperparameters):
    """The cooling of a cooled optimizer: by default the Demon decay (Chen et al. 2022) of a
    momentum that starts at 0.9."""

    rho_0: float = setting(0.9, "the starting momentum coefficient of the cooling")
    schedule: str = setting("linear-temperature", "the cooling schedule", choices=SCHEDULES)


@dataclass(frozen=True)
class SGDHyperparameters:
    momentum: float = setting(0.9, _MOMENTUM_HELP)
    nesterov: bool = setting(False, "Nesterov momentum")


@dataclass(frozen=True)
class ScheduleFreeSGDHyperparameters:
    momentum: float = setting(0.9, _MOMENTUM_HELP)

    def __post_init__(self) -> None:
        check(
            0 < self.momentum < 1, f"sgd-schedulefree needs 0 < momentum < 1, got {self.momentum}"
        )


@dataclass(frozen=True)
class TFRMSpropHyperparameters:
    momentum: float = setting(0.9, _MOMENTUM_HELP)
    rms_decay: float = setting(0.9, "TF RMSProp's decay of the mean square")
    eps: float = setting(1e-3, "TF RMSProp's epsilon (inside the square root)")


# --- what a kind builds and reports ----------------------------------------------------------


@dataclass(frozen=True)
class RunContext:
    """What a builder needs to know of the run."""

    steps_per_epoch: int
    total_steps: int  # the run's global optimizer steps


class Built(NamedTuple):
    """A built optimizer and, for a cooled one, the scheduler that cools its momentum."""

    optimizer: torch.optim.Optimizer
    cooling: MomentumCooling | None = None


class MomentumReport(NamedTuple):
    """The momentum coefficient of the latest step and the temperature (mean ``v**2`` over
    every element of the model, averaged over the steps since the last reset); ``None`` where
    the optimizer has no such thing."""

    rho: float | None
    temperature: float | None


class Request(Protocol):
    """What a builder reads of an optimizer's settings (:class:`.spec.OptimizerSpec`)."""

    label: str
    lr: float
    weight_decay: float
    lr_warmup_steps: int
    lr_schedule: str
    lr_decay_fraction: float
    hyperparameters: Any


Builder = Callable[[list[dict[str, Any]], Request, RunContext], Built]
Reporter = Callable[[Built, Any, bool, bool], MomentumReport]


@dataclass(frozen=True)
class OptimizerKind:
    """One optimizer of the registry.

    ``lr_schedules`` lists the learning-rate schedules it takes; an empty tuple means it is
    schedule-free: it takes none, its warm-up is its own (``lr_warmup_steps``) and it is
    evaluated at its averaged weights, with batch norm's statistics recomputed there.
    ``report(built, hyperparameters, reset, all_reduce)`` says what it reports as momentum.
    """

    name: str
    summary: str
    hyperparameters: type
    build: Builder
    report: Reporter
    lr_schedules: tuple[str, ...] = LR_SCHEDULES

    @property
    def schedule_free(self) -> bool:
        return not self.lr_schedules


def _no_momentum(
    built: Built, hyperparameters: Any, reset: bool, all_reduce: bool
) -> MomentumReport:
    return MomentumReport(None, None)


def _fixed_momentum(
    built: Built, hyperparameters: Any, reset: bool, all_reduce: bool
) -> MomentumReport:
    return MomentumReport(hyperparameters.momentum, None)


def _coolmomentum_report(
    built: Built, hyperparameters: Any, reset: bool, all_reduce: bool
) -> MomentumReport:
    assert isinstance(built.optimizer, CoolMomentum)
    total = built.optimizer.total_stats(reset=reset, all_reduce=all_reduce)
    return MomentumReport(total["rho"], total["temperature"])


def _cooled_report(
    built: Built, hyperparameters: Any, reset: bool, all_reduce: bool
) -> MomentumReport:
    """The momentum of the latest step (the scheduler already holds the next one's)."""
    assert built.cooling is not None
    latest = max(built.cooling.last_epoch - 1, 0)
    return MomentumReport(float(built.cooling.schedules[0](latest)), None)


# --- builders --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MomentumWarmup:
    """A cooling schedule with a momentum warm-up: 0 for steps before ``steps``, then
    ``cooling(step)``.

    A callable schedule is not saved in a ``state_dict``: the builder makes it again for a
    resumed run.
    """

    steps: int
    cooling: Schedule

    def __call__(self, step: int) -> float:
        return 0.0 if step < self.steps else float(self.cooling(step))


def _cooling_arguments(spec: Request, context: RunContext) -> dict[str, Any]:
    """The schedule arguments of a cooling (``rho_0``, ``total_steps``, ``schedule``,
    ``hot_steps``), or with a momentum warm-up, the callable that wraps them. With the ``wsd``
    learning-rate schedule the cooling ends where the decay of the step starts."""
    h: CoolingHyperparameters = spec.hyperparameters
    hot_steps = round(h.hot_epochs * context.steps_per_epoch)
    steps = context.total_steps
    if spec.lr_schedule == "wsd":
        steps = round((1 - spec.lr_decay_fraction) * steps)
    total = h.total_steps or steps - hot_steps
    if total <= 0:
        raise ConfigError(
            f"run {spec.label!r}: hot_epochs={h.hot_epochs} leaves no steps to cool over in "
            f"a run of {context.total_steps} steps"
        )
    arguments: dict[str, Any] = dict(
        rho_0=h.rho_0,
        total_steps=None if h.schedule == "constant" else total,
        schedule=h.schedule,
        hot_steps=hot_steps,
    )
    if h.momentum_warmup_steps:
        warmup = MomentumWarmup(h.momentum_warmup_steps, Schedule.create(**arguments))
        arguments = dict(rho_0=h.rho_0, schedule=warmup)
    return arguments


def _build_coolmomentum(
    groups: list[dict[str, Any]], spec: Request, context: RunContext
) -> Built:
    try:
        cooling = _cooling_arguments(spec, context)
        return Built(CoolMomentum(groups, lr=spec.lr, weight_decay=spec.weight_decay, **cooling))
    except ValueError as e:
        raise ConfigError(f"run {spec.label!r}: {e}") from None


def _cooled(optimizer_class: Callable[..., torch.optim.Optimizer]) -> Builder:
    """The builder of ``optimizer_class`` with its momentum (or first beta) cooled."""

    def build(groups: list[dict[str, Any]], spec: Request, context: RunContext) -> Built:
        optimizer = optimizer_class(groups, lr=spec.lr, weight_decay=spec.weight_decay)
        try:
            cooling = _cooling_arguments(spec, context)
            if callable(cooling["schedule"]):  # a momentum warm-up: the callable decides
                cooling.pop("rho_0")
            return Built(optimizer, MomentumCooling(optimizer, **cooling))
        except ValueError as e:
            raise ConfigError(f"run {spec.label!r}: {e}") from None

    return build


def _build_sgd(groups: list[dict[str, Any]], spec: Request, context: RunContext) -> Built:
    h: SGDHyperparameters = spec.hyperparameters
    return Built(torch.optim.SGD(groups, lr=spec.lr, momentum=h.momentum,
                                 weight_decay=spec.weight_decay, nesterov=h.nesterov))  # fmt: skip


def _build_adam(groups: list[dict[str, Any]], spec: Request, context: RunContext) -> Built:
    return Built(torch.optim.Adam(groups, lr=spec.lr, weight_decay=spec.weight_decay))


def _build_adamw(groups: list[dict[str, Any]], spec: Request, context: RunContext) -> Built:
    return Built(torch.optim.AdamW(groups, lr=spec.lr, weight_decay=spec.weight_decay))


def _schedulefree(spec: Request) -> Any:
    try:
        import schedulefree
    except ImportError:
        raise ConfigError(
            f"run {spec.label!r} needs the schedulefree package: pip install "
            f"'coolmomentum[experiments]'"
        ) from None
    return schedulefree


def _build_sgd_schedulefree(
    groups: list[dict[str, Any]], spec: Request, context: RunContext
) -> Built:
    """Schedule-free SGD (Defazio et al. 2024), ``lr_warmup_steps`` as its warm-up."""
    return Built(_schedulefree(spec).SGDScheduleFree(
        groups, lr=spec.lr, momentum=spec.hyperparameters.momentum,
        weight_decay=spec.weight_decay, warmup_steps=spec.lr_warmup_steps,
    ))  # fmt: skip


def _build_adamw_schedulefree(
    groups: list[dict[str, Any]], spec: Request, context: RunContext
) -> Built:
    """Schedule-free AdamW (Defazio et al. 2024), ``lr_warmup_steps`` as its warm-up."""
    return Built(_schedulefree(spec).AdamWScheduleFree(
        groups, lr=spec.lr, weight_decay=spec.weight_decay, warmup_steps=spec.lr_warmup_steps
    ))  # fmt: skip


def _build_rmsprop_tf(
    groups: list[dict[str, Any]], spec: Request, context: RunContext
) -> Built:
    h: TFRMSpropHyperparameters = spec.hyperparameters
    return Built(TFRMSprop(groups, lr=spec.lr, decay=h.rms_decay, momentum=h.momentum, eps=h.eps,
                           weight_decay=spec.weight_decay))  # fmt: skip


# --- the registry ----------------------------------------------------------------------------

KINDS: dict[str, OptimizerKind] = {
    kind.name: kind
    for kind in (
        OptimizerKind(
            "coolmomentum", "CoolMomentum: rho cooled from rho_0 to 0 (the paper's method)",
            CoolingHyperparameters, _build_coolmomentum, _coolmomentum_report,
        ),
        OptimizerKind("sgd", "SGD with momentum", SGDHyperparameters, _build_sgd, _fixed_momentum),
        OptimizerKind("adam", "Adam (L2 weight decay)", NoHyperparameters, _build_adam,
                      _no_momentum),
        OptimizerKind("adamw", "AdamW (decoupled weight decay)", NoHyperparameters,
                      _build_adamw, _no_momentum),
        OptimizerKind(
            "sgd-schedulefree", "schedule-free SGD (Defazio et al. 2024)",
            ScheduleFreeSGDHyperparameters, _build_sgd_schedulefree, _no_momentum, (),
        ),
        OptimizerKind(
            "adamw-schedulefree", "schedule-free AdamW (Defazio et al. 2024)",
            NoHyperparameters, _build_adamw_schedulefree, _no_momentum, (),
        ),
        OptimizerKind(
            "rmsprop-tf", "RMSProp as TensorFlow 1 has it (the EfficientNet recipe's)",
            TFRMSpropHyperparameters, _build_rmsprop_tf, _no_momentum,
        ),
        OptimizerKind(
            "sgd-cooled", "SGD with its momentum cooled (default: Demon SGD, from 0.9)",
            DemonHyperparameters, _cooled(torch.optim.SGD), _cooled_report,
        ),
        OptimizerKind(
            "adamw-cooled", "AdamW with its first beta cooled (default: Demon AdamW, from 0.9)",
            DemonHyperparameters, _cooled(torch.optim.AdamW), _cooled_report,
        ),
    )
}  # fmt: skip


def kind(name: str) -> OptimizerKind:
    """The registry entry of ``name``, or a :class:`ConfigError` listing the names."""
    try:
        return KINDS[name]
    except KeyError:
        raise ConfigError(
            f"unknown optimizer {name!r}; choose one of {', '.join(KINDS)}"
        ) from None

