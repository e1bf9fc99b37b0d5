"""The learning rate of every step of a run, from its :class:`.spec.OptimizerSpec`."""

from __future__ import annotations

import math

from .spec import OptimizerSpec

__all__ = ["lr_at"]


def lr_at(spec: OptimizerSpec, step: int, steps_per_epoch: int, total_steps: int = 0) -> float:
    """The learning rate of global optimizer step ``step`` (counted from 0) of a run of
    ``total_steps`` steps (which only the cosine and wsd schedules need): the warm-up, then
    ``lr`` times the factors of the schedule, the step decay and the staircase."""
    if spec.kind.schedule_free:
        return spec.lr  # its warm-up is its own
    if step < spec.lr_warmup_steps:
        return spec.lr * step / spec.lr_warmup_steps
    factors = _shape(spec, step, total_steps) * _step_decay(spec, step, steps_per_epoch)
    if spec.lr_decay_every_steps:
        factors *= spec.lr_decay_factor ** math.floor(step / spec.lr_decay_every_steps)
    return spec.lr * factors


def _shape(spec: OptimizerSpec, step: int, total_steps: int) -> float:
    """The factor of the ``lr_schedule`` at ``step``."""
    if spec.lr_schedule == "cosine":
        span = max(1, total_steps - spec.lr_warmup_steps)
        progress = min(1.0, (step - spec.lr_warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if spec.lr_schedule == "wsd":
        decay_steps = spec.lr_decay_fraction * total_steps
        return min(1.0, max(0.0, (total_steps - step) / decay_steps))
    return 1.0


def _step_decay(spec: OptimizerSpec, step: int, steps_per_epoch: int) -> float:
    """The factor of the step decay: that of the latest epoch reached."""
    decay = 1.0
    for start, factor in spec.lr_decay:
        if step // steps_per_epoch >= start:
            decay = factor
    return decay
