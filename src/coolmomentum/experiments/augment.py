"""Normalization and augmentation of uint8 image batches ``(N, C, H, W)``, as tensor ops.

Every operation works on a whole batch at once on the batch's device, with one random draw
per image from an explicit ``torch.Generator`` (on the same device), so a run is reproducible
from its seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "channel_stats",
    "normalize",
    "pixel_mean",
    "random_crop",
    "random_flip",
    "random_shift",
    "translate",
]

Fill = Literal["zero", "nearest"]



def _moments(x: Tensor, dims: tuple[int, ...], chunk: int = 8192) -> tuple[Tensor, Tensor]:
    """Mean of ``x / 255`` and of its square over ``dims`` (which include 0), in float64,
    a chunk of images at a time so that no float copy of the whole set is made."""
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    total_sq = total
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].to(torch.float64) / 255
        total = total + part.sum(dims)
        total_sq = total_sq + part.square().sum(dims)
    count = math.prod(x.shape[d] for d in dims)
    return total / count, total_sq / count


def channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation ``(C,)`` of uint8 images, in units of 1/255."""
    mean, mean_sq = _moments(x, (0, 2, 3))
    return mean.float(), (mean_sq - mean.square()).clamp_min(0).sqrt().float()


def pixel_mean(x: Tensor) -> Tensor:
    """The mean image ``(C, H, W)`` of uint8 images, in units of 1/255: subtracting it is the
    Keras CIFAR-10 ResNet example's ``subtract_pixel_mean``."""
    return _moments(x, (0,))[0].float()


def normalize(x: Tensor, mean: Tensor | Sequence[float], std: Tensor | Sequence[float] | None = None
              ) -> Tensor:
    """``(x / 255 - mean) / std`` as float32 for uint8 images ``(N, C, H, W)``.

    ``mean`` is per channel ``(C,)`` (:func:`channel_stats`) or per pixel ``(C, H, W)``
    (:func:`pixel_mean`); ``std`` likewise, or ``None`` to only subtract the mean (the Keras
    ResNet example's pixel-mean mode).
    """
    def as_image(stat: Tensor | Sequence[float]) -> Tensor:
        stat = torch.as_tensor(stat, dtype=torch.float32, device=x.device)
        return stat[:, None, None] if stat.ndim == 1 else stat

    out = x.float().div_(255).sub_(as_image(mean))
    return out if std is None else out.div_(as_image(std))


# --- augmentation ----------------------------------------------------------------------------

def translate(x: Tensor, dy: Tensor, dx: Tensor, fill: Fill = "zero") -> Tensor:
    """Shift each image ``x[i]`` (``(N, C, H, W)``) down by ``dy[i]`` and right by ``dx[i]``
    pixels (negative: up, left): ``out[i, :, r, c] = x[i, :, r - dy[i], c - dx[i]]``.

    Pixels shifted in from outside are 0 with ``fill="zero"`` (in the input's units: black for
    uint8 images, the mean for normalized ones) or copies of the nearest edge pixel with
    ``fill="nearest"``. Two gathers over the whole batch; no loop over images.
    """
    if fill not in ("zero", "nearest"):
        raise ValueError(f"fill must be 'zero' or 'nearest', not {fill!r}")
    n, channels, height, width = x.shape
    rows = torch.arange(height, device=x.device) - dy.to(x.device)[:, None]  # (N, H)
    cols = torch.arange(width, device=x.device) - dx.to(x.device)[:, None]  # (N, W)
    shape = (n, channels, height, width)
    out = x.gather(2, rows.clamp(0, height - 1)[:, None, :, None].expand(shape))
    out = out.gather(3, cols.clamp(0, width - 1)[:, None, None, :].expand(shape))
    if fill == "nearest":
        return out
    inside = ((rows >= 0) & (rows < height))[:, None, :, None] & (
        (cols >= 0) & (cols < width)
    )[:, None, None, :]
    return out * inside.to(out.dtype)


def random_shift(
    x: Tensor, max_shift: int, generator: torch.Generator | None = None, fill: Fill = "nearest"
) -> Tensor:
    """Shift each image by its own random whole-pixel offset, uniform in
    ``[-max_shift, max_shift]`` along each axis, filling as :func:`translate` does.

    Keras' ``width_shift_range=0.1, height_shift_range=0.1, fill_mode="nearest"`` (the authors'
    CIFAR-10 setting) is ``max_shift=3`` for 32x32 images with the default ``fill="nearest"``;
    Keras draws real-valued offsets and interpolates, this draws integers.
    """
    n = len(x)
    offsets = torch.randint(-max_shift, max_shift + 1, (2, n), generator=generator, device=x.device)
    return translate(x, offsets[0], offsets[1], fill)


def random_crop(x: Tensor, padding: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """Pad each image with ``padding`` zeros on every side and crop a random window of the
    original size: the usual CIFAR augmentation, a zero-filled :func:`random_shift`."""
    return random_shift(x, padding, generator, fill="zero")


def random_flip(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(len(x), generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)
