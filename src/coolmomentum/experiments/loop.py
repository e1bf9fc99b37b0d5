"""The training loop: one optimizer, one model, one dataset, resumable.

A run trains in stretches that end where it is evaluated (every epoch, or every
``eval_every_steps`` steps) and at its last step. After each stretch it evaluates the
weights (and their average), appends one record to its metrics and writes its checkpoint
(:mod:`.checkpoint`), so ``resume=True`` continues from the last evaluation. Batches, their
augmentation and the model's own randomness are drawn from seeds derived from ``(seed,
epoch, step)`` (:mod:`.data`), so a resumed run on the CPU ends with exactly the weights and
metrics of an uninterrupted one, and runs that share a seed see the same initial weights and
the same batches. Under ``torchrun`` every rank runs this loop; rank 0 alone writes and logs.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from coolmomentum.errors import Diverged, Preempted

from . import checkpoint
from .config import ConfigError, OptimizerSpec, RunConfig, run_steps
from .data import Stream, TrainingData, derived_seed
from .distributed import World
from .models import build_model
from .optimizers import RunOptimizer, build_optimizer
from .weight_average import WeightAverage

__all__ = ["evaluate", "train"]

# Refresh the progress bar's loss and accuracy every this many steps (each refresh waits for
# the device).
PROGRESS_EVERY = 20
# Every this many steps (and where a stretch ends) the ranks agree on whether to stop: a
# preemption signal or a checkpoint due by the clock (both decided on rank 0), or a loss that
# is not finite on any rank. One small collective and one wait for the device per check.
CONTROL_EVERY = 10
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@dataclass
class Stretch:
    """The training metrics of the steps since the last evaluation, accumulating."""

    sums: torch.Tensor  # loss * n, correct, n: this rank's (rank 0's holds the restored part)
    samples: list[dict[str, Any]] = field(default_factory=list)
    sampled_at: int = 0
    seconds: float = 0.0
    lr: float = float("nan")
    skipped: int = 0

    def state(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "sums": self.sums.cpu()}


@dataclass
class Run:
    """What a run carries from step to step, and what its checkpoint holds."""

    model: nn.Module
    optimizer: RunOptimizer
    ema: WeightAverage | None
    step: int = 0  # global optimizer steps taken
    metrics: list[dict[str, Any]] = field(default_factory=list)
    stretch: Stretch | None = None  # a stretch in progress (None right after an evaluation)

    def state(self, config: dict[str, Any], steps_per_epoch: int) -> dict[str, Any]:
        state = {
            "config": config,
            "step": self.step,
            "epoch": _epochs(self.step, steps_per_epoch),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.optimizer.state_dict(),
            "metrics": self.metrics,
            "stretch": None if self.stretch is None else self.stretch.state(),
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def restore(self, state: dict[str, Any], device: torch.device, world: World) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.step, self.metrics = state["step"], state["metrics"]
        stretch = state["stretch"]
        if stretch is not None:
            # The saved sums are every rank's: rank 0 carries them on, the others restart at 0.
            sums = stretch["sums"].to(device) if world.is_main else torch.zeros_like(
                stretch["sums"], device=device
            )
            self.stretch = Stretch(**{**stretch, "sums": sums})


class Control:
    """When a stretch stops early: a preemption signal (SIGTERM, SIGUSR1), a checkpoint due by
    the clock, or a non-finite loss. Signals and the clock are rank 0's to decide; every rank
    learns the decision at the same step, so no rank is left waiting in a collective.

    A second preemption signal ends the process at once, as the signal would have.
    """

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

    def check(self, bad_step: torch.Tensor) -> tuple[bool, bool, int]:
        """``(preempt, checkpoint now, first step with a non-finite loss or -1)``, the same on
        every rank (a collective under torchrun)."""
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
        return bool(preempt), bool(checkpoint_now), bad - 1

    def checkpointed(self) -> None:
        self.last_checkpoint = time.monotonic()


def _epochs(step: int, steps_per_epoch: int) -> int | float:
    """Epochs done after ``step`` steps: an int at an epoch's end, else a fraction."""
    whole, part = divmod(step, steps_per_epoch)
    return whole if part == 0 else round(step / steps_per_epoch, 6)


def stop_steps(
    start: int, last: int, steps_per_epoch: int, eval_every: int | None, every: int | None
) -> list[tuple[int, bool]]:
    """The global steps after ``start`` where training pauses, ending with ``last``, each with
    whether the run is evaluated there (else only checkpointed, by ``every``)."""
    period = eval_every or steps_per_epoch
    evaluations = {*range((start // period + 1) * period, last, period), last}
    checkpoints = set(range((start // every + 1) * every, last, every)) if every else set()
    return [(s, s in evaluations) for s in sorted(evaluations | checkpoints) if s > start]


def _on_main(world: World, fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0, its result (or its ConfigError) handed to every rank."""
    result: list[Any] = [None, None]
    if world.is_main:
        try:
            result[0] = fn()
        except ConfigError as e:
            result[1] = str(e)
    if world.active:
        torch.distributed.broadcast_object_list(result)
    if result[1] is not None:
        raise ConfigError(result[1])
    return result[0]


def train(
    config: RunConfig,
    spec: OptimizerSpec,
    run_dir: Path,
    data: TrainingData,
    *,
    resume: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train one optimizer; returns its metrics (also written to ``run_dir``).

    Raises :class:`~coolmomentum.errors.Preempted` after writing a checkpoint when SIGTERM or
    SIGUSR1 arrives, and :class:`~coolmomentum.errors.Diverged` when the training loss stops
    being finite (with ``on_nonfinite="stop"``; the last checkpoint is kept).
    """
    world, device = data.world, data.device
    saved_config = {**config.for_run(spec), "world_size": world.size}
    restored = _on_main(
        world, lambda: checkpoint.open_run_dir(run_dir, saved_config, resume, log=log)
    )
    steps_per_epoch = data.steps_per_epoch()
    if steps_per_epoch < 1:
        raise ConfigError(
            f"batch_size {config.batch_size} is larger than the {data.num_train} training images"
        )
    last_step = run_steps(config, steps_per_epoch)
    run = _build(config, spec, data, steps_per_epoch)
    if restored is not None:
        run.restore(restored, device, world)
        log(f"[{spec.label}] resuming after step {run.step} (epoch {restored['epoch']})")
    forward: nn.Module = run.model
    if world.active:
        forward = nn.parallel.DistributedDataParallel(
            run.model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        forward = torch.compile(forward)  # type: ignore[assignment]
    show = world.is_main and (sys.stderr.isatty() if progress is None else progress)

    def save() -> None:
        if world.is_main:
            checkpoint.save(run_dir, run.state(saved_config, steps_per_epoch))
        control.checkpointed()

    with Control(world, config.checkpoint_every_minutes) as control:
        # A stretch saved exactly at its stop (preempted there) still owes that stop's work.
        start = run.step - (run.stretch is not None)
        stops = stop_steps(
            start, last_step, steps_per_epoch, config.eval_every_steps, config.checkpoint_every
        )
        for i, (stop, evaluated) in enumerate(stops):
            record_end = next(s for s, evaluates in stops[i:] if evaluates)
            while run.step < stop:
                bar = _progress(show, stop - run.step, f"{spec.label} {run.step}->{stop}")
                preempted = _train_until(
                    run, forward, data, config, stop, record_end, control, bar
                )
                if preempted or run.step < stop:  # stopped early: keep the stretch's state
                    _share_stretch(run, world)
                    save()
                if preempted:
                    raise Preempted(
                        f"[{spec.label}] preempted at step {run.step}: checkpoint written in "
                        f"{run_dir}; rerun with --resume to continue"
                    )
            if not evaluated:
                _share_stretch(run, world)
                save()
                continue
            record = _finish_stretch(run, data, steps_per_epoch)
            record.update(_evaluations(run, data, config, final=stop == last_step))
            run.metrics.append(record)
            save()
            if world.is_main:
                log(_summary(spec.label, record, config.epochs))
    return run.metrics


def _share_stretch(run: Run, world: World) -> None:
    """Before a mid-stretch checkpoint: rank 0's sums become every rank's (it alone writes),
    the others' restart at 0."""
    assert run.stretch is not None
    world.sum(run.stretch.sums)
    if not world.is_main:
        run.stretch.sums.zero_()


def _evaluations(
    run: Run, data: TrainingData, config: RunConfig, *, final: bool
) -> dict[str, Any]:
    """The evaluation set's metrics at the optimizer's evaluation weights, the weight
    average's (None without one) and, at the end with ``final_train_loss``, the training
    set's; keys ``<set>_loss``, ``<set>_acc``, ``<set>_top5``."""
    name = data.eval_name
    epoch = max(run.step - 1, 0) // data.steps_per_epoch()
    out: dict[str, Any] = {}
    with run.optimizer.evaluation_weights(run.model, lambda: data.train_batches(epoch)):
        out.update({f"{name}_{k}": v for k, v in evaluate(run.model, data).items()})
        if final and config.final_train_loss:
            train_set = evaluate(run.model, data, training_set=True)
            out.update({f"train_eval_{k}": v for k, v in train_set.items()})
    average = dict.fromkeys(("loss", "acc", "top5"))  # the same keys in every run
    if run.ema is not None:
        if data.world.active:  # batch-norm statistics differ between ranks: keep rank 0's
            for averaged in run.ema.model.buffers():
                torch.distributed.broadcast(averaged, 0)
        average.update(evaluate(run.ema.model, data))
    out.update({f"ema_{name}_{k}": v for k, v in average.items()})
    return out


def _build(config: RunConfig, spec: OptimizerSpec, data: TrainingData, steps_per_epoch: int) -> Run:
    """The model (from the run's seed), its optimizer and weight average, before any step."""
    torch.manual_seed(config.seed)
    model = build_model(
        config.model, data.in_channels, data.num_classes, config.model_init, data.image_size
    )
    model = model.to(data.device)
    if data.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = build_optimizer(model, spec, config, steps_per_epoch)
    ema = WeightAverage(model, config.ema_decay) if config.ema_decay else None
    return Run(model, optimizer, ema)


def _autocast(device: torch.device) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA; nothing elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _batches(
    data: TrainingData, start: int, end: int, steps_per_epoch: int
) -> Iterator[tuple[int, Any]]:
    """``(global step, batch)`` for the steps ``start`` .. ``end - 1``, across epochs."""
    step = start
    while step < end:
        epoch, first = divmod(step, steps_per_epoch)
        for batch in data.train_batches(epoch, first):
            yield step, batch
            step += 1
            if step == end or step % steps_per_epoch == 0:
                break


def _train_until(
    run: Run,
    forward: nn.Module,
    data: TrainingData,
    config: RunConfig,
    end: int,
    record_end: int,
    control: Control,
    bar: Any,
) -> bool:
    """Train from ``run.step`` towards ``end``, sampling ``lr``, ``rho`` and the temperature
    every ``config.sample_every_steps`` steps and at ``record_end`` (where the record of the
    stretch ends: checkpoints in between change nothing). Stops early for a checkpoint due
    by the clock or a preemption (then returns True). A non-finite loss raises
    ``ConfigError`` (or, with ``on_nonfinite="skip"``, the step is skipped on every rank)."""
    device, world = data.device, data.world
    steps_per_epoch = data.steps_per_epoch()
    if run.stretch is None:
        run.stretch = Stretch(torch.zeros(3, device=device, dtype=torch.float64), [], run.step)
    stretch = run.stretch
    run.model.train()
    run.optimizer.train_mode()
    bad_step = torch.full((), -1, dtype=torch.int64, device=device)
    skip = config.on_nonfinite == "skip"
    started = time.perf_counter()
    preempted = False
    try:
        for step, (x, y, share) in _batches(data, run.step, end, steps_per_epoch):
            epoch = step // steps_per_epoch
            torch.manual_seed(derived_seed(config.seed, Stream.MODEL, epoch, step))
            stretch.lr = run.optimizer.set_lr(step)
            with _autocast(device):
                logits = forward(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
            run.optimizer.optimizer.zero_grad(set_to_none=True)
            (loss * share if share != 1 else loss).backward()
            finite = torch.isfinite(loss.detach())
            take = True
            if skip:  # every rank must agree, now: one wait for the device per step
                agreed = finite.to(torch.int64)
                if world.active:
                    torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
                take = bool(agreed.item())
            else:
                bad_step = torch.where(finite | (bad_step >= 0), bad_step, step)
            if take:
                run.optimizer.optimizer.step()
                if run.ema is not None:
                    run.ema.update()
                stretch.sums[0] += loss.detach() * len(y)
                stretch.sums[1] += (logits.detach().argmax(1) == y).sum()
                stretch.sums[2] += len(y)
            else:
                stretch.skipped += 1
            run.step = step + 1
            if run.step % config.sample_every_steps == 0 or run.step == record_end:
                window = run.step - stretch.sampled_at
                momentum = run.optimizer.momentum(all_reduce=world.active)
                stretch.samples.append({"step": run.step, "lr": stretch.lr, **momentum,
                                        "steps": window})  # fmt: skip
                stretch.sampled_at = run.step
            if bar is not None:
                if run.step % PROGRESS_EVERY == 0 or run.step == end:
                    bar.set_postfix(_live(stretch.sums, run.optimizer), refresh=False)
                bar.update()
            if run.step % CONTROL_EVERY == 0 or run.step == end:
                preempted, due, bad = control.check(bad_step)
                if bad >= 0:
                    raise Diverged(
                        f"[{run.optimizer.spec.label}] the "
                        f"training loss is not finite at step {bad} (lr {stretch.lr:g}): the "
                        f"run diverged; lower --lr (or raise --lr-warmup-steps) and rerun with "
                        f"--resume from the last checkpoint, or pass --on-nonfinite skip"
                    )
                if preempted or due:
                    break
    finally:
        stretch.seconds += time.perf_counter() - started
        if bar is not None:
            bar.close()
    return preempted


def _finish_stretch(run: Run, data: TrainingData, steps_per_epoch: int) -> dict[str, Any]:
    """The training metrics of the stretch that ends here (summed over the ranks)."""
    stretch = run.stretch
    assert stretch is not None
    data.world.sum(stretch.sums)
    loss_sum, correct, seen = stretch.sums.tolist()
    run.stretch = None
    samples = stretch.samples
    tracked = [(s["temperature"], s["steps"]) for s in samples if s["temperature"] is not None]
    return {
        "epoch": _epochs(run.step, steps_per_epoch),
        "step": run.step,
        "train_loss": loss_sum / seen if seen else float("nan"),
        "train_acc": correct / seen if seen else float("nan"),
        "lr": stretch.lr,
        "rho": samples[-1]["rho"] if samples else None,
        # The mean over the stretch's steps of the per-step mean of v**2 over the model.
        "temperature": sum(t * n for t, n in tracked) / sum(n for _, n in tracked)
        if tracked
        else None,
        "skipped_steps": stretch.skipped,
        "seconds": stretch.seconds,
        "images_per_s": seen / stretch.seconds if stretch.seconds else None,
        "samples": [{k: v for k, v in s.items() if k != "steps"} for s in samples],
    }


def _live(sums: torch.Tensor, optimizer: RunOptimizer) -> dict[str, str]:
    """The progress bar's postfix: running loss and accuracy, the current rho and T."""
    loss_sum, correct, seen = sums.tolist()
    live = {"loss": f"{loss_sum / seen:.4f}", "acc": f"{correct / seen:.4f}"}
    momentum = optimizer.momentum(reset=False)
    if momentum["temperature"] is not None:
        live.update(rho=f"{momentum['rho']:.4f}", T=f"{momentum['temperature']:.3g}")
    return live


def _progress(show: bool, total: int, desc: str) -> Any:
    """A tqdm bar over ``total`` steps when ``show``, else None."""
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


@torch.no_grad()
def evaluate(model: nn.Module, data: TrainingData, training_set: bool = False) -> dict[str, float]:
    """Loss, accuracy and top-5 accuracy over the whole evaluation set (or training set), in
    evaluation mode; every rank evaluates its shard."""
    model.eval()
    sums = torch.zeros(3, device=data.device, dtype=torch.float64)  # loss, correct, top-5
    count = torch.zeros((), device=data.device, dtype=torch.float64)
    for x, y in data.eval_batches(training_set):
        with _autocast(data.device):
            logits = model(x)
        best = logits.topk(min(5, logits.shape[1]), dim=1).indices
        sums[0] += F.cross_entropy(logits.float(), y, reduction="sum")
        sums[1] += (logits.argmax(1) == y).sum()
        sums[2] += (best == y[:, None]).any(1).sum()
        count += len(y)
    data.world.sum(sums, count)
    loss, correct, top5 = (v / count.item() for v in sums.tolist())
    return {"loss": loss, "acc": correct, "top5": top5}


def _format(v: float | None, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def _summary(label: str, m: dict[str, Any], epochs: int) -> str:
    """One log line per evaluation."""
    name = "val" if "val_acc" in m else "test"
    ema = m[f"ema_{name}_acc"]
    return (
        f"[{label}] epoch {m['epoch']}/{epochs}  train loss {m['train_loss']:.4f}  acc "
        f"{m['train_acc']:.4f}  {name} loss {m[f'{name}_loss']:.4f}  acc {m[f'{name}_acc']:.4f}  "
        f"top-5 {m[f'{name}_top5']:.4f}  "
        + (f"EMA acc {ema:.4f}  " if ema is not None else "")
        + f"rho {_format(m['rho'])}  "
        f"T {_format(m['temperature'], '.3g')}  {m['seconds']:.1f}s  "
        f"{m['images_per_s']:.0f} img/s"
    )
