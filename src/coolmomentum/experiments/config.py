"""What defines a run: :class:`RunConfig` (data, model, training length, outputs) and one
:class:`~.optimizers.OptimizerSpec` per optimizer to train.

Both are plain dataclasses that presets fill in and ``config.json`` records. Each field's
``metadata`` carries its command-line help (:func:`.settings.setting`), so :mod:`.cli` builds
one flag per field and the flags cannot drift from the settings (fields with ``flag=False``
have none).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .datasets import DATASETS as IN_MEMORY_DATASETS
from .models import MODEL_INITS, MODELS
from .optimizers import SCHEDULE_FREE_BN_BATCHES, OptimizerSpec
from .settings import ConfigError, check, parse_floats, setting

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "IMAGENET",
    "NORMALIZATIONS",
    "WEIGHT_DECAY_PARAMS",
    "ConfigError",
    "RunConfig",
]

IMAGENET = "imagenet"  # streamed from an ImageFolder tree; the others sit in memory
DATASETS = (*IN_MEMORY_DATASETS, IMAGENET)
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
        None,
        "per-channel mean of the pixels scaled to [0, 1] (pixel / 255), e.g. "
        "0.4914,0.4822,0.4465 (default: measured)",
        parse=parse_floats,
    )
    std: list[float] | None = setting(
        None,
        "per-channel standard deviation of the pixels scaled to [0, 1] (default: measured)",
        parse=parse_floats,
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
        # Presets give the runs as flat settings.
        self.runs = [
            r if isinstance(r, OptimizerSpec) else OptimizerSpec.from_settings(r) for r in self.runs
        ]
        labels = [r.label for r in self.runs]
        check(
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
        check(
            self.workers >= 0,
            f"workers must be >= 0 (0 loads in the main process), got {self.workers}",
        )
        check(
            self.ema_decay is None or 0 < self.ema_decay < 1,
            f"ema_decay must be in (0, 1), e.g. 0.9999, got {self.ema_decay}",
        )
        check(
            self.checkpoint_every_minutes is None or self.checkpoint_every_minutes > 0,
            f"checkpoint_every_minutes must be > 0, got {self.checkpoint_every_minutes}",
        )
        check(
            0 <= self.label_smoothing < 1,
            f"label_smoothing must be in [0, 1), e.g. 0.1, got {self.label_smoothing}",
        )
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            check(
                choices is None or value in choices,
                f"{f.name} must be one of {', '.join(choices or ())}, got {value!r}",
            )

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data, each run's as its flat settings."""
        return {**dataclasses.asdict(self), "runs": [r.settings() for r in self.runs]}

    def for_run(self, spec: OptimizerSpec) -> dict[str, Any]:
        """The configuration of one run as saved with it: shared settings plus its optimizer."""
        return {**self.to_dict(), "runs": [spec.settings()]}

    def total_steps(self, steps_per_epoch: int) -> int:
        """The global optimizer steps of a run: its epochs, or ``max_steps`` if fewer."""
        steps = self.epochs * steps_per_epoch
        return steps if self.max_steps is None else min(steps, self.max_steps)


def _positive_int(name: str, value: Any) -> None:
    check(
        isinstance(value, int) and not isinstance(value, bool) and value >= 1,
        f"{name} must be a positive integer, got {value!r}",
    )
