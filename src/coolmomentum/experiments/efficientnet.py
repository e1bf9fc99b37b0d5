"""EfficientNet-B0 (Tan & Le, 2019) in plain PyTorch, as in the TensorFlow TPU reference.

The network is a 3x3/2 stem convolution, seven stages of MBConv blocks (inverted residuals
with depthwise convolutions and squeeze-and-excitation), a 1x1 head convolution to 1280
channels, global average pooling, dropout and a linear classifier. For 1000 classes it has
5,288,548 parameters (the paper's 5.3 M).

Details follow ``efficientnet_model.py`` / ``efficientnet_builder.py`` of
``tensorflow/tpu/models/official/efficientnet``, the code both the EfficientNet recipe and
the CoolMomentum ImageNet run were trained with:

- batch norm with TF momentum 0.99 (``momentum=0.01`` in PyTorch) and ``eps=1e-3``;
- SiLU ("swish") after the stem, the expansion and the depthwise convolutions, and the head;
  the projection is linear;
- squeeze-and-excitation width ``max(1, int(0.25 * block input channels))``, with biases;
- stochastic depth ("drop connect") on the residual branch, per sample and only in training:
  block ``i`` of ``n`` drops with probability ``drop_connect * i / n`` (0 for the first
  block, ``0.2 * 15/16`` for the last of B0's 16 blocks);
- convolutions without bias, initialized ``normal(0, sqrt(2 / fan_out))`` with
  ``fan_out = kh * kw * out_channels / groups`` (so ``kh * kw`` for depthwise kernels, as TF
  counts them); the classifier ``uniform(-1/sqrt(out), 1/sqrt(out))``; all biases zero.

Padding is symmetric (``k // 2``) rather than TF's asymmetric ``SAME`` for stride 2, which
matters only for loading TF checkpoints, not for training from scratch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["B0_STAGES", "EfficientNet", "MBConv", "Stage", "drop_connect", "efficientnet_b0"]

# TF batch-norm momentum 0.99 weights the old running statistics; PyTorch's weights the new.
BN_MOMENTUM = 0.01
BN_EPS = 1e-3


class Stage(NamedTuple):
    """One stage of MBConv blocks; only the first block strides and changes the width."""

    expand_ratio: int
    kernel_size: int
    stride: int
    out_channels: int
    repeats: int


# EfficientNet-B0 (paper Table 1; ``_DEFAULT_BLOCKS_ARGS`` of the TF builder).
B0_STAGES = (
    Stage(1, 3, 1, 16, 1),
    Stage(6, 3, 2, 24, 2),
    Stage(6, 5, 2, 40, 2),
    Stage(6, 3, 2, 80, 3),
    Stage(6, 5, 1, 112, 3),
    Stage(6, 5, 2, 192, 4),
    Stage(6, 3, 1, 320, 1),
)


def drop_connect(x: Tensor, rate: float, training: bool) -> Tensor:
    """Zero whole samples of a residual branch with probability ``rate``; rescale the rest.

    An identity in evaluation mode or at ``rate == 0``. Expects ``(N, ...)`` input.
    """
    if not training or rate == 0.0:
        return x
    keep = 1.0 - rate
    mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
    return x * mask.bernoulli_(keep).div_(keep)


def _conv_bn_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    groups: int = 1,
    activation: bool = True,
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM),
    ]
    if activation:
        layers.append(nn.SiLU(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """Channel gates from globally pooled features: pool, reduce, SiLU, expand, sigmoid."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze_channels, 1)
        self.expand = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = self.expand(nn.functional.silu(self.reduce(scale)))
        return x * torch.sigmoid(scale)


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1x1 expand, depthwise kxk, squeeze-excite, 1x1 project.

    The residual connection (with drop connect) exists when the block keeps the resolution
    and the width.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
        se_ratio: float = 0.25,
        drop_connect_rate: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand = _conv_bn_act(in_channels, hidden, 1) if expand_ratio != 1 else nn.Identity()
        self.depthwise = _conv_bn_act(hidden, hidden, kernel_size, stride, groups=hidden)
        self.se = SqueezeExcitation(hidden, max(1, int(in_channels * se_ratio)))
        self.project = _conv_bn_act(hidden, out_channels, 1, activation=False)
        self.residual = stride == 1 and in_channels == out_channels
        self.drop_connect_rate = drop_connect_rate

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        if self.residual:
            out = drop_connect(out, self.drop_connect_rate, self.training) + x
        return out


class EfficientNet(nn.Module):
    """Stem, MBConv stages, 1x1 head, global average pooling, dropout, linear classifier.

    ``drop_connect`` is the largest stochastic-depth rate; block ``i`` of ``n`` uses
    ``drop_connect * i / n``.
    """

    def __init__(
        self,
        stages: tuple[Stage, ...] = B0_STAGES,
        num_classes: int = 1000,
        dropout: float = 0.2,
        drop_connect: float = 0.2,
        stem_channels: int = 32,
        head_channels: int = 1280,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        for name, rate in (("dropout", dropout), ("drop_connect", drop_connect)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {rate}")
        self.stem = _conv_bn_act(in_channels, stem_channels, 3, stride=2)
        num_blocks = sum(stage.repeats for stage in stages)
        blocks: list[nn.Module] = []
        in_channels = stem_channels
        for stage in stages:
            for repeat in range(stage.repeats):
                blocks.append(
                    MBConv(
                        in_channels,
                        stage.out_channels,
                        stage.kernel_size,
                        stage.stride if repeat == 0 else 1,
                        stage.expand_ratio,
                        drop_connect_rate=drop_connect * len(blocks) / num_blocks,
                    )
                )
                in_channels = stage.out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn_act(in_channels, head_channels, 1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(head_channels, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The TF reference initialization (see the module docstring)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                fan_out = kh * kw * module.out_channels // module.groups
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
            elif isinstance(module, nn.Linear):
                bound = 1.0 / math.sqrt(module.out_features)
                nn.init.uniform_(module.weight, -bound, bound)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled ``(N, head_channels)`` features before dropout and the classifier."""
        x = self.head(self.blocks(self.stem(x)))
        return x.mean((2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.forward_features(x)))


def efficientnet_b0(
    num_classes: int = 1000, dropout: float = 0.2, drop_connect: float = 0.2, in_channels: int = 3
) -> EfficientNet:
    """EfficientNet-B0 for 224x224 RGB inputs (any size of at least 32 works)."""
    return EfficientNet(B0_STAGES, num_classes, dropout, drop_connect, in_channels=in_channels)
