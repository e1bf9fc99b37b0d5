"""What defines a run: :class:`RunConfig` (data, model, training length, outputs) and one
:class:`OptimizerSpec` per optimizer to train.

Both are plain dataclasses that presets fill in and ``config.json`` records. Each field's
``metadata`` carries its command-line help, so :mod:`.cli` builds one flag per field and the
flags cannot drift from the settings (fields with ``flag=False`` have none).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from coolmomentum.errors import UsageError
from coolmomentum.schedules import SCHEDULES

from .datasets import DATASETS as IN_MEMORY_DATASETS
from .models import MODEL_INITS, MODELS

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "IMAGENET",
    "LR_SCHEDULES",
    "NORMALIZATIONS",
    "OPTIMIZERS",
    "SCHEDULE_FREE",
    "WEIGHT_DECAY_PARAMS",
    "ConfigError",
    "OptimizerSpec",
    "RunConfig",
    "run_steps",
]

IMAGENET = "imagenet"  # streamed from an ImageFolder tree; the others sit in memory
DATASETS = (*IN_MEMORY_DATASETS, IMAGENET)
OPTIMIZERS = (
    "coolmomentum",
    "sgd",
    "adam",
    "adamw",
    "sgd-schedulefree",
    "adamw-schedulefree",
    "rmsprop-tf",
)
SCHEDULE_FREE = ("sgd-schedulefree", "adamw-schedulefree")
# Batches over which a schedule-free run's batch-norm statistics are recomputed at the
# averaged weights before each evaluation (the schedulefree README's recipe).
SCHEDULE_FREE_BN_BATCHES = 50
LR_SCHEDULES = ("constant", "cosine", "wsd")
WEIGHT_DECAY_PARAMS = ("all", "conv", "no-batchnorm")
AUGMENTATIONS = ("none", "shift-flip", "crop-flip")
NORMALIZATIONS = ("channel", "pixel-mean")
# Settings that may differ between a run and its resumption: where things are, not what.
NOT_IDENTITY = (
    "data_dir",
    "device",
    "out",
    "workers",
    "checkpoint_every",
    "checkpoint_every_minutes",
)
NONFINITE = ("stop", "skip")


class ConfigError(UsageError, ValueError):
    """A configuration or checkpoint that cannot be used, with what to do instead."""


def setting(default: Any = None, help: str = "", *, flag: bool = True, **extra: Any) -> Any:
    """A dataclass field with its command-line help (``flag=False``: no flag).

    ``extra`` goes to the metadata too: ``choices``, ``metavar``, ``parse`` (a function from
    the flag's text to the value).
    """
    metadata = {"help": help, "flag": flag, **extra}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def parse_lr_decay(text: str) -> list[list[float]]:
    """``"80:0.1,120:0.01"`` as ``[[80.0, 0.1], [120.0, 0.01]]``."""
    try:
        pairs = [item.split(":") for item in text.split(",") if item]
        return [[float(e), float(f)] for e, f in pairs]
    except ValueError:
        raise ValueError(
            f"expected EPOCH:FACTOR[,EPOCH:FACTOR...], e.g. 80:0.1,120:0.01; got {text!r}"
        ) from None


def parse_floats(text: str) -> list[float]:
    """``"0.5,0.25,0.125"`` as ``[0.5, 0.25, 0.125]``."""
    try:
        return [float(x) for x in text.split(",") if x]
    except ValueError:
        raise ValueError(
            f"expected comma-separated numbers, e.g. 0.49,0.48,0.45; got {text!r}"
        ) from None


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass
class OptimizerSpec:
    """One optimizer of a run and its hyperparameters.

    The learning rate is set before every step (:func:`.optimizers.lr_at`): a linear warm-up
    from 0 over ``lr_warmup_steps``, then ``lr`` times the ``lr_schedule`` (``cosine``: half a
    cosine from 1 after the warm-up to 0 at the end of the run; ``wsd``, warm-up, stable,
    decay: 1, then linearly to 0 over the last ``lr_decay_fraction`` of the run, and
    CoolMomentum's cooling ends where that decay starts) times ``lr_decay_factor **
    floor(step / lr_decay_every_steps)`` (a staircase counted from step 0) times the step
    decay ``lr_decay``, given as ``[[epoch, factor], ...]``: from that (0-based) epoch on the
    factor applies. The schedule-free optimizers take no schedule: ``lr_warmup_steps`` is
    their own ``warmup_steps``.
    """

    optimizer: str = setting("coolmomentum", flag=False)
    label: str = setting("", flag=False)
    lr: float = setting(0.01, "learning rate (CoolMomentum: the step dt^2)")
    rho_0: float = setting(0.99, "CoolMomentum's initial momentum coefficient")
    schedule: str = setting("exponential", "CoolMomentum's cooling schedule", choices=SCHEDULES)
    total_steps: int | None = setting(
        None, "CoolMomentum's cooling steps (default: every step after the hot phase)"
    )
    hot_epochs: float = setting(0.0, "CoolMomentum: epochs held at rho_0 before cooling")
    momentum_warmup_steps: int = setting(
        0, "CoolMomentum: rho = 0 for the global steps before this one, then the schedule"
    )
    momentum: float = setting(
        0.9, "momentum of SGD, TF RMSProp and schedule-free SGD (its interpolation beta)"
    )
    nesterov: bool = setting(False, "SGD: Nesterov momentum")
    lr_schedule: str = setting(
        "constant",
        "learning-rate schedule: constant; cosine decay to 0 at the end; wsd: constant, then "
        "linear to 0 over the last --lr-decay-fraction of the run (CoolMomentum cools first)",
        choices=LR_SCHEDULES,
    )
    lr_decay_fraction: float = setting(0.2, "wsd: the final fraction of the run that decays")
    weight_decay: float = setting(0.0, "L2 penalty added to the gradient")
    lr_decay: list[list[float]] = setting(
        [], "step decay of the learning rate", metavar="EPOCH:FACTOR,...", parse=parse_lr_decay
    )
    lr_warmup_steps: int = setting(0, "linear learning-rate warm-up from 0 over these steps")
    lr_decay_factor: float = setting(
        1.0, "staircase factor applied every --lr-decay-every-steps steps"
    )
    lr_decay_every_steps: float = setting(0.0, "steps between staircase decays (0: none)")
    rms_decay: float = setting(0.9, "TF RMSProp's decay of the mean square")
    eps: float = setting(1e-3, "TF RMSProp's epsilon (inside the square root)")

    def __post_init__(self) -> None:
        _check(
            self.optimizer in OPTIMIZERS,
            f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}",
        )
        if not self.label:
            self.label = self.optimizer
        _check(
            self.label.replace("-", "").replace("_", "").replace(".", "").isalnum(),
            f"label {self.label!r} names a directory: use letters, digits, '-', '_', '.'",
        )
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        for name in ("hot_epochs", "lr_warmup_steps", "lr_decay_every_steps", "weight_decay"):
            _check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        _check(self.lr_decay_factor > 0, f"lr_decay_factor must be > 0, got {self.lr_decay_factor}")
        _check(
            not self.momentum_warmup_steps or self.optimizer == "coolmomentum",
            f"momentum_warmup_steps is CoolMomentum's; run {self.label!r} uses "
            f"{self.optimizer}: leave it at 0",
        )
        _check(
            self.lr_schedule in LR_SCHEDULES,
            f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}",
        )
        _check(
            0 < self.lr_decay_fraction < 1,
            f"lr_decay_fraction must be in (0, 1), e.g. 0.2, got {self.lr_decay_fraction}",
        )
        _check(
            self.optimizer not in SCHEDULE_FREE
            or (self.lr_schedule == "constant" and not self.lr_decay and self.lr_decay_factor == 1),
            f"run {self.label!r}: {self.optimizer} needs no learning-rate schedule (it is "
            f"schedule-free): leave lr_schedule constant and lr_decay empty; its warm-up is "
            f"lr_warmup_steps",
        )
        _check(
            self.optimizer != "sgd-schedulefree" or 0 < self.momentum < 1,
            f"run {self.label!r}: sgd-schedulefree needs 0 < momentum < 1, got {self.momentum}",
        )
        self.lr_decay = [[float(e), float(f)] for e, f in self.lr_decay]


@dataclass
class RunConfig:
    """Everything that defines a run; ``runs`` lists the optimizers to train, one after another.

    A run lasts ``epochs`` epochs, or stops after ``max_steps`` global optimizer steps when
    that comes first (a recipe counted in steps). It is evaluated at the end of every epoch,
    or every ``eval_every_steps`` steps and at its end. ``ema_decay`` keeps an average of the
    weights (:class:`.weight_average.WeightAverage`) and evaluates it too. ``image_size`` and
    ``workers`` (DataLoader processes per rank) apply to ``imagenet``, whose
    ``eval_batch_size`` is the global evaluation batch; the other datasets' is per process.
    """

    dataset: str = setting("fashion-mnist", "the dataset", choices=DATASETS)
    model: str = setting("convnet", "the network", choices=MODELS)
    model_init: str = setting(
        "he-normal",
        "weight initialization of the ResNets and the convnet: he-normal (Keras, the "
        "authors' ResNet-20) or pytorch (torch's layer defaults, the authors' ResNet-34)",
        choices=MODEL_INITS,
    )
    epochs: int = setting(4, "training epochs")
    batch_size: int = setting(64, "the global batch (split over torchrun's ranks)")
    seed: int = setting(0, "seed of the initial weights, the data order and the augmentation")
    runs: list[OptimizerSpec] = field(
        default_factory=lambda: [OptimizerSpec()], metadata={"flag": False}
    )
    preset: str | None = setting(None, flag=False)
    description: str = setting("", flag=False)
    data_dir: str | None = setting(
        None,
        "where the dataset files are (else $COOLMOMENTUM_DATA, then "
        "/usr/share/datasets/fashion-mnist for Fashion-MNIST); for imagenet the folder "
        "holding train/ and val/",
    )
    device: str = setting("auto", "auto (CUDA when present), cpu, cuda, cuda:1, ...")
    out: str = setting("runs/demo", "output directory (default runs/<preset>)")
    train_subset: int | None = setting(None, "train on the first N images only")
    test_subset: int | None = setting(None, "evaluate on the first N images only")
    validation: int | None = setting(
        None,
        "hold out the last N training images and evaluate on them instead of the test set "
        "(for tuning; the test set is then not read)",
    )
    final_train_loss: bool = setting(
        False,
        "at the last evaluation, also measure loss and accuracy over the whole training set "
        "(evaluation mode, no augmentation)",
    )
    recompute_batch_norm: int | None = setting(
        None,
        "before every evaluation, recompute batch norm's running statistics at the evaluated "
        "weights over N training batches, whatever the optimizer (schedule-free optimizers "
        f"always do, over {SCHEDULE_FREE_BN_BATCHES} by default); training is not changed",
    )
    sample_every_steps: int = setting(
        25, "record lr, rho and the temperature every N steps within each evaluation's record"
    )
    drop_last: bool = setting(True, "drop the last incomplete batch of every epoch")
    augment: str = setting("none", "augmentation of the training images", choices=AUGMENTATIONS)
    normalize: str = setting(
        "channel",
        "normalization: per-channel mean and std, or subtracting the mean image",
        choices=NORMALIZATIONS,
    )
    mean: list[float] | None = setting(
        None, "per-channel mean in units of 1/255 (default: measured)", parse=parse_floats
    )
    std: list[float] | None = setting(
        None, "per-channel std in units of 1/255 (default: measured)", parse=parse_floats
    )
    weight_decay_params: str = setting(
        "all",
        "which parameters weight decay applies to",
        choices=WEIGHT_DECAY_PARAMS,
    )
    label_smoothing: float = setting(0.0, "label smoothing of the cross-entropy loss")
    eval_batch_size: int = setting(1000, "evaluation batch")
    eval_every_steps: int | None = setting(
        None, "evaluate every N global steps and at the end (default: every epoch)"
    )
    checkpoint_every: int | None = setting(
        None, "also write a checkpoint every N global steps (mid-epoch; resumes bit for bit)"
    )
    checkpoint_every_minutes: float | None = setting(
        None, "also write a checkpoint every M minutes (decided on rank 0 under torchrun)"
    )
    on_nonfinite: str = setting(
        "stop",
        "a training loss that is not finite: stop the run with an error (the last checkpoint "
        "is kept), or skip the step (it does not advance the cooling schedule)",
        choices=NONFINITE,
    )
    compile: bool = setting(False, "torch.compile the model")
    max_steps: int | None = setting(None, "stop after this many optimizer steps (if first)")
    ema_decay: float | None = setting(
        None, "also evaluate an exponential moving average of the weights, e.g. 0.9999"
    )
    image_size: int = setting(224, "imagenet: the side of the input images")
    workers: int = setting(8, "imagenet: JPEG-decoding processes per rank")

    def __post_init__(self) -> None:
        # Presets give the runs as dicts.
        self.runs = [r if isinstance(r, OptimizerSpec) else OptimizerSpec(**r) for r in self.runs]
        labels = [r.label for r in self.runs]
        _check(
            len(set(labels)) == len(labels),
            f"run labels must differ, got {labels}; set 'label' per run",
        )
        for name in ("epochs", "batch_size", "image_size", "eval_batch_size", "sample_every_steps"):
            _positive_int(name, getattr(self, name))
        for name in (
            "max_steps",
            "eval_every_steps",
            "train_subset",
            "test_subset",
            "validation",
            "checkpoint_every",
            "recompute_batch_norm",
        ):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        _check(
            self.workers >= 0,
            f"workers must be >= 0 (0 loads in the main process), got {self.workers}",
        )
        _check(
            self.ema_decay is None or 0 < self.ema_decay < 1,
            f"ema_decay must be in (0, 1), e.g. 0.9999, got {self.ema_decay}",
        )
        _check(
            self.checkpoint_every_minutes is None or self.checkpoint_every_minutes > 0,
            f"checkpoint_every_minutes must be > 0, got {self.checkpoint_every_minutes}",
        )
        _check(
            0 <= self.label_smoothing < 1,
            f"label_smoothing must be in [0, 1), e.g. 0.1, got {self.label_smoothing}",
        )
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            _check(
                choices is None or value in choices,
                f"{f.name} must be one of {', '.join(choices or ())}, got {value!r}",
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def for_run(self, spec: OptimizerSpec) -> dict[str, Any]:
        """The configuration of one run as saved with it: shared settings plus its optimizer."""
        d = self.to_dict()
        d["runs"] = [dataclasses.asdict(spec)]
        return d


def _positive_int(name: str, value: Any) -> None:
    _check(
        isinstance(value, int) and not isinstance(value, bool) and value >= 1,
        f"{name} must be a positive integer, got {value!r}",
    )


def run_steps(config: RunConfig, steps_per_epoch: int) -> int:
    """The global optimizer steps of a run: its epochs, or ``max_steps`` if fewer."""
    steps = config.epochs * steps_per_epoch
    return steps if config.max_steps is None else min(steps, config.max_steps)
