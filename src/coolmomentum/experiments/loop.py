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

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

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


@dataclass
class Run:
    """What a run carries from step to step, and what its checkpoint holds."""

    model: nn.Module
    optimizer: RunOptimizer
    ema: WeightAverage | None
    step: int = 0  # global optimizer steps taken
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def state(self, config: dict[str, Any], steps_per_epoch: int) -> dict[str, Any]:
        state = {
            "config": config,
            "step": self.step,
            "epoch": _epochs(self.step, steps_per_epoch),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.optimizer.state_dict(),
            "metrics": self.metrics,
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.step, self.metrics = state["step"], state["metrics"]


def _epochs(step: int, steps_per_epoch: int) -> int | float:
    """Epochs done after ``step`` steps: an int at an epoch's end, else a fraction."""
    whole, part = divmod(step, steps_per_epoch)
    return whole if part == 0 else round(step / steps_per_epoch, 6)


def evaluation_steps(start: int, last: int, steps_per_epoch: int, every: int | None) -> list[int]:
    """The global steps after ``start`` at which the run is evaluated, ending with ``last``."""
    period = every or steps_per_epoch
    points = list(range((start // period + 1) * period, last, period))
    return [*points, last] if start < last else []


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
    """Train one optimizer; returns its metrics (also written to ``run_dir``)."""
    world, device = data.world, data.device
    saved_config = {**config.for_run(spec), "world_size": world.size}
    restored = _on_main(world, lambda: checkpoint.open_run_dir(run_dir, saved_config, resume))
    steps_per_epoch = data.steps_per_epoch()
    if steps_per_epoch < 1:
        raise ConfigError(
            f"batch_size {config.batch_size} is larger than the {data.num_train} training images"
        )
    last_step = run_steps(config, steps_per_epoch)
    run = _build(config, spec, data, steps_per_epoch)
    if restored is not None:
        run.restore(restored)
        log(f"[{spec.label}] resuming after step {run.step} (epoch {restored['epoch']})")
    forward: nn.Module = run.model
    if world.active:
        forward = nn.parallel.DistributedDataParallel(
            run.model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        forward = torch.compile(forward)  # type: ignore[assignment]
    show = world.is_main and (sys.stderr.isatty() if progress is None else progress)
    for end in evaluation_steps(run.step, last_step, steps_per_epoch, config.eval_every_steps):
        bar = _progress(show, end - run.step, f"{spec.label} {run.step}->{end}/{last_step}")
        record = _train_stretch(run, forward, data, config, end, steps_per_epoch, bar)
        record.update(_evaluations(run, data, config, final=end == last_step))
        run.metrics.append(record)
        if world.is_main:
            checkpoint.save(run_dir, run.state(saved_config, steps_per_epoch))
            log(_summary(spec.label, record, config.epochs))
    return run.metrics


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


def _train_stretch(
    run: Run,
    forward: nn.Module,
    data: TrainingData,
    config: RunConfig,
    end: int,
    steps_per_epoch: int,
    bar: Any,
) -> dict[str, Any]:
    """Train from ``run.step`` to ``end``; the stretch's training metrics, with ``lr``,
    ``rho`` and the temperature sampled every ``config.sample_every_steps`` steps."""
    device = data.device
    run.model.train()
    run.optimizer.train_mode()
    sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss * n, correct, n
    samples: list[dict[str, Any]] = []
    sampled_at = run.step
    started = time.perf_counter()
    lr = float("nan")
    for step, (x, y, share) in _batches(data, run.step, end, steps_per_epoch):
        epoch = step // steps_per_epoch
        torch.manual_seed(derived_seed(config.seed, Stream.MODEL, epoch, step))
        lr = run.optimizer.set_lr(step)
        with _autocast(device):
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
        run.optimizer.optimizer.zero_grad(set_to_none=True)
        (loss * share if share != 1 else loss).backward()
        run.optimizer.optimizer.step()
        if run.ema is not None:
            run.ema.update()
        sums[0] += loss.detach() * len(y)
        sums[1] += (logits.detach().argmax(1) == y).sum()
        sums[2] += len(y)
        run.step = step + 1
        if run.step % config.sample_every_steps == 0 or run.step == end:
            window = run.step - sampled_at
            momentum = run.optimizer.momentum(all_reduce=data.world.active)
            samples.append({"step": run.step, "lr": lr, **momentum, "steps": window})
            sampled_at = run.step
        if bar is not None:
            if run.step % PROGRESS_EVERY == 0 or run.step == end:
                bar.set_postfix(_live(sums, run.optimizer), refresh=False)
            bar.update()
    data.world.sum(sums)
    seconds = time.perf_counter() - started  # the sum above waited for the device
    if bar is not None:
        bar.close()
    loss_sum, correct, seen = sums.tolist()
    tracked = [(s["temperature"], s["steps"]) for s in samples if s["temperature"] is not None]
    return {
        "epoch": _epochs(run.step, steps_per_epoch),
        "step": run.step,
        "train_loss": loss_sum / seen,
        "train_acc": correct / seen,
        "lr": lr,
        "rho": samples[-1]["rho"],
        # The mean over the stretch's steps of the per-step mean of v**2 over the model.
        "temperature": sum(t * n for t, n in tracked) / sum(n for _, n in tracked)
        if tracked
        else None,
        "seconds": seconds,
        "images_per_s": seen / seconds,
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
