"""Named experiment setups: the authors' runs and a Fashion-MNIST demo.

A preset is plain data: the run settings and the optimizers to compare. Every value of the
``paper-*`` presets comes from the authors' public scripts (repository borbysh/coolmomentum):

- ``resnet_cool200.py`` / ``resnet_adam200.py`` / ``resnet_sgd200.py``: the Keras CIFAR-10
  ResNet example (``keras/examples/cifar10_resnet.py``) with ResNet-20 v1, batch 32, 200
  epochs, ``subtract_pixel_mean``, ``width/height_shift_range=0.1`` with ``fill_mode="nearest"``
  and horizontal flips, ``kernel_regularizer=l2(1e-4)`` on every convolution (not the dense
  layer), steps per epoch ``50000 // 32 = 1562``; CoolMomentum ``learning_rate=0.01,
  rho_0=0.99, alpha=(1 - rho_0)**(1/(200 * 1562))``; Adam ``1e-3`` and SGD ``0.01`` with
  momentum 0.9 under the example's ``lr_schedule``: x0.1 after epoch 80, x0.01 after 120,
  x0.001 after 160, x0.0005 after 180.
- ``train_cifar10.py`` + ``optimizers/__init__.py``: ResNet-34 on CIFAR-10, batch 128 (the
  last partial batch kept: 391 steps per epoch), 200 epochs, random crop with 4 pixels of
  padding and horizontal flips, normalization by mean (0.4914, 0.4822, 0.4465) and std
  (0.2023, 0.1994, 0.2010); CoolMomentum ``lr=0.01, momentum(rho_0)=0.99,
  weight_decay=5e-4, beta=(1 - 0.99)**(1/(200 * 391))``, i.e. cooling over 78,200 steps.
  ``models/resnet_cifar10.py`` builds the network with PyTorch's default layer
  initialization (no init code), so the preset uses ``model_init="pytorch"``.
- ``README.md`` line 113 ("Comparison of the linear and exponential cooling schedules"),
  ``optimizers/cool_lin.py`` and ``optimizers/coolmomentum.py``, and the figure
  ``lin_vs_exp.png``: linear-temperature and "exponential" cooling compared on the ResNet-34
  setup when the run stays hot at ``rho_0`` and cools only over its last 50 or 100 epochs.
  The README links its exponential arm to ``optimizers/coolmomentum.py``, whose rule (line
  23, ``beta = ((1 - rho_0)/(1 + rho_0))**(1/cool_steps)``, and line 60, ``rho = (1 - c /
  beta**k) / (1 + c / beta**k)`` with ``c = (1 - rho_0)/(1 + rho_0)``) is the
  ``exponential-temperature`` schedule, not the paper's Eq. 20; the linear arm
  (``cool_lin.py`` line 61) is ``linear-temperature``. The public scripts do not show how
  the hot phase was held; here it is ``hot_steps``.

The demo, ``fashion-mnist-demo``, is the optimizer study's convnet at its 3-epoch budget
(``benchmarks/study``: 1,404 steps at batch 128), each optimizer at the setting the study
tuned for it there on a validation split (``benchmarks/results/study.md``).

The ImageNet presets ``paper-efficientnet-b0-imagenet`` and
``efficientnet-b0-imagenet-rmsprop`` are generated from the recipes of
:mod:`.presets_imagenet`, which cite their sources; :func:`imagenet_preset` translates one.

Keras' ``l2(1e-4)`` adds ``1e-4 * sum(w**2)`` to the loss, whose gradient is ``2e-4 * w``:
the ResNet-20 preset therefore uses ``weight_decay=2e-4`` on convolution kernels only.
"""

from __future__ import annotations

import math
from typing import Any

from .optimizers import SCHEDULE_FREE_BN_BATCHES
from .presets_imagenet import (
    IMAGENET_PRESETS,
    NUM_TRAIN_IMAGES,
    CoolMomentumRecipe,
    ImageNetPreset,
)

__all__ = ["PRESETS", "imagenet_preset"]

_KERAS_LR_DECAY = [[81, 0.1], [121, 0.01], [161, 0.001], [181, 0.0005]]

_RESNET34_CIFAR10: dict[str, Any] = {
    "dataset": "cifar10",
    "model": "resnet34",
    "epochs": 200,
    "batch_size": 128,
    "drop_last": False,
    "augment": "crop-flip",
    "normalize": "channel",
    "mean": [0.4914, 0.4822, 0.4465],
    "std": [0.2023, 0.1994, 0.2010],
    "eval_batch_size": 100,
    "model_init": "pytorch",
}


def imagenet_preset(preset: ImageNetPreset) -> dict[str, Any]:
    """The harness settings of an ImageNet recipe.

    The run stops after exactly ``train_steps`` global steps (``max_steps``; its last epoch is
    partial). Step counts that the TF code derives from epochs use its fractional epoch of
    ``NUM_TRAIN_IMAGES / batch_size`` steps, not the harness's whole batches per epoch.
    What the recipes fix and the harness always does: RMSProp's mean square starting at 1
    (:class:`.optimizers.TFRMSprop`), the EMA's ``num_updates`` form and evaluating the EMA
    beside the weights (:class:`.weight_average.WeightAverage`), random-resized crops and
    flips (:mod:`.imagenet`), and EfficientNet-B0's dropout and drop-connect of 0.2
    (:mod:`.efficientnet`).
    """
    tf_epoch = preset.steps_per_epoch
    recipe = preset.optimizer
    run: dict[str, Any]
    if isinstance(recipe, CoolMomentumRecipe):
        run = {
            "optimizer": "coolmomentum",
            "lr": recipe.lr,
            "rho_0": recipe.rho_0,
            "schedule": recipe.schedule,
            "total_steps": recipe.cooling_steps,
            "momentum_warmup_steps": recipe.momentum_warmup_steps,
        }
    else:
        run = {
            "optimizer": "rmsprop-tf",
            "lr": recipe.lr_per_256 * preset.batch_size / 256,
            "momentum": recipe.momentum,
            "rms_decay": recipe.decay,
            "eps": recipe.epsilon,
            "lr_warmup_steps": int(recipe.lr_warmup_epochs * tf_epoch),
            "lr_decay_factor": recipe.lr_decay_factor,
            "lr_decay_every_steps": recipe.lr_decay_epochs * tf_epoch,
        }
    target = preset.target
    if target.top1 is None:
        expected = f"Expected accuracy: {target.source}."
    else:
        expected = f"Expected top-1 {target.top1} %, top-5 {target.top5} % ({target.source})."
    return {
        "description": f"{preset.description}. {expected}",
        "dataset": "imagenet",
        "model": preset.model,
        "epochs": math.ceil(preset.train_steps / (NUM_TRAIN_IMAGES // preset.batch_size)),
        "max_steps": preset.train_steps,
        "batch_size": preset.batch_size,
        "image_size": preset.image_size,
        "weight_decay_params": "all" if preset.weight_decay_batchnorm else "no-batchnorm",
        "label_smoothing": preset.label_smoothing,
        "ema_decay": preset.ema_decay,
        "eval_batch_size": preset.eval_batch_size,
        "eval_every_steps": preset.eval_every_steps,
        "runs": [{**run, "weight_decay": preset.weight_decay}],
    }


PRESETS: dict[str, dict[str, Any]] = {
    "fashion-mnist-demo": {
        "description": (
            "The default demo: the optimizer study's convnet (94 k parameters) on the 60,000 "
            "Fashion-MNIST training images for 3 epochs at batch 128, each optimizer at the "
            "setting the study tuned for that budget on a validation split: CoolMomentum "
            "cooling from rho 0.9 along cosine-temperature with a constant learning rate, SGD "
            "(momentum 0.9) with a cosine decay to 0 and schedule-free AdamW; and CoolMomentum "
            "at the paper's settings (lr 0.01, rho 0.99, Eq. 20). About 6 minutes for all four "
            "on 2 CPU cores."
        ),
        "dataset": "fashion-mnist",
        "model": "convnet",
        "epochs": 3,
        "batch_size": 128,
        "augment": "none",
        "normalize": "channel",
        "recompute_batch_norm": SCHEDULE_FREE_BN_BATCHES,
        "runs": [
            {
                "optimizer": "coolmomentum",
                "lr": 0.64,
                "rho_0": 0.9,
                "schedule": "cosine-temperature",
                "weight_decay": 5e-4,
            },
            {
                "optimizer": "sgd",
                "lr": 0.4,
                "momentum": 0.9,
                "lr_schedule": "cosine",
                "weight_decay": 5e-4,
            },
            {
                "optimizer": "adamw-schedulefree",
                "lr": 0.032,
                "lr_warmup_steps": 70,
                "weight_decay": 0.05,
            },
            {
                "optimizer": "coolmomentum",
                "label": "coolmomentum-paper",
                "lr": 0.01,
                "rho_0": 0.99,
                "schedule": "exponential",
            },
        ],
    },
    "paper-resnet20-cifar10": {
        "description": (
            "The authors' Keras ResNet-20 v1 CIFAR-10 comparison (paper Fig. 1), with their "
            "baselines: Adam and SGD under the Keras example's step decay."
        ),
        "dataset": "cifar10",
        "model": "resnet20",
        "epochs": 200,
        "batch_size": 32,
        "drop_last": True,
        "augment": "shift-flip",
        "normalize": "pixel-mean",
        "weight_decay_params": "conv",
        "runs": [
            {
                "optimizer": "coolmomentum",
                "lr": 0.01,
                "rho_0": 0.99,
                "schedule": "exponential",
                "weight_decay": 2e-4,
            },
            {"optimizer": "adam", "lr": 1e-3, "weight_decay": 2e-4, "lr_decay": _KERAS_LR_DECAY},
            {
                "optimizer": "sgd",
                "lr": 0.01,
                "momentum": 0.9,
                "weight_decay": 2e-4,
                "lr_decay": _KERAS_LR_DECAY,
            },
        ],
    },
    "paper-resnet34-cifar10": {
        "description": (
            "The authors' PyTorch ResNet-34 CIFAR-10 run (their README and train_cifar10.py; "
            "not a figure of the paper)."
        ),
        **_RESNET34_CIFAR10,
        "runs": [
            {
                "optimizer": "coolmomentum",
                "lr": 0.01,
                "rho_0": 0.99,
                "schedule": "exponential",
                "weight_decay": 5e-4,
                "total_steps": 78200,
            },
        ],
    },
    "cooling-lin-vs-exp": {
        "description": (
            "Linear-temperature vs exponential-temperature cooling (the authors' cool_lin.py and "
            "coolmomentum.py) on the ResNet-34 setup, hot for 150 or 100 epochs, cooling over "
            "the last 50 or 100."
        ),
        **_RESNET34_CIFAR10,
        "runs": [
            {
                "optimizer": "coolmomentum",
                "label": f"{schedule}-last{cool}",
                "schedule": schedule,
                "lr": 0.01,
                "rho_0": 0.99,
                "weight_decay": 5e-4,
                "hot_epochs": 200 - cool,
            }
            for cool in (50, 100)
            for schedule in ("exponential-temperature", "linear-temperature")
        ],
    },
    **{name: imagenet_preset(preset) for name, preset in IMAGENET_PRESETS.items()},
}
