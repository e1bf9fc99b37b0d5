"""The optimizer of a run as the training loop sees it: :class:`RunOptimizer`, one object for
every kind, so that no loop code branches on the kind of optimizer."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from coolmomentum import weight_decay

from .kinds import SCHEDULE_FREE_BN_BATCHES, Built, MomentumReport, RunContext
from .lr import lr_at
from .spec import OptimizerSpec

__all__ = ["RunOptimizer", "build_optimizer", "param_groups"]

# Which parameters ``weight_decay_params`` exempts from weight decay.
_NO_DECAY = {
    "conv": lambda module, name, p: not (isinstance(module, nn.Conv2d) and name == "weight"),
    "no-batchnorm": lambda module, name, p: isinstance(module, nn.modules.batchnorm._BatchNorm),
}
# The key of a cooled optimizer's scheduler in a checkpoint, beside "optimizer".
COOLING_STATE = "momentum_cooling"


def param_groups(model: nn.Module, spec: OptimizerSpec, which: str) -> list[dict[str, Any]]:
    """Parameters split by whether weight decay applies: ``which="conv"``: conv kernels only;
    ``"no-batchnorm"``: every parameter but batch norm's scales and shifts; ``"all"``: all."""
    if which == "all" or not spec.weight_decay:
        return [{"params": list(model.parameters())}]
    return weight_decay.param_groups(model, spec.weight_decay, _NO_DECAY[which])


def build_optimizer(
    model: nn.Module,
    spec: OptimizerSpec,
    context: RunContext,
    weight_decay_params: str = "all",
    batch_norm_batches: int | None = None,
) -> RunOptimizer:
    """The optimizer of ``spec`` over ``model``'s parameters, for a run of ``context``
    (weight decay on ``weight_decay_params``; batch norm recomputed over
    ``batch_norm_batches`` before evaluations)."""
    groups = param_groups(model, spec, weight_decay_params)
    return RunOptimizer(spec.kind.build(groups, spec, context), spec, context,
                        batch_norm_batches)  # fmt: skip


class RunOptimizer:
    """A run's optimizer with its learning-rate schedule, its momentum report, and the
    weights it is evaluated at."""

    def __init__(
        self,
        built: Built,
        spec: OptimizerSpec,
        context: RunContext,
        batch_norm_batches: int | None = None,
    ) -> None:
        self.built = built
        self.optimizer = built.optimizer
        self.spec = spec
        self.context = context
        self.schedule_free = spec.kind.schedule_free
        # Batches to recompute batch norm's statistics over before evaluating (0: keep the
        # running ones); schedule-free optimizers need it, for the others it is a choice.
        default = SCHEDULE_FREE_BN_BATCHES if self.schedule_free else 0
        self.batch_norm_batches = batch_norm_batches or default

    def set_lr(self, step: int) -> float:
        """Set every group's learning rate for global step ``step``; returns it."""
        lr = lr_at(self.spec, step, self.context.steps_per_epoch, self.context.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        """One optimizer step (and, for a cooled optimizer, its momentum's next value)."""
        self.optimizer.step()
        if self.built.cooling is not None:
            self.built.cooling.step()

    def train_mode(self) -> None:
        """Before training steps (schedule-free optimizers step at their own point ``y``)."""
        if self.schedule_free:
            self.optimizer.train()  # type: ignore[attr-defined]

    def report(self, *, reset: bool = True, all_reduce: bool = False) -> MomentumReport:
        """``rho`` of the latest step and the temperature since the last reset
        (:class:`.kinds.MomentumReport`). ``all_reduce`` is a collective over the ranks."""
        return self.spec.kind.report(self.built, self.spec.hyperparameters, reset, all_reduce)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint holds of the optimizer: its ``state_dict`` under ``"optimizer"``
        and a cooled optimizer's scheduler beside it."""
        state = {"optimizer": self.optimizer.state_dict()}
        if self.built.cooling is not None:
            state[COOLING_STATE] = self.built.cooling.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.built.cooling is not None:
            self.built.cooling.load_state_dict(state[COOLING_STATE])

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
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
