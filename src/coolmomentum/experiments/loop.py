"""The training loop: one optimizer, one model, one dataset, resumable.

:func:`train` is one flat loop over the run's steps. Each step is :func:`train_step` (one
optimizer step; it returns what happened), and after it come the events due at that step,
fixed in advance by the run's settings (:class:`Events`): sample the momentum statistics,
agree with the other ranks on whether to stop (a preemption, a checkpoint due by the clock, a
loss that is not finite: :mod:`.control`), evaluate, checkpoint. Evaluations (every epoch, or
every ``eval_every_steps`` steps, and at the last step) append one record to the metrics and
write the checkpoint (:mod:`.checkpoint`), so ``resume=True`` continues from the last one.
Batches, their augmentation and the model's own randomness are drawn from seeds derived from
``(seed, epoch, step)`` (:mod:`.data`), so a resumed run on the CPU ends with exactly the
weights and metrics of an uninterrupted one, and runs that share a seed see the same initial
weights and the same batches. Under ``torchrun`` every rank runs this loop; rank 0 alone
writes and logs.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from coolmomentum.errors import Diverged, Preempted

from . import checkpoint
from .config import ConfigError, RunConfig
from .control import Control
from .data import Stream, TrainingData, derived_seed
from .distributed import World
from .models import build_model
from .optimizers import OptimizerSpec, RunContext, RunOptimizer, build_optimizer
from .weight_average import WeightAverage

__all__ = ["Events", "evaluate", "train", "train_step"]

# Refresh the progress bar's loss and accuracy every this many steps (each refresh waits for
# the device).
PROGRESS_EVERY = 20
# Every this many steps (and where the run pauses to evaluate or checkpoint) the ranks agree
# on whether to stop. One small collective and one wait for the device per check.
CONTROL_EVERY = 10


class Due(NamedTuple):
    """The events after one step."""

    sample: bool  # record lr, rho and the temperature
    check: bool  # the ranks agree on whether to stop (a collective)
    checkpoint: bool  # write the checkpoint
    evaluate: bool  # evaluate, append a record to the metrics (and checkpoint)


@dataclass(frozen=True)
class Events:
    """When a run samples, checks, evaluates and checkpoints, fixed by its settings: the same
    steps on every rank and in a resumed run as in an uninterrupted one."""

    last: int  # the run's global steps
    evaluate_every: int
    checkpoint_every: int | None
    sample_every: int

    def at(self, step: int) -> Due:
        """The events after ``step`` steps have been taken."""
        evaluate = step % self.evaluate_every == 0 or step == self.last
        checkpoint = evaluate or (
            self.checkpoint_every is not None and step % self.checkpoint_every == 0
        )
        return Due(step % self.sample_every == 0 or evaluate,
                   step % CONTROL_EVERY == 0 or checkpoint, checkpoint, evaluate)  # fmt: skip

    def next_evaluation(self, step: int) -> int:
        """The first evaluation after ``step`` steps."""
        return min(self.last, (step // self.evaluate_every + 1) * self.evaluate_every)


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


class StepResult(NamedTuple):
    """What one training step did."""

    lr: float
    taken: bool  # False: skipped for a non-finite loss (``on_nonfinite="skip"``)
    finite: torch.Tensor  # whether the loss was finite (on the device: no wait for it)
    loss_sum: torch.Tensor  # the loss times the batch's size
    correct: torch.Tensor
    images: int


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
            **self.optimizer.state_dict(),
            "metrics": self.metrics,
            "stretch": None if self.stretch is None else self.stretch.state(),
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def restore(self, state: dict[str, Any], device: torch.device, world: World) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state)
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.step, self.metrics = state["step"], state["metrics"]
        stretch = state["stretch"]
        if stretch is not None:
            # The saved sums are every rank's: rank 0 carries them on, the others restart at 0.
            sums = stretch["sums"].to(device)
            self.stretch = Stretch(
                **{**stretch, "sums": sums if world.is_main else torch.zeros_like(sums)}
            )

    def record(self, result: StepResult) -> None:
        """Add a step's result to the stretch in progress."""
        assert self.stretch is not None
        self.stretch.lr = result.lr
        if result.taken:
            self.stretch.sums[0] += result.loss_sum
            self.stretch.sums[1] += result.correct
            self.stretch.sums[2] += result.images
        else:
            self.stretch.skipped += 1


def _epochs(step: int, steps_per_epoch: int) -> int | float:
    """Epochs done after ``step`` steps: an int at an epoch's end, else a fraction."""
    whole, part = divmod(step, steps_per_epoch)
    return whole if part == 0 else round(step / steps_per_epoch, 6)


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


def train_step(
    run: Run, forward: nn.Module, batch: Any, step: int, config: RunConfig, data: TrainingData
) -> StepResult:
    """Global step ``step`` on ``batch``: the learning rate set, forward, backward, and the
    optimizer step (and the weight average's), unless the loss is not finite and
    ``on_nonfinite="skip"`` (then every rank skips it, agreed at once: one wait for the
    device)."""
    x, y, share = batch
    torch.manual_seed(derived_seed(config.seed, Stream.MODEL, step // data.steps_per_epoch(), step))
    lr = run.optimizer.set_lr(step)
    with _autocast(data.device):
        logits = forward(x)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
    run.optimizer.zero_grad()
    (loss * share if share != 1 else loss).backward()
    finite = torch.isfinite(loss.detach())
    taken = config.on_nonfinite != "skip" or _finite_everywhere(finite, data.world)
    if taken:
        run.optimizer.step()
        if run.ema is not None:
            run.ema.update()
    correct = (logits.detach().argmax(1) == y).sum()
    return StepResult(lr, taken, finite, loss.detach() * len(y), correct, len(y))


def _finite_everywhere(finite: torch.Tensor, world: World) -> bool:
    agreed = finite.to(torch.int64)
    if world.active:
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
    return bool(agreed.item())


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
    session = Session.open(config, spec, run_dir, data, resume, progress, log)
    run, events = session.run, session.events
    watch_losses = config.on_nonfinite == "stop"  # else non-finite steps are skipped
    bad_step = torch.full((), -1, dtype=torch.int64, device=data.device)  # first non-finite
    with session.control as control:
        try:
            if run.stretch is not None and events.at(run.step).evaluate:
                session.evaluate()  # preempted where it was due: owed
            session.resume_training()
            for step, batch in _batches(data, run.step, events.last):
                result = train_step(run, session.forward, batch, step, config, data)
                run.record(result)
                if watch_losses:
                    bad_step = torch.where(result.finite | (bad_step >= 0), bad_step, step)
                run.step = step + 1
                due = events.at(run.step)
                if due.sample:
                    session.sample()
                session.bar.advance(run, due.evaluate)
                decision = control.check(bad_step) if due.check else None
                if decision is not None and decision.nonfinite_step >= 0:
                    raise Diverged(f"[{spec.label}] the training loss is not finite at step "
                                   f"{decision.nonfinite_step} (lr {result.lr:g}): the run "
                                   "diverged; its last checkpoint is kept")  # fmt: skip
                if decision is not None and decision.preempt:
                    session.checkpoint()
                    raise Preempted(f"[{spec.label}] preempted at step {run.step}: checkpoint "
                                    f"written in {run_dir}")  # fmt: skip
                if due.evaluate:
                    session.evaluate()
                    session.resume_training()
                elif due.checkpoint or (decision is not None and decision.checkpoint_now):
                    session.checkpoint()
        finally:
            session.bar.close()
    return run.metrics


@dataclass
class Session:
    """A run being trained: the run, where it is written, and what the loop's events do."""

    config: RunConfig
    spec: OptimizerSpec
    run_dir: Path
    data: TrainingData
    run: Run
    forward: nn.Module  # the model as trained: wrapped in DDP, compiled
    events: Events
    saved_config: dict[str, Any]
    show_progress: bool
    log: Callable[[str], None]
    control: Control
    bar: Progress = field(default_factory=lambda: Progress(None))
    clock: float = 0.0  # when the current piece of training started

    @classmethod
    def open(
        cls,
        config: RunConfig,
        spec: OptimizerSpec,
        run_dir: Path,
        data: TrainingData,
        resume: bool,
        progress: bool | None,
        log: Callable[[str], None],
    ) -> Session:
        """The run's folder opened (its checkpoint restored with ``resume``) and the run built."""
        world, device = data.world, data.device
        saved_config = {**config.for_run(spec), "world_size": world.size}
        restored = _on_main(
            world, lambda: checkpoint.open_run_dir(run_dir, saved_config, resume, log=log)
        )
        steps_per_epoch = data.steps_per_epoch()
        if steps_per_epoch < 1:
            raise ConfigError(
                f"batch_size {config.batch_size} is larger than the {data.num_train} training "
                f"images"
            )
        run = _build(config, spec, data, steps_per_epoch)
        if restored is not None:
            run.restore(restored, device, world)
            log(f"[{spec.label}] resuming after step {run.step} (epoch {restored['epoch']})")
        events = Events(config.total_steps(steps_per_epoch),
                        config.eval_every_steps or steps_per_epoch, config.checkpoint_every,
                        config.sample_every_steps)  # fmt: skip
        show = world.is_main and (sys.stderr.isatty() if progress is None else progress)
        return cls(config, spec, run_dir, data, run, _forward(run.model, config, data), events,
                   saved_config, show, log, Control(world, config.checkpoint_every_minutes),
                   clock=time.perf_counter())  # fmt: skip

    def resume_training(self) -> None:
        """Before training steps: training mode, a stretch in progress, its progress bar and
        clock (nothing once the run is done)."""
        run = self.run
        if run.step >= self.events.last:
            return
        run.model.train()
        run.optimizer.train_mode()
        if run.stretch is None:
            sums = torch.zeros(3, device=self.data.device, dtype=torch.float64)
            run.stretch = Stretch(sums, [], run.step)
        if self.show_progress:
            end = self.events.next_evaluation(run.step)
            self.bar = Progress(_tqdm(end - run.step, f"{self.spec.label} {run.step}->{end}"))
        self.clock = time.perf_counter()

    def sample(self) -> None:
        """Record lr, rho and the temperature of the steps since the last sample."""
        run, stretch = self.run, self.run.stretch
        assert stretch is not None
        report = run.optimizer.report(all_reduce=self.data.world.active)
        stretch.samples.append({"step": run.step, "lr": stretch.lr, "rho": report.rho,
                                "temperature": report.temperature,
                                "steps": run.step - stretch.sampled_at})  # fmt: skip
        stretch.sampled_at = run.step

    def _pause(self) -> None:
        """Training stops for a while: its seconds are counted."""
        assert self.run.stretch is not None
        now = time.perf_counter()
        self.run.stretch.seconds += now - self.clock
        self.clock = now

    def checkpoint(self) -> None:
        """Write the checkpoint in the middle of a stretch: rank 0's sums become every rank's
        (it alone writes), the others' restart at 0."""
        self._pause()
        stretch, world = self.run.stretch, self.data.world
        assert stretch is not None
        world.sum(stretch.sums)
        if not world.is_main:
            stretch.sums.zero_()
        self._save()

    def evaluate(self) -> None:
        """End the stretch: evaluate, append its record to the metrics, checkpoint, log."""
        self._pause()
        self.bar.close()
        run, data = self.run, self.data
        record = _finish_stretch(run, data, data.steps_per_epoch())
        record.update(_evaluations(run, data, self.config, final=run.step == self.events.last))
        run.metrics.append(record)
        self._save()
        if data.world.is_main:
            self.log(_summary(self.spec.label, record, self.config.epochs))

    def _save(self) -> None:
        if self.data.world.is_main:
            state = self.run.state(self.saved_config, self.data.steps_per_epoch())
            checkpoint.save(self.run_dir, state)
        self.control.checkpointed()
        self.clock = time.perf_counter()


def _forward(model: nn.Module, config: RunConfig, data: TrainingData) -> nn.Module:
    """The model as the training steps call it: in DDP under torchrun, compiled on request."""
    device, forward = data.device, model
    if data.world.active:
        forward = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        forward = torch.compile(forward)  # type: ignore[assignment]
    return forward


class Progress:
    """A progress bar over a stretch's steps (a tqdm bar), or nothing."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def advance(self, run: Run, last: bool) -> None:
        """One step more; the live loss, accuracy, rho and T now and then, and at the end."""
        if self.bar is None:
            return
        if run.step % PROGRESS_EVERY == 0 or last:
            assert run.stretch is not None
            self.bar.set_postfix(_live(run.stretch.sums, run.optimizer), refresh=False)
        self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None



def _tqdm(total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def _evaluations(
    run: Run, data: TrainingData, config: RunConfig, *, final: bool
) -> dict[str, Any]:
    """The evaluation set's metrics at the optimizer's evaluation weights, the weight
    average's (None without one) and, at the end with ``final_train_loss``, the training
    set's; keys ``<set>_loss``, ``<set>_acc``, ``<set>_top5``."""
    name = data.eval_name
    epoch = max(run.step - 1, 0) // data.steps_per_epoch()
    out: dict[str, Any] = {}
    with (
        run.optimizer.evaluation_weights(run.model, lambda: data.train_batches(epoch)),
        _main_rank_buffers(run.model, data.world),
    ):
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


@contextmanager
def _main_rank_buffers(model: nn.Module, world: World) -> Iterator[None]:
    """Every rank evaluates its shard with rank 0's buffers (batch norm's running statistics,
    which a checkpoint saves), so that an evaluation owed after a resume sees what the
    uninterrupted run saw; each rank's own buffers are put back afterwards, and training is
    not changed."""
    if not world.active:
        yield
        return
    buffers = list(model.buffers())
    own = [b.clone() for b in buffers]
    for b in buffers:
        torch.distributed.broadcast(b, 0)
    try:
        yield
    finally:
        with torch.no_grad():
            for b, saved in zip(buffers, own, strict=True):
                b.copy_(saved)


def _build(config: RunConfig, spec: OptimizerSpec, data: TrainingData, steps_per_epoch: int) -> Run:
    """The model (from the run's seed), its optimizer and weight average, before any step."""
    torch.manual_seed(config.seed)
    model = build_model(
        config.model, data.in_channels, data.num_classes, config.model_init, data.image_size
    )
    model = model.to(data.device)
    if data.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    context = RunContext(steps_per_epoch, config.total_steps(steps_per_epoch))
    optimizer = build_optimizer(model, spec, context, config.weight_decay_params,
                                config.recompute_batch_norm)  # fmt: skip
    ema = WeightAverage(model, config.ema_decay) if config.ema_decay else None
    return Run(model, optimizer, ema)


def _autocast(device: torch.device) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA; nothing elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _batches(data: TrainingData, start: int, end: int) -> Iterator[tuple[int, Any]]:
    """``(global step, batch)`` for the steps ``start`` .. ``end - 1``, across epochs."""
    steps_per_epoch = data.steps_per_epoch()
    step = start
    while step < end:
        epoch, first = divmod(step, steps_per_epoch)
        for batch in data.train_batches(epoch, first):
            yield step, batch
            step += 1
            if step == end or step % steps_per_epoch == 0:
                break


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
    report = optimizer.report(reset=False)
    if report.temperature is not None:
        live.update(rho=f"{report.rho:.4f}", T=f"{report.temperature:.3g}")
    return live


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
