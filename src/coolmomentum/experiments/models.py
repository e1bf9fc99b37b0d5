"""The networks of the experiments, for ``(N, C, H, W)`` images of any channel count.

- ``resnet20`` .. ``resnet56``: the CIFAR ResNet v1 of He et al. 2016 (section 4.2): a 3x3
  conv, three stages of ``n`` basic blocks at 16, 32 and 64 channels (depth ``6n + 2``), global
  average pooling and a linear classifier. It matches the Keras ``resnet_v1`` of the Keras
  CIFAR-10 ResNet example, which the CoolMomentum authors trained: where a stage halves the
  resolution the shortcut is a strided 1x1 convolution (with a bias, no batch norm), elsewhere
  the identity; batch norm uses Keras' defaults (running averages with momentum 0.99, i.e.
  PyTorch's ``momentum=0.01``, and ``eps=1e-3``). The Keras model also gives every
  convolution a bias; those followed by batch norm are left out here, since batch norm's
  shift makes them redundant. Parameters:
  272,378 / 466,810 / 661,242 / 855,674 for depths 20 / 32 / 44 / 56 (He et al., Table 6:
  0.27 M / 0.46 M / 0.66 M / 0.85 M with parameter-free shortcuts).
- ``resnet34``: the ImageNet ResNet-34 ([3, 4, 6, 3] basic blocks at 64 .. 512 channels) as
  commonly adapted to 32x32 images: a 3x3 stride-1 stem and no max-pool, 1x1 conv + batch norm
  projection shortcuts. 21.3 M parameters.
- ``efficientnet-b0``: EfficientNet-B0 (:mod:`.efficientnet`), 5.3 M parameters for RGB
  images and 1000 classes, with its own TF-style initialization.
- ``lstm``: the image read row by row, a sequence of ``H`` steps of ``C * W`` pixels
  (sequential Fashion-MNIST: 28 steps of 28), through a 2-layer LSTM of 128 units; the last
  step's output feeds a linear classifier. 214 k parameters for 28x28 images; the LSTM keeps
  PyTorch's initialization (uniform in ``±1 / sqrt(128)``).
- ``mlp``: the image flattened, two hidden layers of 256 ReLU units and a linear classifier
  (784-256-256-10 for Fashion-MNIST: 269,322 parameters); no batch norm. The cheapest
  network here, for long runs.
- ``convnet``: three 3x3 conv + batch norm + ReLU layers (32, 64, 128 channels, 2x2 max-pool
  after the first two), global average pooling and a linear classifier: 94 k parameters, for
  Fashion-MNIST.

The other models' convolution and linear weights get He (Kaiming) normal initialization,
``std = sqrt(2 / fan_in)`` (He et al. 2015; Keras ``he_normal``), biases zero, batch norm
scale 1 and shift 0 (``init="he-normal"``, the Keras ResNet example's), or keep PyTorch's
layer defaults (``init="pytorch"``: Kaiming-uniform with ``a = sqrt(5)``, as the authors'
PyTorch ResNet-34 script leaves them).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .efficientnet import efficientnet_b0

__all__ = [
    "MLP",
    "MODELS",
    "MODEL_INITS",
    "BasicBlock",
    "ConvNet",
    "ResNet",
    "RowLSTM",
    "build_model",
]

MODELS = (
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet34",
    "convnet",
    "lstm",
    "mlp",
    "efficientnet-b0",
)
MODEL_INITS = ("he-normal", "pytorch")


def _conv_bn(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))`` with 3x3 convolutions.

    The shortcut is the identity when shapes agree, else a strided 1x1 convolution: with a
    bias and no batch norm (``shortcut_bn=False``, Keras ``resnet_v1``) or without a bias and
    followed by batch norm (``shortcut_bn=True``, the ImageNet ResNets' option B).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut_bn: bool):
        super().__init__()
        self.conv1 = _conv_bn(in_channels, out_channels, stride)
        self.conv2 = _conv_bn(out_channels, out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            projection = nn.Conv2d(in_channels, out_channels, 1, stride, bias=not shortcut_bn)
            self.shortcut = (
                nn.Sequential(projection, nn.BatchNorm2d(out_channels)) if shortcut_bn
                else projection
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        return F.relu(out + self.shortcut(x))


def he_normal_init(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class ResNet(nn.Module):
    """A 3x3 conv stem, stages of :class:`BasicBlock` (each stage after the first starts by
    halving the resolution), global average pooling and a linear classifier."""

    def __init__(
        self,
        blocks_per_stage: Sequence[int],
        widths: Sequence[int],
        in_channels: int,
        num_classes: int,
        shortcut_bn: bool,
    ):
        super().__init__()
        self.stem = _conv_bn(in_channels, widths[0])
        blocks: list[nn.Module] = []
        channels = widths[0]
        for stage, (num_blocks, width) in enumerate(zip(blocks_per_stage, widths, strict=True)):
            for block in range(num_blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(BasicBlock(channels, width, stride, shortcut_bn))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(F.relu(self.stem(x)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ConvNet(nn.Module):
    """Three conv + batch norm + ReLU layers, global average pooling, a linear classifier."""

    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int] = (32, 64, 128)):
        super().__init__()
        channels = [in_channels, *widths]
        self.convs = nn.ModuleList(_conv_bn(a, b) for a, b in itertools.pairwise(channels))
        self.head = nn.Linear(channels[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            if i < len(self.convs) - 1:
                x = F.max_pool2d(x, 2)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class MLP(nn.Module):
    """The flattened image through ReLU layers of the given widths, then a linear classifier."""

    def __init__(self, inputs: int, num_classes: int, widths: Sequence[int] = (256, 256)):
        super().__init__()
        sizes = [inputs, *widths]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.head = nn.Linear(sizes[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(x, 1)
        for layer in self.hidden:
            x = F.relu(layer(x))
        return self.head(x)


class RowLSTM(nn.Module):
    """An image as a sequence of its rows, through an LSTM; a linear classifier on the last
    step's output."""

    def __init__(
        self, row_size: int, num_classes: int, hidden_size: int = 128, num_layers: int = 2
    ) -> None:
        super().__init__()
        self.lstm = nn.LSTM(row_size, hidden_size, num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        n, channels, height, width = x.shape
        rows = x.permute(0, 2, 1, 3).reshape(n, height, channels * width)
        out, _ = self.lstm(rows)
        return self.head(out[:, -1])


def build_model(
    name: str,
    in_channels: int = 3,
    num_classes: int = 10,
    init: str = "he-normal",
    image_size: int = 32,
) -> nn.Module:
    """One of :data:`MODELS`, freshly initialized (``init``: one of :data:`MODEL_INITS`; the
    EfficientNet always has its own), for ``in_channels``-channel images (``image_size``
    pixels wide: the LSTM's row length depends on it)."""
    if init not in MODEL_INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(MODEL_INITS)}")
    if name == "efficientnet-b0":
        return efficientnet_b0(num_classes, in_channels=in_channels)
    if name == "lstm":
        lstm = RowLSTM(in_channels * image_size, num_classes)
        if init == "he-normal":
            he_normal_init(lstm.head)
        return lstm
    model: nn.Module
    if name == "convnet":
        model = ConvNet(in_channels, num_classes)
    elif name == "mlp":
        model = MLP(in_channels * image_size * image_size, num_classes)
    elif name == "resnet34":
        model = ResNet((3, 4, 6, 3), (64, 128, 256, 512), in_channels, num_classes, True)
    elif name in MODELS:
        n = (int(name.removeprefix("resnet")) - 2) // 6
        model = ResNet((n, n, n), (16, 32, 64), in_channels, num_classes, False)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):  # Keras defaults: momentum 0.99, epsilon 1e-3
                module.momentum, module.eps = 0.01, 1e-3
    else:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if init == "he-normal":
        he_normal_init(model)
    return model
