"""The training loop of the harness: one optimizer, one model, one dataset, resumable.

A run lives in its own directory::

    config.json      the resolved configuration
    metrics.jsonl    one line per epoch
    checkpoint.pt    model, optimizer, weight average and metrics after the last complete epoch

Every file is written to a temporary name and renamed, so a run killed at any moment leaves
the last complete epoch behind, and ``resume=True`` continues from it. The data order, the
augmentation and the model's own randomness are drawn from generators seeded by
``(seed, epoch)``, so a resumed run on the CPU ends with exactly the weights and metrics of an
uninterrupted one. Runs that share a seed see the same initial weights and the same batches.
"""

from __future__ import annotations

import copy
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
from coolmomentum.errors import UsageError
from coolmomentum.schedules import Schedule

from . import data as data_mod
from . import imagenet
from .distributed import World
from .models import build_model
from .optimizers import TFRMSprop

__all__ = [
    "DATASETS",
    "OPTIMIZERS",
    "ConfigError",
    "Data",
    "ImageNetData",
    "MomentumWarmup",
    "OptimizerSpec",
    "RunConfig",
    "WeightAverage",
    "load_data",
    "load_metrics",
    "train",
]

# The in-memory datasets of ``data``, and ImageNet, streamed from an ImageFolder tree.
IMAGENET = "imagenet"
DATASETS = (*data_mod.DATASETS, IMAGENET)
OPTIMIZERS = ("coolmomentum", "sgd", "adam", "rmsprop-tf")
WEIGHT_DECAY_PARAMS = ("all", "conv", "no-batchnorm")
AUGMENTATIONS = ("none", "shift-flip", "crop-flip")
NORMALIZATIONS = ("channel", "pixel-mean")
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
# Settings that may differ between a run and its resumption: where things are, not what.
_NOT_IDENTITY = ("data_dir", "device", "out", "workers")


class ConfigError(UsageError, ValueError):
    """A configuration or checkpoint that cannot be used, with what to do instead."""


@dataclass
class OptimizerSpec:
    """One optimizer of a run and its hyperparameters.

    ``total_steps`` (CoolMomentum's cooling steps) defaults to every step after the hot phase;
    ``hot_epochs`` holds ``rho_0`` for that many epochs first. ``momentum_warmup_steps``
    (CoolMomentum) sets ``rho = 0`` for the global steps before it, then follows the cooling
    schedule at the global step (the ImageNet recipe's momentum warm-up).

    The learning rate is set at every step (:meth:`lr_at`): a linear warm-up from 0 over
    ``lr_warmup_steps``, then ``lr`` times ``lr_decay_factor ** floor(step /
    lr_decay_every_steps)`` (a staircase counted from step 0) times the step decay
    ``lr_decay``, given as ``[[epoch, factor], ...]``: from that (0-based) epoch on the factor
    applies. ``rms_decay`` and ``eps`` are TF RMSProp's (``rmsprop-tf``, with ``momentum``).
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
    lr_warmup_steps: int = 0
    lr_decay_factor: float = 1.0
    lr_decay_every_steps: float = 0.0
    momentum_warmup_steps: int = 0
    rms_decay: float = 0.9
    eps: float = 1e-3

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
        for name in ("hot_epochs", "lr_warmup_steps", "lr_decay_every_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr_decay_factor > 0:
            raise ConfigError(f"lr_decay_factor must be > 0, got {self.lr_decay_factor}")
        if self.momentum_warmup_steps and self.optimizer != "coolmomentum":
            raise ConfigError(
                f"momentum_warmup_steps is CoolMomentum's; run {self.label!r} uses "
                f"{self.optimizer}: leave it at 0"
            )
        self.lr_decay = [[float(e), float(f)] for e, f in self.lr_decay]

    def lr_at(self, step: int, steps_per_epoch: int) -> float:
        """The learning rate of global optimizer step ``step`` (counted from 0)."""
        if step < self.lr_warmup_steps:
            return self.lr * step / self.lr_warmup_steps
        factor = 1.0
        for start, f in self.lr_decay:
            if step // steps_per_epoch >= start:
                factor = f
        if self.lr_decay_every_steps:
            factor *= self.lr_decay_factor ** math.floor(step / self.lr_decay_every_steps)
        return self.lr * factor


@dataclass
class RunConfig:
    """Everything that defines a run; ``runs`` lists the optimizers to train, one after another.

    A run lasts ``epochs`` epochs, or stops after ``max_steps`` global optimizer steps when
    that comes first (a recipe counted in steps). ``ema_decay`` keeps an average of the
    weights (:class:`WeightAverage`) and evaluates it too. ``image_size`` and ``workers``
    (DataLoader processes per rank) apply to ``imagenet``, whose ``eval_batch_size`` is the
    global evaluation batch; the other datasets' is per process.
    """

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
    max_steps: int | None = None
    ema_decay: float | None = None
    image_size: int = 224
    workers: int = 8

    def __post_init__(self) -> None:
        # Presets give the runs as dicts.
        self.runs = [r if isinstance(r, OptimizerSpec) else OptimizerSpec(**r) for r in self.runs]
        labels = [r.label for r in self.runs]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"run labels must differ, got {labels}; set 'label' per run")
        for name, value in (
            ("epochs", self.epochs),
            ("batch_size", self.batch_size),
            ("image_size", self.image_size),
            ("max_steps", 1 if self.max_steps is None else self.max_steps),
        ):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.workers < 0:
            raise ConfigError(
                f"workers must be >= 0 (0 loads in the main process), got {self.workers}"
            )
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in (0, 1), e.g. 0.9999, got {self.ema_decay}")
        for option, choice, allowed in (
            ("augment", self.augment, AUGMENTATIONS),
            ("normalize", self.normalize, NORMALIZATIONS),
            ("weight_decay_params", self.weight_decay_params, WEIGHT_DECAY_PARAMS),
        ):
            if choice not in allowed:
                raise ConfigError(f"{option} must be one of {', '.join(allowed)}, got {choice!r}")
        if self.dataset not in DATASETS:
            raise ConfigError(
                f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}"
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


def _rank_batch(config: RunConfig, world: World) -> int:
    """This rank's part of the global batch."""
    if config.batch_size % world.size:
        raise ConfigError(
            f"--batch-size {config.batch_size} is the global batch, split over {world.size} "
            f"ranks: it must be divisible by the world size"
        )
    return config.batch_size // world.size


class Data:
    """The dataset on the device, its normalization and augmentation.

    The training loop reads, besides the methods: ``world``, ``device``, ``channels_last``,
    ``num_train``, ``num_test``, ``in_channels`` and ``num_classes``; :class:`ImageNetData`
    offers the same.
    """

    def __init__(self, config: RunConfig, device: torch.device, world: World | None = None) -> None:
        world = world or World()
        _rank_batch(config, world)
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
        self.num_train, self.num_test = len(ds.train_x), len(ds.test_x)
        self.in_channels, self.num_classes = ds.in_channels, ds.num_classes
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


class ImageNetData:
    """ImageNet from an ImageFolder tree (:mod:`.imagenet`), too big for :class:`Data`.

    JPEGs are decoded and augmented in ``config.workers`` DataLoader processes per rank; each
    rank loads ``batch_size / world size`` images per step (every rank's batches together are
    the global batch a single process would see: a stretch of the same permutation) and this
    rank's shard of ``val/``. Batches arrive as uint8 and are normalized on the device.
    """

    def __init__(self, config: RunConfig, device: torch.device, world: World | None = None) -> None:
        self.world = world = world or World()
        if config.data_dir is None:
            raise ConfigError(
                "the imagenet dataset needs --data-dir: the folder that holds train/ and val/"
            )
        if config.train_subset or config.test_subset:
            raise ConfigError("--train-subset and --test-subset do not apply to imagenet")
        common: dict[str, Any] = dict(
            rank=world.rank,
            world_size=world.size,
            workers=config.workers,
            seed=config.seed,
            image_size=config.image_size,
            pin_memory=device.type == "cuda",
        )
        self.train_loader = imagenet.make_loader(
            config.data_dir, "train", _rank_batch(config, world), train=True, **common
        )
        eval_batch = max(1, config.eval_batch_size // world.size)
        self.test_loader = imagenet.make_loader(
            config.data_dir, "val", eval_batch, train=False, **common
        )
        train_set: imagenet.ImageFolder = self.train_loader.dataset  # type: ignore[assignment]
        test_set: imagenet.ImageFolder = self.test_loader.dataset  # type: ignore[assignment]
        self.num_train, self.num_test = len(train_set), len(test_set)
        self.in_channels, self.num_classes = 3, len(train_set.classes)
        self.device = device
        self.channels_last = device.type == "cuda"

    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    def _on_device(self, x: Tensor) -> Tensor:
        x = imagenet.normalize_imagenet(x.to(self.device, non_blocking=True))
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    def train_batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor, float]]:
        imagenet.set_epoch(self.train_loader, epoch)
        for x, y in self.train_loader:
            yield self._on_device(x), y.to(self.device, non_blocking=True), 1.0

    def test_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in self.test_loader:
            yield self._on_device(x), y.to(self.device, non_blocking=True)


def load_data(config: RunConfig, device: torch.device, world: World) -> Data | ImageNetData:
    """The data of ``config.dataset`` for this rank."""
    cls = ImageNetData if config.dataset == IMAGENET else Data
    return cls(config, device, world)


def param_groups(model: nn.Module, spec: OptimizerSpec, which: str) -> list[dict[str, Any]]:
    """Parameters split by whether weight decay applies: ``which="conv"``: conv kernels only;
    ``"no-batchnorm"``: every parameter but batch norm's scales and shifts."""
    if which == "all" or not spec.weight_decay:
        return [{"params": list(model.parameters())}]
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if which == "conv":
                decayed = isinstance(module, nn.Conv2d) and name == "weight"
            else:
                decayed = not isinstance(module, nn.modules.batchnorm._BatchNorm)
            (decay if decayed else no_decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


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
    if spec.optimizer == "rmsprop-tf":
        return TFRMSprop(
            groups,
            lr=spec.lr,
            decay=spec.rms_decay,
            momentum=spec.momentum,
            eps=spec.eps,
            weight_decay=spec.weight_decay,
        )
    hot_steps = round(spec.hot_epochs * steps_per_epoch)
    total = spec.total_steps or run_steps(config, steps_per_epoch) - hot_steps
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


def run_steps(config: RunConfig, steps_per_epoch: int) -> int:
    """The global optimizer steps of a run: its epochs, or ``max_steps`` if fewer."""
    steps = config.epochs * steps_per_epoch
    return steps if config.max_steps is None else min(steps, config.max_steps)


class WeightAverage:
    """An exponential moving average of a model's parameters and float buffers.

    As TensorFlow's ``ExponentialMovingAverage(decay, num_updates=step)``: it starts at the
    initial weights and, after optimizer step ``k`` (from 1), moves towards the current ones
    by ``1 - min(decay, (1 + k) / (10 + k))``, so that early averages forget the random
    initialization. ``model`` holds the averaged weights, ready to evaluate; integer buffers
    (batch norm's step counter) are copied.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        # state_dict() tensors share storage with the modules': in-place updates reach them.
        averaged, current = self.model.state_dict(), model.state_dict()
        floats = [k for k, v in current.items() if v.is_floating_point()]
        others = [k for k in current if k not in floats]
        self._averaged, self._current = [averaged[k] for k in floats], [current[k] for k in floats]
        self._copied, self._source = [averaged[k] for k in others], [current[k] for k in others]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        k = self.updates
        decay = min(self.decay, (1 + k) / (10 + k))
        if self._averaged:
            torch._foreach_lerp_(self._averaged, self._current, 1.0 - decay)
        if self._copied:
            torch._foreach_copy_(self._copied, self._source)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = state["updates"]
        self.model.load_state_dict(state["model"])


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
def evaluate(model: nn.Module, data: Data | ImageNetData, autocast: Any) -> dict[str, float]:
    """Test loss, accuracy and top-5 accuracy over the whole test set (every rank's shard)."""
    model.eval()
    loss_sum, correct, top5 = torch.zeros(3, device=data.device, dtype=torch.float64)
    for x, y in data.test_batches():
        with autocast():
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        best = logits.topk(min(5, logits.shape[1]), dim=1).indices
        top5 += (best == y[:, None]).any(1).sum()
    data.world.sum(loss_sum, correct, top5)
    n = data.num_test
    return {
        "test_loss": loss_sum.item() / n,
        "test_acc": correct.item() / n,
        "test_top5": top5.item() / n,
    }


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
    data: Data | ImageNetData,
    *,
    resume: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train one optimizer; returns the per-epoch metrics (also written to ``run_dir``).

    Under ``torchrun`` every rank calls this; rank 0 alone writes files and logs. The
    learning rate is set before every step; with ``config.ema_decay`` the weight average is
    updated after every step and evaluated at each epoch's end next to the weights.
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
            f"batch_size {config.batch_size} is larger than the {data.num_train} training images"
        )
    last_step = run_steps(config, steps)
    epochs = math.ceil(last_step / steps)
    torch.manual_seed(config.seed)
    model = build_model(config.model, data.in_channels, data.num_classes).to(device)
    if data.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = build_optimizer(model, spec, config, steps)
    ema = WeightAverage(model, config.ema_decay) if config.ema_decay else None
    metrics: list[dict[str, Any]] = []
    start_epoch = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if ema is not None:
            ema.load_state_dict(checkpoint["ema"])
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
    for epoch in range(start_epoch, epochs):
        torch.manual_seed(_seed(config.seed, epoch, 3))  # dropout and other model randomness
        model.train()
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        correct = torch.zeros((), device=device, dtype=torch.float64)
        seen = torch.zeros((), device=device, dtype=torch.float64)
        epoch_steps = min(steps, last_step - epoch * steps)
        bar = Progress(epoch_steps, f"{spec.label} {epoch + 1}/{epochs}", show)
        started = time.perf_counter()
        for step, (x, y, share) in zip(range(epoch_steps), data.train_batches(epoch)):
            lr = spec.lr_at(epoch * steps + step, steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast():
                logits = forward(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            (loss * share if share != 1 else loss).backward()
            optimizer.step()
            if ema is not None:
                ema.update()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            postfix = None
            if bar.enabled and (step % 20 == 0 or step == epoch_steps - 1):
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
        test = evaluate(model, data, autocast)
        ema_test = dict.fromkeys(("ema_test_loss", "ema_test_acc", "ema_test_top5"))
        if ema is not None:
            if world.active:  # batch-norm statistics differ between ranks: keep rank 0's
                for averaged in ema.model.buffers():
                    torch.distributed.broadcast(averaged, 0)
            ema_test = {f"ema_{k}": v for k, v in evaluate(ema.model, data, autocast).items()}
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
                "step": epoch * steps + epoch_steps,
                "train_loss": loss_sum.item() / n,
                "train_acc": correct.item() / n,
                **test,
                **ema_test,
                "lr": lr,
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
            if ema is not None:
                state["ema"] = ema.state_dict()
            buffer = io.BytesIO()
            torch.save(state, buffer)
            atomic_write(checkpoint_path, buffer.getvalue())
            atomic_write(run_dir / METRICS, "".join(json.dumps(m) + "\n" for m in metrics))
            m = metrics[-1]
            log(
                f"[{spec.label}] epoch {epoch + 1}/{epochs}  train loss "
                f"{m['train_loss']:.4f}  acc {m['train_acc']:.4f}  test loss "
                f"{m['test_loss']:.4f}  acc {m['test_acc']:.4f}  top-5 {m['test_top5']:.4f}  "
                + (f"EMA acc {m['ema_test_acc']:.4f}  " if ema is not None else "")
                + f"rho {_format(rho)}  T {_format(temperature, '.3g')}  "
                f"{seconds:.1f}s  {n / seconds:.0f} img/s"
            )
    return metrics
