"""One optimizer of a run: :class:`OptimizerSpec`, the settings every optimizer shares (the
learning rate and its schedule, weight decay) and the optimizer's own hyperparameters.

Presets, ``config.json`` and the command line give an optimizer as flat settings
(``{"optimizer": "sgd", "lr": 0.05, "momentum": 0.9}``); :meth:`OptimizerSpec.from_settings`
sorts them and refuses a setting that does not apply to the optimizer, naming it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..settings import ConfigError, check, parse_lr_decay, setting
from .kinds import KINDS, LR_SCHEDULES, OptimizerKind, kind

__all__ = ["LR_SCHEDULE_SETTINGS", "OptimizerSpec", "applies", "canonical_settings", "kinds_with"]

# The settings of the learning-rate schedule, which schedule-free optimizers do not take.
LR_SCHEDULE_SETTINGS = (
    "lr_schedule",
    "lr_decay_fraction",
    "lr_decay",
    "lr_decay_factor",
    "lr_decay_every_steps",
)


@dataclass
class OptimizerSpec:
    """One optimizer of a run and its hyperparameters.

    The learning rate is set before every step (:func:`.lr.lr_at`): a linear warm-up from 0
    over ``lr_warmup_steps``, then ``lr`` times the ``lr_schedule`` (``cosine``: half a cosine
    from 1 after the warm-up to 0 at the end of the run; ``wsd``, warm-up, stable, decay: 1,
    then linearly to 0 over the last ``lr_decay_fraction`` of the run, and a cooling ends
    where that decay starts) times ``lr_decay_factor ** floor(step / lr_decay_every_steps)``
    (a staircase counted from step 0) times the step decay ``lr_decay``, given as
    ``[[epoch, factor], ...]``: from that (0-based) epoch on the factor applies. The
    schedule-free optimizers take no schedule: ``lr_warmup_steps`` is their own warm-up.
    ``hyperparameters`` holds the optimizer's own settings (its registry entry's dataclass;
    default: its defaults).
    """

    optimizer: str = setting("coolmomentum", flag=False)
    label: str = setting("", flag=False)
    lr: float = setting(0.01, "learning rate (CoolMomentum: the step dt^2)")
    weight_decay: float = setting(0.0, "L2 penalty added to the gradient (AdamW: decoupled)")
    lr_warmup_steps: int = setting(0, "linear learning-rate warm-up from 0 over these steps")
    lr_schedule: str = setting(
        "constant",
        "learning-rate schedule: constant; cosine decay to 0 at the end; wsd: constant, then "
        "linear to 0 over the last --lr-decay-fraction of the run (a cooling ends first)",
        choices=LR_SCHEDULES,
    )
    lr_decay_fraction: float = setting(0.2, "wsd: the final fraction of the run that decays")
    lr_decay: list[list[float]] = setting(
        [], "step decay of the learning rate", metavar="EPOCH:FACTOR,...", parse=parse_lr_decay
    )
    lr_decay_factor: float = setting(
        1.0, "staircase factor applied every --lr-decay-every-steps steps"
    )
    lr_decay_every_steps: float = setting(0.0, "steps between staircase decays (0: none)")
    hyperparameters: Any = setting(None, flag=False)

    def __post_init__(self) -> None:
        entry = kind(self.optimizer)
        if not self.label:
            self.label = self.optimizer
        check(
            self.label.replace("-", "").replace("_", "").replace(".", "").isalnum(),
            f"label {self.label!r} names a directory: use letters, digits, '-', '_', '.'",
        )
        if self.hyperparameters is None:
            self.hyperparameters = entry.hyperparameters()
        check(
            isinstance(self.hyperparameters, entry.hyperparameters),
            f"run {self.label!r}: the hyperparameters of {self.optimizer} are a "
            f"{entry.hyperparameters.__name__}, got {type(self.hyperparameters).__name__}",
        )
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        for name in ("lr_warmup_steps", "lr_decay_every_steps", "weight_decay"):
            check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        check(self.lr_decay_factor > 0, f"lr_decay_factor must be > 0, got {self.lr_decay_factor}")
        check(
            0 < self.lr_decay_fraction < 1,
            f"lr_decay_fraction must be in (0, 1), e.g. 0.2, got {self.lr_decay_fraction}",
        )
        self.lr_decay = [[float(e), float(f)] for e, f in self.lr_decay]
        if entry.schedule_free:
            changed = [n for n in LR_SCHEDULE_SETTINGS if getattr(self, n) != _DEFAULTS[n]]
            check(
                not changed,
                f"run {self.label!r}: {self.optimizer} needs no learning-rate schedule (it is "
                f"schedule-free): leave {', '.join(changed)} unset; its warm-up is "
                f"lr_warmup_steps",
            )
        check(
            self.lr_schedule in entry.lr_schedules or entry.schedule_free,
            f"lr_schedule must be one of {', '.join(entry.lr_schedules)}, got {self.lr_schedule!r}",
        )

    @property
    def kind(self) -> OptimizerKind:
        return KINDS[self.optimizer]

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> OptimizerSpec:
        """The spec of flat settings; a setting that is unknown, or that does not apply to the
        optimizer, is a :class:`ConfigError` naming it."""
        name = settings.get("optimizer", "coolmomentum")
        entry = kind(name)
        label = settings.get("label") or name
        own = {f.name for f in dataclasses.fields(entry.hyperparameters)}
        shared = {f.name for f in dataclasses.fields(cls)} - {"hyperparameters"}
        for key in settings:
            if key not in own | shared:
                known = sorted({*shared, *(k for e in KINDS.values() for k in _own(e))})
                raise ConfigError(
                    f"run {label!r}: {key!r} is not an optimizer setting; the settings are "
                    f"{', '.join(known)}"
                )
            if not applies(entry, key):
                raise ConfigError(
                    f"run {label!r}: {key} does not apply to {name} (it is a setting of "
                    f"{', '.join(kinds_with(key))}); leave it out for this run"
                )
        try:
            given = {k: settings[k] for k in own if k in settings}
            hyperparameters = entry.hyperparameters(**given)
        except ConfigError as e:
            raise ConfigError(f"run {label!r}: {e}") from None
        common = {k: v for k, v in settings.items() if k in shared}
        return cls(**common, hyperparameters=hyperparameters)

    def settings(self) -> dict[str, Any]:
        """The flat settings that apply to this optimizer (what ``config.json`` records)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "hyperparameters" and applies(self.kind, f.name)}  # fmt: skip
        return {**out, **dataclasses.asdict(self.hyperparameters)}


def _own(entry: OptimizerKind) -> list[str]:
    return [f.name for f in dataclasses.fields(entry.hyperparameters)]


def applies(entry: OptimizerKind, key: str) -> bool:
    """Whether the flat setting ``key`` applies to the optimizer ``entry``."""
    if key in LR_SCHEDULE_SETTINGS:
        return not entry.schedule_free
    return key in _DEFAULTS or key in _own(entry)


def kinds_with(key: str) -> list[str]:
    """The optimizers that the flat setting ``key`` applies to."""
    return [name for name, entry in KINDS.items() if applies(entry, key)]


_DEFAULTS = {
    f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
    for f in dataclasses.fields(OptimizerSpec)
    if f.name != "hyperparameters"
}
# Before each optimizer had hyperparameters of its own, config.json recorded every setting of
# every optimizer; those that did not apply held these values.
_UNIFORM_DEFAULTS = {
    **_DEFAULTS,
    "rho_0": 0.99,
    "schedule": "exponential",
    "total_steps": None,
    "hot_epochs": 0.0,
    "momentum_warmup_steps": 0,
    "momentum": 0.9,
    "nesterov": False,
    "rms_decay": 0.9,
    "eps": 1e-3,
}


def canonical_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Flat settings as this version records them, for comparing a saved run with a new one:
    every setting that applies (a missing one at its default), none that does not, where it
    holds the value it had before it applied to one optimizer only (runs written by earlier
    versions record them all). A setting that does not apply but holds another value is kept,
    so that the comparison shows it."""
    entry = KINDS.get(settings.get("optimizer", "coolmomentum"))
    if entry is None:
        return dict(settings)
    defaults = OptimizerSpec(optimizer=entry.name, label=settings.get("label", "")).settings()
    kept = {k: v for k, v in settings.items()
            if applies(entry, k) or v != _UNIFORM_DEFAULTS.get(k, ...)}  # fmt: skip
    return {**defaults, **kept}
