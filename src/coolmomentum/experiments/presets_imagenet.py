"""The paper's ImageNet run (EfficientNet-B0 with CoolMomentum) and its RMSProp baseline, as data.

Sources, cited below by their short names:

[authors] The authors' public code, github.com/borbysh/coolmomentum: ``README.md`` (section
    "Benchmarking Coolmomentum on Imagenet with Efficientnet-B0"), ``main_cool.py`` and
    ``utils_cool.py``, a modification of the TensorFlow TPU EfficientNet code. The README's
    command is ``python3 main_cool.py --model_name='efficientnet-b0' --skip_host_call=true
    --train_batch_size=2048 --train_steps=218948`` (TPU, data and model flags omitted).
[tpu] The TensorFlow TPU EfficientNet reference, github.com/tensorflow/tpu,
    ``models/official/efficientnet/main.py`` (flags), ``utils.py`` (``build_learning_rate``,
    ``build_optimizer``), ``efficientnet_builder.py`` / ``efficientnet_model.py`` (network),
    ``preprocessing.py`` (crop and flip), at the versions contemporary with [authors].
[paper-en] Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
    Networks", ICML 2019 (arXiv 1905.11946), Section 5.2 and Table 2.
[paper-cm] Borysenko & Byshkin, "CoolMomentum: a method for stochastic optimization by
    Langevin dynamics with simulated annealing", Sci. Rep. 11, 10705 (2021).

Common to both presets (all from [tpu], unchanged by [authors]): 1,281,167 training images;
224x224 inputs; no AutoAugment (``autoaugment_name`` defaults to None in [authors]); training
crop = ``sample_distorted_bounding_box`` (area 0.08-1, aspect 3/4-4/3, 10 attempts, else the
evaluation crop) resized bicubically, plus a random horizontal flip; evaluation crop = the
centre 0.875 of the shorter side, resized to 224; batch norm with TF momentum 0.99 and eps
1e-3; dropout 0.2 before the classifier and drop-connect 0.2 (``efficientnet_builder``
defaults for B0); the loss ``softmax_cross_entropy(label_smoothing=0.1)`` plus
``weight_decay * sum(tf.nn.l2_loss(v))`` = ``1e-5 * sum(v**2) / 2`` over every trainable
variable whose name lacks ``batch_normalization`` (so conv kernels, squeeze-excitation biases
and the classifier's weight and bias are decayed, batch-norm scales and shifts are not): an L2
gradient ``1e-5 * v`` that goes through the optimizer; an exponential moving average of the
trainable variables and the batch-norm moving statistics, ``tf.train.ExponentialMovingAverage(
decay=0.9999, num_updates=global_step)``, i.e. decay ``min(0.9999, (1 + k) / (10 + k))`` after
optimizer step ``k`` (counted from 1), and evaluation with the averaged variables; evaluation
every 6255 steps (``steps_per_eval``) in batches of 1024 over ``50000 // 1024 = 48`` batches,
i.e. the first 49,152 validation images (the harness should evaluate all 50,000).

Batch norm statistics are per replica in [tpu] for up to 8 TPU cores (no cross-replica
reduction), so a 2048 batch on 8 cores normalizes over 256 images; 8 GPUs with 256 images
each and plain (not synchronized) batch norm reproduce that. Which TPU the authors used is
not stated in [authors]; the Cloud TPU tutorial they link uses a v3-8.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "EFFICIENTNET_B0_RMSPROP",
    "IMAGENET_PRESETS",
    "NUM_TRAIN_IMAGES",
    "PAPER_EFFICIENTNET_B0",
    "CoolMomentumRecipe",
    "ImageNetPreset",
    "RMSPropRecipe",
    "Target",
]

NUM_TRAIN_IMAGES = 1_281_167  # [tpu] flag num_train_images


@dataclass(frozen=True)
class CoolMomentumRecipe:
    """CoolMomentum as in [authors] ``utils_cool.build_optimizer`` / ``build_learning_rate``.

    ``lr`` is the integration step ``dt**2`` and stays constant: no learning-rate schedule and
    no learning-rate warm-up (``build_learning_rate(..., lr_decay_type='cool',
    warmup_epochs=0)``), and it is not scaled with the batch (``main_cool.py`` comments out
    ``* (train_batch_size / 256)``).

    Momentum warm-up (``build_optimizer(..., warmup_epochs=5)``), exactly: with
    ``W = int(5 * NUM_TRAIN_IMAGES / batch) = int(3127.85) = 3127`` and the global step ``k``
    counted from 0,

    - ``k < W``: ``rho_k = 0``, so the step is plain SGD with ``lr * (1 + 0) / 2 = 0.3``;
    - ``k >= W``: ``rho_k = max(0, 1 - (1 - rho_0) / alpha**k)`` with
      ``alpha = (1 - rho_0)**(1 / cooling_steps)``, the paper's exponential schedule at the
      *global* step: cooling is not delayed by the warm-up, so momentum jumps from 0 to
      ``rho_3127 = 1 - 0.01**(1 - 3127/218948) = 0.98932`` and reaches 0 at the last step.

    In this library that is ``CoolMomentum(lr=0.6, rho_0=0.99, total_steps=218948,
    schedule=f)`` with the callable ``f(k) = 0 if k < 3127 else exponential(k)``.

    One difference of form remains: [authors] feed ``rho_k`` and ``lr * (1 + rho_k) / 2`` to
    ``tf.train.MomentumOptimizer`` (``a = rho_k * a + g``; ``x -= lr_k * a``), which rescales
    the carried velocity by ``(1 + rho_k) / (1 + rho_{k-1})`` whenever ``rho`` changes; this
    library integrates ``v = rho_k * v - lr * (1 + rho_k) / 2 * g``. The two agree at
    constant ``rho``; they differ at the warm-up's jump (one step) and, during cooling, by a
    relative ``(1 - rho) * ln(100) / 218948 / (1 + rho)`` (at most about 2e-5) per step.
    """

    lr: float = 0.6  # [authors] main_cool.py flag base_learning_rate
    rho_0: float = 0.99  # [authors] main_cool.py flag momentum (and build_optimizer default)
    cooling_steps: int = 218_948  # [authors] total_steps=FLAGS.train_steps: cool over all steps
    schedule: str = "exponential"  # [authors] decay_type='cool': paper Eq. (20)
    momentum_warmup_steps: int = 3127  # [authors] warmup_epochs=5: int(5 * 1281167 / 2048)


@dataclass(frozen=True)
class RMSPropRecipe:
    """RMSProp as in [tpu] ``utils.build_optimizer`` / ``build_learning_rate`` defaults.

    TF1 ``tf.train.RMSPropOptimizer(lr, decay, momentum, epsilon)``::

        ms  = decay * ms + (1 - decay) * g**2          (ms starts at 1.0, not 0)
        mom = momentum * mom + lr * g / sqrt(ms + epsilon)
        x  -= mom

    ``epsilon`` sits inside the square root and ``lr`` inside the momentum buffer, unlike
    ``torch.optim.RMSprop`` (``eps`` outside the root, ``square_avg`` starting at 0, ``lr``
    applied after the buffer); a faithful baseline needs the TF form.

    Learning rate at global step ``k`` (from 0): ``peak_lr * k / W`` for ``k < W`` with
    ``W = int(5 * NUM_TRAIN_IMAGES / batch)``, then
    ``peak_lr * 0.97 ** floor(k / (2.4 * NUM_TRAIN_IMAGES / batch))`` (staircase, counted from
    step 0, not from the end of the warm-up).
    """

    lr_per_256: float = 0.016  # [tpu] flag base_learning_rate ("when train batch size is 256")
    decay: float = 0.9  # [tpu] build_optimizer default; [paper-en] "decay 0.9"
    momentum: float = 0.9  # [tpu] build_optimizer default; [paper-en] "momentum 0.9"
    epsilon: float = 1e-3  # [tpu] build_optimizer default, inside the square root
    lr_warmup_epochs: float = 5.0  # [tpu] build_learning_rate warmup_epochs
    lr_decay_factor: float = 0.97  # [tpu] decay_factor; [paper-en] "decays by 0.97"
    lr_decay_epochs: float = 2.4  # [tpu] decay_epochs; [paper-en] "every 2.4 epochs"


@dataclass(frozen=True)
class Target:
    """Accuracy on the ILSVRC-2012 validation set to compare a finished run with."""

    top1: float | None  # percent; None where no number could be verified
    top5: float | None
    source: str


@dataclass(frozen=True)
class ImageNetPreset:
    """Everything that defines one ImageNet run; the training code reads it, never the reverse.

    ``batch_size`` is global: each of ``world_size`` processes loads ``batch_size //
    world_size`` images per step.
    """

    name: str
    description: str
    optimizer: CoolMomentumRecipe | RMSPropRecipe
    target: Target
    model: str = "efficientnet-b0"
    image_size: int = 224  # [tpu] efficientnet_params('efficientnet-b0') resolution
    batch_size: int = 2048  # [authors] README --train_batch_size=2048; [tpu] default
    train_steps: int = 218_948  # [authors] README --train_steps=218948 (350.0 epochs)
    weight_decay: float = 1e-5  # [tpu]/[authors] flag weight_decay; L2 in the loss
    weight_decay_batchnorm: bool = False  # batch-norm scales and shifts are not decayed
    label_smoothing: float = 0.1  # [tpu]/[authors] flag label_smoothing
    ema_decay: float = 0.9999  # [tpu]/[authors] flag moving_average_decay
    eval_every_steps: int = 6255  # [tpu]/[authors] flag steps_per_eval (~10 epochs)
    eval_batch_size: int = 1024  # [authors] flag eval_batch_size

    @property
    def steps_per_epoch(self) -> float:
        return NUM_TRAIN_IMAGES / self.batch_size

    @property
    def epochs(self) -> float:
        return self.train_steps / self.steps_per_epoch


PAPER_EFFICIENTNET_B0 = ImageNetPreset(
    name="paper-efficientnet-b0-imagenet",
    description=(
        "EfficientNet-B0 on ImageNet with CoolMomentum, as the authors ran it on a TPU: "
        "global batch 2048, 218,948 steps (350 epochs), dt^2 = 0.6, rho_0 = 0.99 cooled "
        "exponentially over all steps after 5 epochs at rho = 0, weight decay 1e-5, label "
        "smoothing 0.1, evaluation with an EMA (0.9999) of the weights"
    ),
    optimizer=CoolMomentumRecipe(),
    target=Target(
        top1=None,
        top5=None,
        source=(
            "not verified: [paper-cm] and the authors' README (Figure_2.png, 'Top "
            "accuracies') compare top-1/top-5 of CoolMomentum and the original RMSProp code "
            "as plots; no number could be read from a text source, so none is stated here"
        ),
    ),
)

EFFICIENTNET_B0_RMSPROP = ImageNetPreset(
    name="efficientnet-b0-imagenet-rmsprop",
    description=(
        "EfficientNet-B0 on ImageNet with the original recipe's RMSProp (the TF TPU script's "
        "defaults): global batch 2048, 0.016 per 256 images (peak 0.128) after a 5-epoch "
        "linear warm-up, x0.97 every 2.4 epochs, decay 0.9, momentum 0.9, epsilon 1e-3, "
        "218,949 steps (350 epochs), weight decay 1e-5, label smoothing 0.1, EMA 0.9999"
    ),
    optimizer=RMSPropRecipe(),
    # [tpu] main.py default. [paper-en] states an initial learning rate of 0.256, which is
    # 0.016 per 256 images at batch 4096.
    batch_size=2048,
    train_steps=218_949,  # [tpu] flag train_steps default
    target=Target(
        top1=76.3,
        top5=93.2,
        source=(
            "[paper-en] Table 2 (EfficientNet-B0: 76.3% / 93.2%, 5.3M parameters); the paper "
            "trained with AutoAugment (and, by its learning rate 0.256, batch 4096), which this "
            "preset omits, so expect a somewhat lower result"
        ),
    ),
)

IMAGENET_PRESETS: dict[str, ImageNetPreset] = {
    preset.name: preset for preset in (PAPER_EFFICIENTNET_B0, EFFICIENTNET_B0_RMSPROP)
}
