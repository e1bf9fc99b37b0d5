"""When a run stops before its end: a preemption signal (SIGTERM, SIGUSR1), a checkpoint due
by the clock, or a training loss that is not finite.

Signals and the clock are rank 0's to decide; every rank learns the decision at the same
step (one small collective), so under ``torchrun`` no rank is left waiting in a collective.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, NamedTuple

import torch

from .distributed import World

__all__ = ["PREEMPTION_SIGNALS", "Control", "Decision"]

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Decision(NamedTuple):
    """What the ranks agreed on at a check."""

    preempt: bool
    checkpoint_now: bool
    nonfinite_step: int  # the first step with a non-finite loss since the last check, or -1


class Control:
    """Watches for preemption signals and the checkpoint clock while a run trains; a second
    preemption signal ends the process at once, as the signal would have."""

    def __init__(self, world: World, every_minutes: float | None) -> None:
        self.world = world
        self.every_seconds = None if every_minutes is None else 60 * every_minutes
        self.last_checkpoint = time.monotonic()
        self.signalled: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Control:
        if threading.current_thread() is threading.main_thread():
            for signum in PREEMPTION_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signalled is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.signalled = signum

    def check(self, bad_step: torch.Tensor) -> Decision:
        """The decision, the same on every rank (a collective under torchrun); ``bad_step`` is
        this rank's first step with a non-finite loss, or -1."""
        due = self.every_seconds is not None and (
            time.monotonic() - self.last_checkpoint >= self.every_seconds
        )
        flags = torch.tensor(
            [self.signalled is not None, due, 0], dtype=torch.int64, device=bad_step.device
        )
        if not self.world.is_main:
            flags.zero_()
        flags[2] = bad_step + 1  # 0: none
        if self.world.active:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        preempt, checkpoint_now, bad = flags.tolist()
        return Decision(bool(preempt), bool(checkpoint_now), bad - 1)

    def checkpointed(self) -> None:
        self.last_checkpoint = time.monotonic()
