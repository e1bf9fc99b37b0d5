"""The training loop of the harness: one optimizer, one model, one dataset, resumable.

A run lives in its own directory::

    config.json      the resolved configuration
    metrics.jsonl    one line per epoch
    checkpoint.pt    model, optimizer and metrics after the last complete epoch

Every file is written to a temporary name and renamed, so a run killed at any moment leaves
the last complete epoch behind, and ``resume=True`` continues from it. The data order, the
augmentation and the model's own randomness are drawn from generators seeded by
``(seed, epoch)``, so a resumed run on the CPU ends with exactly the weights and metrics of an
uninterrupted one. Runs that share a seed see the same initial weights and the same batches.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coolmomentum import CoolMomentum
from coolmomentum._io import atomic_write

from . import data as data_mod
from .distributed import World
from .models import build_model

__all__ = [
    "OPTIMIZERS",
    "ConfigError",
    "OptimizerSpec",
    "RunConfig",
    "load_metrics",
    "train",
]

OPTIMIZERS = ("coolmomentum", "sgd", "adam")
AUGMENTATIONS = ("none", "shift-flip", "crop-flip")
NORMALIZATIONS = ("channel", "pixel-mean")
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
# Settings that may differ between a run and its resumption: where things are, not what.
_NOT_IDENTITY = ("data_dir", "device", "out")


class ConfigError(ValueError):
    """A configuration or checkpoint that cannot be used, with what to do instead."""


@dataclass
class OptimizerSpec:
    """One optimizer of a run and its hyperparameters.

    ``total_steps`` (CoolMomentum's cooling steps) defaults to every step after the hot phase;
    ``hot_epochs`` holds ``rho_0`` for that many epochs first. ``lr_decay`` is a step decay as
    ``[[epoch, factor], ...]``: from that (0-based) epoch on the learning rate is
    ``lr * factor``.
    """

    optimizer: str = "coolmomentum"
    lr: float = 0.01
    label: str = ""
    rho_0: float = 0.99
    schedule: str = "exponential"
    total_steps: int | None = None
    hot_epochs: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_decay: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
            )
        if not self.label:
            self.label = self.optimizer
        if not self.label.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ConfigError(
                f"label {self.label!r} names a directory: use letters, digits, '-', '_', '.'"
            )
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.hot_epochs < 0:
            raise ConfigError(f"hot_epochs must be >= 0, got {self.hot_epochs}")
        self.lr_decay = [[float(e), float(f)] for e, f in self.lr_decay]

    def lr_at(self, epoch: int) -> float:
        factor = 1.0
        for start, f in self.lr_decay:
            if epoch >= start:
                factor = f
        return self.lr * factor


@dataclass
class RunConfig:
    """Everything that defines a run; ``runs`` lists the optimizers to train, one after another."""

    dataset: str = "fashion-mnist"
    model: str = "convnet"
    epochs: int = 4
    batch_size: int = 64
    seed: int = 0
    runs: list[OptimizerSpec] = field(default_factory=lambda: [OptimizerSpec()])
    preset: str | None = None
    description: str = ""
    data_dir: str | None = None
    device: str = "auto"
    out: str = "runs/demo"
    train_subset: int | None = None
    test_subset: int | None = None
    drop_last: bool = True
    augment: str = "none"
    normalize: str = "channel"
    mean: list[float] | None = None
    std: list[float] | None = None
    weight_decay_params: str = "all"
    label_smoothing: float = 0.0
    eval_batch_size: int = 1000
    compile: bool = False

    def __post_init__(self) -> None:
        # Presets give the runs as dicts.
        self.runs = [r if isinstance(r, OptimizerSpec) else OptimizerSpec(**r) for r in self.runs]
        labels = [r.label for r in self.runs]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"run labels must differ, got {labels}; set 'label' per run")
        for name, value in (("epochs", self.epochs), ("batch_size", self.batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for option, choice, allowed in (
            ("augment", self.augment, AUGMENTATIONS),
            ("normalize", self.normalize, NORMALIZATIONS),
            ("weight_decay_params", self.weight_decay_params, ("all", "conv")),
        ):
            if choice not in allowed:
                raise ConfigError(f"{option} must be one of {', '.join(allowed)}, got {choice!r}")
        if self.dataset not in data_mod.DATASETS:
            raise ConfigError(
                f"unknown dataset {self.dataset!r}; choose one of {', '.join(data_mod.DATASETS)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def for_run(self, spec: OptimizerSpec) -> dict[str, Any]:
        """The configuration of one run as saved with it: shared settings plus its optimizer."""
        d = self.to_dict()
        d["runs"] = [dataclasses.asdict(spec)]
        return d


def load_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"--device {device!r} is not a device torch knows ({e})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device")
    return resolved


def _seed(seed: int, epoch: int, stream: int) -> int:
    """A distinct, reproducible seed per (run seed, epoch, purpose)."""
    return (seed * 1_000_003 + epoch * 1_009 + stream) % (2**63)


class Data:
    """The dataset on the device, its normalization and augmentation."""

    def __init__(self, config: RunConfig, device: torch.device, world: World | None = None) -> None:
        world = world or World()
        if config.batch_size % world.size:
            raise ConfigError(
                f"--batch-size {config.batch_size} is the global batch, split over {world.size} "
                f"ranks: it must be divisible by the world size"
            )
        ds = data_mod.load_dataset(config.dataset, config.data_dir)
        if config.train_subset:
            ds = dataclasses.replace(
                ds,
                train_x=ds.train_x[: config.train_subset],
                train_y=ds.train_y[: config.train_subset],
            )
        if config.test_subset:
            ds = dataclasses.replace(
                ds, test_x=ds.test_x[: config.test_subset], test_y=ds.test_y[: config.test_subset]
            )
        self.ds = ds.to(device)
        self.device = device
        self.config = config
        self.world = world
        if config.normalize == "pixel-mean":
            self.mean: Tensor | list[float] = data_mod.pixel_mean(self.ds.train_x)
            self.std: Tensor | list[float] | None = None
        else:
            mean, std = data_mod.channel_stats(self.ds.train_x)
            self.mean = config.mean if config.mean is not None else mean
            self.std = config.std if config.std is not None else std
        self.channels_last = device.type == "cuda"

    def steps_per_epoch(self) -> int:
        n, b = len(self.ds.train_x), self.config.batch_size
        return n // b if self.config.drop_last else math.ceil(n / b)

    def prepare(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        aug = self.config.augment if generator is not None else "none"
        if aug == "shift-flip":
            x = data_mod.random_flip(
                data_mod.random_shift(x, max(1, x.shape[-1] // 10), generator), generator
            )
        elif aug == "crop-flip":
            x = data_mod.random_flip(data_mod.random_crop(x, 4, generator), generator)
        x = data_mod.normalize(x, self.mean, self.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def train_batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor, float]]:
        """This rank's part of every global batch, and its share of the global batch's mean.

        Every rank draws the same order and augmentation (one generator per epoch, seeded
        alike), so the global batches are those of a single process whatever the world size.
        """
        order_gen = torch.Generator(self.device).manual_seed(_seed(self.config.seed, epoch, 1))
        aug_gen = torch.Generator(self.device).manual_seed(_seed(self.config.seed, epoch, 2))
        x_all, y_all = self.ds.train_x, self.ds.train_y
        n, b = len(x_all), self.config.batch_size
        order = torch.randperm(n, generator=order_gen, device=self.device)
        for i in range(self.steps_per_epoch()):
            index = order[i * b : (i + 1) * b]
            x = self.prepare(x_all[index], aug_gen)
            mine = torch.tensor_split(torch.arange(len(index)), self.world.size)[self.world.rank]
            # Data parallelism averages the ranks' gradients; weighting each rank's mean loss
            # by its share keeps that the global batch's mean when the last batch splits unevenly.
            share = len(mine) * self.world.size / len(index)
            yield x[mine], y_all[index][mine], share

    def test_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's shard of the test set, in batches."""
        x_all, y_all = self.ds.test_x, self.ds.test_y
        mine = torch.tensor_split(torch.arange(len(x_all)), self.world.size)[self.world.rank]
        b = self.config.eval_batch_size
        for start in range(0, len(mine), b):
            index = mine[start : start + b].to(self.device)
            yield self.prepare(x_all[index]), y_all[index]


def param_groups(model: nn.Module, spec: OptimizerSpec, which: str) -> list[dict[str, Any]]:
    """Parameters split by whether weight decay applies (``which="conv"``: conv kernels only)."""
    if which == "all" or not spec.weight_decay:
        return [{"params": list(model.parameters())}]
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            is_kernel = isinstance(module, nn.Conv2d) and name == "weight"
            (decay if is_kernel else no_decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    model: nn.Module, spec: OptimizerSpec, config: RunConfig, steps_per_epoch: int
) -> torch.optim.Optimizer:
    groups = param_groups(model, spec, config.weight_decay_params)
    if spec.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
        )
    if spec.optimizer == "adam":
        return torch.optim.Adam(groups, lr=spec.lr, weight_decay=spec.weight_decay)
    hot_steps = round(spec.hot_epochs * steps_per_epoch)
    total = spec.total_steps or config.epochs * steps_per_epoch - hot_steps
    if total <= 0:
        raise ConfigError(
            f"run {spec.label!r}: hot_epochs={spec.hot_epochs} leaves no steps to cool over in "
            f"{config.epochs} epochs"
        )
    return CoolMomentum(
        groups,
        lr=spec.lr,
        rho_0=spec.rho_0,
        total_steps=None if spec.schedule == "constant" else total,
        schedule=spec.schedule,
        hot_steps=hot_steps,
        weight_decay=spec.weight_decay,
    )


class Progress:
    """A tqdm bar over an epoch's steps on a terminal; nothing otherwise."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    @property
    def enabled(self) -> bool:
        return self.bar is not None

    def update(self, postfix: dict[str, str] | None = None) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, autocast: Any) -> tuple[float, float]:
    model.eval()
    loss_sum = torch.zeros((), device=data.device, dtype=torch.float64)
    correct = torch.zeros((), device=data.device, dtype=torch.float64)
    for x, y in data.test_batches():
        with autocast():
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    data.world.sum(loss_sum, correct)
    n = len(data.ds.test_x)
    return loss_sum.item() / n, correct.item() / n


def _format(v: float | None, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def _load_checkpoint(path: Path, identity: dict[str, Any], resume: bool) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None; refuses one of another configuration."""
    if not path.exists():
        return None
    if not resume:
        raise ConfigError(
            f"{path} exists: pass --resume to continue that run, or choose another --out directory"
        )
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    saved = {k: v for k, v in checkpoint["config"].items() if k not in _NOT_IDENTITY}
    if saved != identity:
        diffs = [
            f"{k}: {saved.get(k)!r} in the checkpoint, {identity.get(k)!r} now"
            for k in sorted(set(saved) | set(identity))
            if saved.get(k) != identity.get(k)
        ]
        raise ConfigError(
            f"{path} was written by another configuration ({'; '.join(diffs)}): rerun with the "
            f"same settings to resume, or choose another --out"
        )
    return checkpoint


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
    data: Data,
    *,
    resume: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train one optimizer; returns the per-epoch metrics (also written to ``run_dir``).

    Under ``torchrun`` every rank calls this; rank 0 alone writes files and logs.
    """
    world, device = data.world, data.device
    checkpoint_path = run_dir / CHECKPOINT
    saved_config = {**config.for_run(spec), "world_size": world.size}
    identity = {k: v for k, v in saved_config.items() if k not in _NOT_IDENTITY}

    def prepare_dir() -> dict[str, Any] | None:
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = _load_checkpoint(checkpoint_path, identity, resume)
        atomic_write(run_dir / CONFIG, json.dumps(saved_config, indent=2))
        return checkpoint

    checkpoint = _on_main(world, prepare_dir)
    steps = data.steps_per_epoch()
    if steps < 1:
        raise ConfigError(
            f"batch_size {config.batch_size} is larger than the {len(data.ds.train_x)} "
            f"training images"
        )
    torch.manual_seed(config.seed)
    model = build_model(config.model, data.ds.in_channels, data.ds.num_classes).to(device)
    if data.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = build_optimizer(model, spec, config, steps)
    metrics: list[dict[str, Any]] = []
    start_epoch = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        metrics = checkpoint["metrics"]
        start_epoch = checkpoint["epoch"]
        log(f"[{spec.label}] resuming after epoch {start_epoch} from {checkpoint_path}")
    forward: nn.Module = model
    if world.active:
        forward = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        forward = torch.compile(forward)  # type: ignore[assignment]

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    show = world.is_main and (sys.stderr.isatty() if progress is None else progress)
    for epoch in range(start_epoch, config.epochs):
        torch.manual_seed(_seed(config.seed, epoch, 3))  # dropout and other model randomness
        for group in optimizer.param_groups:
            group["lr"] = spec.lr_at(epoch)
        model.train()
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        correct = torch.zeros((), device=device, dtype=torch.float64)
        seen = torch.zeros((), device=device, dtype=torch.float64)
        bar = Progress(steps, f"{spec.label} {epoch + 1}/{config.epochs}", show)
        started = time.perf_counter()
        for step, (x, y, share) in enumerate(data.train_batches(epoch)):
            with autocast():
                logits = forward(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            (loss * share if share != 1 else loss).backward()
            optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            postfix = None
            if bar.enabled and (step % 20 == 0 or step == steps - 1):
                postfix = {
                    "loss": f"{(loss_sum / seen).item():.4f}",
                    "acc": f"{(correct / seen).item():.4f}",
                }
                if isinstance(optimizer, CoolMomentum):
                    live = optimizer.stats(reset=False)[0]
                    postfix.update(rho=f"{live['rho']:.4f}", T=_format(live["temperature"], ".3g"))
            bar.update(postfix)
        world.sum(loss_sum, correct, seen)
        seconds = time.perf_counter() - started  # the sum above waited for the device
        bar.close()
        test_loss, test_acc = evaluate(model, data, autocast)
        rho = temperature = None
        if isinstance(optimizer, CoolMomentum):
            stats = optimizer.stats(all_reduce=world.active)[0]
            rho, temperature = stats["rho"], stats["temperature"]
        elif spec.optimizer == "sgd":
            rho = spec.momentum
        n = seen.item()
        metrics.append(
            {
                "epoch": epoch + 1,
                "step": (epoch + 1) * steps,
                "train_loss": loss_sum.item() / n,
                "train_acc": correct.item() / n,
                "test_loss": test_loss,
                "test_acc": test_acc,
                "lr": spec.lr_at(epoch),
                "rho": rho,
                "temperature": temperature,
                "seconds": seconds,
                "images_per_s": n / seconds,
            }
        )
        if world.is_main:
            state = {
                "config": saved_config,
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "metrics": metrics,
            }
            buffer = io.BytesIO()
            torch.save(state, buffer)
            atomic_write(checkpoint_path, buffer.getvalue())
            atomic_write(run_dir / METRICS, "".join(json.dumps(m) + "\n" for m in metrics))
            m = metrics[-1]
            log(
                f"[{spec.label}] epoch {epoch + 1}/{config.epochs}  train loss "
                f"{m['train_loss']:.4f}  acc {m['train_acc']:.4f}  test loss "
                f"{m['test_loss']:.4f}  acc {m['test_acc']:.4f}  rho {_format(rho)}  "
                f"T {_format(temperature, '.3g')}  {seconds:.1f}s"
            )
    return metrics
