"""The optimizers a run trains with: built from its :class:`.config.OptimizerSpec`, with the
per-step learning rate and what the loop reports about momentum.

:class:`RunOptimizer` is the one object the training loop talks to, so that no loop code
branches on the kind of optimizer. :class:`TFRMSprop` is a baseline torch does not ship in
its published form.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from coolmomentum import CoolMomentum, weight_decay
from coolmomentum.schedules import Schedule

from .config import (
    SCHEDULE_FREE,
    SCHEDULE_FREE_BN_BATCHES,
    ConfigError,
    OptimizerSpec,
    RunConfig,
    run_steps,
)

__all__ = ["MomentumWarmup", "RunOptimizer", "TFRMSprop", "build_optimizer", "lr_at"]


def lr_at(spec: OptimizerSpec, step: int, steps_per_epoch: int, total_steps: int = 0) -> float:
    """The learning rate of global optimizer step ``step`` (counted from 0) of a run of
    ``total_steps`` steps (which only the cosine schedule needs)."""
    if spec.optimizer in SCHEDULE_FREE:
        return spec.lr  # its warm-up is its own
    if step < spec.lr_warmup_steps:
        return spec.lr * step / spec.lr_warmup_steps
    factor = 1.0
    if spec.lr_schedule == "cosine":
        span = max(1, total_steps - spec.lr_warmup_steps)
        progress = min(1.0, (step - spec.lr_warmup_steps) / span)
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif spec.lr_schedule == "wsd":
        decay_steps = spec.lr_decay_fraction * total_steps
        factor = min(1.0, max(0.0, (total_steps - step) / decay_steps))
    decay = 1.0  # the factor of the latest step-decay epoch reached
    for start, f in spec.lr_decay:
        if step // steps_per_epoch >= start:
            decay = f
    factor *= decay
    if spec.lr_decay_every_steps:
        factor *= spec.lr_decay_factor ** math.floor(step / spec.lr_decay_every_steps)
    return spec.lr * factor


# Which parameters ``weight_decay_params`` exempts from weight decay.
_NO_DECAY = {
    "conv": lambda module, name, p: not (isinstance(module, nn.Conv2d) and name == "weight"),
    "no-batchnorm": lambda module, name, p: isinstance(module, nn.modules.batchnorm._BatchNorm),
}


def param_groups(model: nn.Module, spec: OptimizerSpec, which: str) -> list[dict[str, Any]]:
    """Parameters split by whether weight decay applies: ``which="conv"``: conv kernels only;
    ``"no-batchnorm"``: every parameter but batch norm's scales and shifts; ``"all"``: all."""
    if which == "all" or not spec.weight_decay:
        return [{"params": list(model.parameters())}]
    return weight_decay.param_groups(model, spec.weight_decay, _NO_DECAY[which])


@dataclass(frozen=True)
class MomentumWarmup:
    """A CoolMomentum schedule: ``rho = 0`` for steps before ``steps``, then ``cooling(step)``.

    A callable schedule is not saved in the optimizer's ``state_dict``: :func:`build_optimizer`
    builds it again for a resumed run.
    """

    steps: int
    cooling: Schedule

    def __call__(self, step: int) -> float:
        return 0.0 if step < self.steps else float(self.cooling(step))


class RunOptimizer:
    """A run's optimizer with its learning-rate schedule, its momentum report, and the
    weights it is evaluated at."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        spec: OptimizerSpec,
        steps_per_epoch: int,
        total_steps: int,
        batch_norm_batches: int | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.spec = spec
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = total_steps
        self.schedule_free = spec.optimizer in SCHEDULE_FREE
        # Batches to recompute batch norm's statistics over before evaluating (0: keep the
        # running ones); schedule-free optimizers need it, for the others it is a choice.
        default = SCHEDULE_FREE_BN_BATCHES if self.schedule_free else 0
        self.batch_norm_batches = batch_norm_batches or default

    def set_lr(self, step: int) -> float:
        """Set every group's learning rate for global step ``step``; returns it."""
        lr = lr_at(self.spec, step, self.steps_per_epoch, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_mode(self) -> None:
        """Before training steps (schedule-free optimizers step at their own point ``y``)."""
        if self.schedule_free:
            self.optimizer.train()  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def evaluation_weights(
        self, model: nn.Module, batches: Callable[[], Iterable[Any]]
    ) -> Iterator[None]:
        """The weights to evaluate, in place, for the duration of the block.

        Schedule-free optimizers evaluate their average ``x``: the block switches the
        optimizer to eval mode. With ``batch_norm_batches`` (always for schedule-free), batch
        norm's statistics are recomputed at the evaluated weights over that many training
        batches from ``batches()``. Afterwards the training weights and statistics are put
        back exactly as they were, so that evaluating never changes a run (the optimizer's
        own eval/train round trip moves the weights by rounding).
        """
        if not self.batch_norm_batches:
            yield
            return
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        if self.schedule_free:
            self.optimizer.eval()  # type: ignore[attr-defined]
        _recompute_batch_norm(model, itertools.islice(batches(), self.batch_norm_batches))
        try:
            yield
        finally:
            if self.schedule_free:
                self.optimizer.train()  # type: ignore[attr-defined]
            model.load_state_dict(saved)

    def momentum(self, *, reset: bool = True, all_reduce: bool = False) -> dict[str, Any]:
        """``rho`` of the latest step and the temperature (mean ``v**2`` over every element of
        the model, averaged over the steps since the last reset); ``None`` where the
        optimizer has no such thing. ``all_reduce`` is a collective over the ranks."""
        if isinstance(self.optimizer, CoolMomentum):
            total = self.optimizer.total_stats(reset=reset, all_reduce=all_reduce)
            return {"rho": total["rho"], "temperature": total["temperature"]}
        rho = self.spec.momentum if self.spec.optimizer == "sgd" else None
        return {"rho": rho, "temperature": None}


@torch.no_grad()
def _recompute_batch_norm(model: nn.Module, batches: Iterable[Any]) -> None:
    """Batch norm's running statistics as the plain average over ``batches`` (``(x, ...)``),
    at the current weights (as ``torch.optim.swa_utils.update_bn``)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
    was_training = model.training
    model.train()
    for x, *_ in batches:
        model(x)
    model.train(was_training)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def build_optimizer(
    model: nn.Module, spec: OptimizerSpec, config: RunConfig, steps_per_epoch: int
) -> RunOptimizer:
    groups = param_groups(model, spec, config.weight_decay_params)
    optimizer: torch.optim.Optimizer
    if spec.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            groups,
            lr=spec.lr,
            momentum=spec.momentum,
            weight_decay=spec.weight_decay,
            nesterov=spec.nesterov,
        )
    elif spec.optimizer == "adam":
        optimizer = torch.optim.Adam(groups, lr=spec.lr, weight_decay=spec.weight_decay)
    elif spec.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=spec.lr, weight_decay=spec.weight_decay)
    elif spec.optimizer in SCHEDULE_FREE:
        optimizer = _schedule_free(groups, spec)
    elif spec.optimizer == "rmsprop-tf":
        optimizer = TFRMSprop(
            groups,
            lr=spec.lr,
            decay=spec.rms_decay,
            momentum=spec.momentum,
            eps=spec.eps,
            weight_decay=spec.weight_decay,
        )
    else:
        optimizer = _coolmomentum(groups, spec, config, steps_per_epoch)
    return RunOptimizer(optimizer, spec, steps_per_epoch, run_steps(config, steps_per_epoch),
                        config.recompute_batch_norm)  # fmt: skip


def _schedule_free(groups: list[dict[str, Any]], spec: OptimizerSpec) -> torch.optim.Optimizer:
    """Schedule-free SGD or AdamW (Defazio et al. 2024, the ``schedulefree`` package), with
    ``lr_warmup_steps`` as their warm-up."""
    try:
        import schedulefree
    except ImportError:
        raise ConfigError(
            f"run {spec.label!r} needs the schedulefree package: pip install "
            f"'coolmomentum[experiments]'"
        ) from None
    if spec.optimizer == "sgd-schedulefree":
        return schedulefree.SGDScheduleFree(
            groups,
            lr=spec.lr,
            momentum=spec.momentum,
            weight_decay=spec.weight_decay,
            warmup_steps=spec.lr_warmup_steps,
        )
    return schedulefree.AdamWScheduleFree(
        groups, lr=spec.lr, weight_decay=spec.weight_decay, warmup_steps=spec.lr_warmup_steps
    )


def _coolmomentum(
    groups: list[dict[str, Any]], spec: OptimizerSpec, config: RunConfig, steps_per_epoch: int
) -> CoolMomentum:
    hot_steps = round(spec.hot_epochs * steps_per_epoch)
    steps = run_steps(config, steps_per_epoch)
    if spec.lr_schedule == "wsd":  # cool first, then lower the step
        steps = round((1 - spec.lr_decay_fraction) * steps)
    total = spec.total_steps or steps - hot_steps
    if total <= 0:
        raise ConfigError(
            f"run {spec.label!r}: hot_epochs={spec.hot_epochs} leaves no steps to cool over in "
            f"{config.epochs} epochs"
        )
    cooling: dict[str, Any] = dict(
        rho_0=spec.rho_0,
        total_steps=None if spec.schedule == "constant" else total,
        schedule=spec.schedule,
        hot_steps=hot_steps,
    )
    try:
        if spec.momentum_warmup_steps:
            warmup = MomentumWarmup(spec.momentum_warmup_steps, Schedule.create(**cooling))
            cooling = dict(rho_0=spec.rho_0, schedule=warmup)
        return CoolMomentum(groups, lr=spec.lr, weight_decay=spec.weight_decay, **cooling)
    except ValueError as e:
        raise ConfigError(f"run {spec.label!r}: {e}") from None


class TFRMSprop(torch.optim.Optimizer):
    """RMSProp as TensorFlow 1's ``tf.train.RMSPropOptimizer``, the EfficientNet recipe's::

        g   = grad + weight_decay * x                  (L2 in the loss)
        ms  = decay * ms + (1 - decay) * g**2           (ms starts at initial_mean_square)
        mom = momentum * mom + lr * g / sqrt(ms + eps)
        x  -= mom

    Unlike ``torch.optim.RMSprop``, ``eps`` sits inside the square root, the mean square starts
    at 1 (TF's ``ones`` slot) rather than 0, and ``lr`` enters the momentum buffer, so a change
    of the learning rate acts on new gradients only.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        decay: float = 0.9,
        momentum: float = 0.0,
        eps: float = 1e-10,
        initial_mean_square: float = 1.0,
        weight_decay: float = 0.0,
    ) -> None:
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not 0 <= decay < 1 or not 0 <= momentum < 1:
            raise ValueError(f"decay and momentum must be in [0, 1), got {decay}, {momentum}")
        if not eps > 0 or not initial_mean_square >= 0 or not weight_decay >= 0:
            raise ValueError("eps must be > 0, initial_mean_square and weight_decay >= 0")
        defaults = dict(
            lr=lr,
            decay=decay,
            momentum=momentum,
            eps=eps,
            initial_mean_square=initial_mean_square,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if not self.state[p]:
                    self.state[p]["mean_square"] = torch.full_like(
                        p, group["initial_mean_square"], memory_format=torch.preserve_format
                    )
                    self.state[p]["momentum_buffer"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )
            grads: list[Tensor] = [p.grad for p in params]
            if group["weight_decay"]:
                grads = list(torch._foreach_add(grads, params, alpha=group["weight_decay"]))
            mean_squares = [self.state[p]["mean_square"] for p in params]
            buffers = [self.state[p]["momentum_buffer"] for p in params]
            torch._foreach_mul_(mean_squares, group["decay"])
            torch._foreach_addcmul_(mean_squares, grads, grads, value=1 - group["decay"])
            denominators = torch._foreach_add(mean_squares, group["eps"])
            torch._foreach_sqrt_(denominators)
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_addcdiv_(buffers, grads, denominators, value=group["lr"])
            torch._foreach_sub_(params, buffers)
        return loss
