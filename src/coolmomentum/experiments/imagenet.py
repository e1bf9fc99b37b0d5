"""ImageNet (ILSVRC-2012) from the standard ImageFolder layout, decoded with Pillow.

Layout::

    root/train/<wnid>/*.JPEG      1,281,167 images in 1000 class folders
    root/val/<wnid>/*.JPEG        50,000 images, sorted into the same class folders

The classes are the sorted names of the ``train/`` folders, for both splits. Images are
decoded in :class:`torch.utils.data.DataLoader` worker processes and leave them as ``uint8``
batches, ``(N, 3, H, W)`` in channels-last memory; :func:`normalize_imagenet` turns them into
normalized floats on the device.

Training transform: an Inception-style random-resized crop (area ``U(0.08, 1)`` of the image,
aspect ratio log-uniform in ``[3/4, 4/3]``, 10 attempts, else the largest centred crop of an
admissible aspect ratio) resized to ``image_size``, then a horizontal flip with probability
1/2. Evaluation transform: the shorter side resized to ``image_size / 0.875`` (256 for 224)
and the centre ``image_size`` square kept, computed as one resampling of the centre region.
Resampling is bicubic, as in the TF EfficientNet preprocessing.

Each sample's randomness comes from its own generator seeded with ``(seed, epoch, index)``,
so a batch is the same whatever the number of workers, and the epoch travels with the index
through the sampler, so persistent workers never see a stale epoch.

Problems with the files raise :class:`DatasetNotFoundError` (a ``FileNotFoundError``: no
root, no split folder) or :class:`CorruptDatasetError` (a ``ValueError``: no class folders, an
empty class, a ``val/`` class that ``train/`` lacks, an undecodable image), both the harness's
:class:`DatasetError`; the message names the folder or file.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import cast

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from .datasets import CorruptDatasetError, DatasetError, DatasetNotFoundError

__all__ = [
    "CROP_FRACTION",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "CorruptDatasetError",
    "DatasetError",
    "DatasetNotFoundError",
    "ImageFolder",
    "ShardedSampler",
    "center_crop_box",
    "collate_uint8",
    "find_classes",
    "make_loader",
    "normalize_imagenet",
    "random_resized_crop_box",
    "set_epoch",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Evaluation keeps the centre 87.5% of the shorter side (224 of 256).
CROP_FRACTION = 0.875
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
SPLITS = ("train", "val")

_LAYOUT = "expected root/train/<class>/*.JPEG and root/val/<class>/*.JPEG"

Box = tuple[float, float, float, float]  # left, top, right, bottom, in source pixels


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _split_dir(root: str | os.PathLike[str], split: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"ImageNet root {str(root)!r} is not a directory; {_LAYOUT}")
    path = root / split
    if not path.is_dir():
        raise DatasetNotFoundError(f"{str(root)!r} has no {split}/ folder; {_LAYOUT}")
    return path


def find_classes(root: str | os.PathLike[str]) -> list[str]:
    """The sorted class-folder names of ``root/train``: class ``i`` is ``classes[i]``."""
    train = _split_dir(root, "train")
    classes = sorted(e.name for e in os.scandir(train) if e.is_dir() and e.name[0] != ".")
    if not classes:
        _raise_no_classes(train)
    return classes


def _raise_no_classes(split_dir: Path) -> None:
    if any(_is_image(e.name) for e in os.scandir(split_dir) if e.is_file()):
        raise CorruptDatasetError(
            f"{str(split_dir)!r} holds images directly but no class folders; sort them into "
            "<class>/ folders (the ImageNet validation images ship unsorted)"
        )
    raise CorruptDatasetError(f"{str(split_dir)!r} has no class folders; {_LAYOUT}")


def _scan(
    root: str | os.PathLike[str], split: str, classes: Sequence[str]
) -> list[tuple[str, int]]:
    split_dir = _split_dir(root, split)
    names = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and e.name[0] != ".")
    if not names:
        _raise_no_classes(split_dir)
    label_of = {name: label for label, name in enumerate(classes)}
    unknown = [name for name in names if name not in label_of]
    if unknown:
        raise CorruptDatasetError(
            f"{split}/ has class folders that train/ lacks: {unknown[:5]}"
            + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        )
    samples: list[tuple[str, int]] = []
    empty: list[str] = []
    for name in names:
        folder = split_dir / name
        files = sorted(e.name for e in os.scandir(folder) if e.is_file() and _is_image(e.name))
        if not files:
            empty.append(name)
        samples.extend((str(folder / f), label_of[name]) for f in files)
    if not samples:
        raise CorruptDatasetError(
            f"{str(split_dir)!r} holds no images (files ending in {', '.join(IMAGE_EXTENSIONS)})"
        )
    if empty:
        raise CorruptDatasetError(
            f"class folder {str(split_dir / empty[0])!r} holds no images"
            + (f" (and {len(empty) - 1} more empty class folders)" if len(empty) > 1 else "")
        )
    return samples


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> Box:
    """An Inception-style crop: ``scale`` of the area, log-uniform aspect ``w/h`` in ``ratio``.

    After ``attempts`` draws that do not fit in the image, the largest centred crop whose
    aspect ratio lies in ``ratio`` (the whole image when its own ratio does).
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return (left, top, left + w, top + h)
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return (left, top, left + w, top + h)


def center_crop_box(width: int, height: int, crop_fraction: float = CROP_FRACTION) -> Box:
    """The centred square of side ``crop_fraction * min(width, height)``.

    Resizing it to ``image_size`` equals resizing the shorter side to
    ``image_size / crop_fraction`` and cropping the centre ``image_size`` square.
    """
    side = crop_fraction * min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


class ImageFolder(Dataset[tuple[Tensor, int]]):
    """One split of an ImageFolder tree, yielding ``(uint8 (3, S, S) image, label)``.

    Index it with ``(epoch, index)`` (what :class:`ShardedSampler` yields) or a plain
    ``index`` (epoch 0). With ``train=True`` the random crop and flip of a sample are fixed
    by ``(seed, epoch, index)``; with ``train=False`` the transform is deterministic.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        *,
        train: bool,
        seed: int = 0,
        image_size: int = 224,
        classes: Sequence[str] | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.root = Path(root)
        self.split = split
        self.train = train
        self.seed = seed
        self.image_size = image_size
        self.classes = list(classes) if classes is not None else find_classes(root)
        self.samples = _scan(root, split, self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        return self.load(index, epoch)

    def load(self, index: int, epoch: int = 0) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as file:
                image = self._transform(file, index, epoch)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise CorruptDatasetError(f"cannot read image {path!r}: {exc}") from exc
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
        return pixels.permute(2, 0, 1), label

    def _transform(self, file: Image.Image, index: int, epoch: int) -> Image.Image:
        image = file.convert("RGB")
        size = (self.image_size, self.image_size)
        if not self.train:
            box = center_crop_box(image.width, image.height)
            return image.resize(size, Image.Resampling.BICUBIC, box=box)
        rng = np.random.default_rng((self.seed, epoch, index))
        box = random_resized_crop_box(image.width, image.height, rng)
        image = image.resize(size, Image.Resampling.BICUBIC, box=box)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image


class ShardedSampler(DistributedSampler):
    """This rank's share of the indices, yielded as ``(epoch, index)``.

    Training (``shuffle=True``): :class:`DistributedSampler`'s permutation, seeded with
    ``seed + epoch``, cut to a multiple of ``world_size`` so that every rank runs the same
    number of steps. Evaluation (``shuffle=False``): indices ``rank, rank + world_size, ...``
    without padding, so the shards cover every sample exactly once (their sizes may differ
    by one). Needs no initialized process group. Call :meth:`set_epoch` before each epoch;
    ``skip`` leaves out the first samples of this rank's share (an epoch resumed mid-way).
    """

    def __init__(
        self, dataset: ImageFolder, *, rank: int, world_size: int, shuffle: bool, seed: int = 0
    ) -> None:
        super().__init__(
            dataset,
            num_replicas=world_size,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=shuffle,
        )
        self.size = len(dataset)
        self.skip = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        if self.shuffle:
            indices: Iterator[int] = super().__iter__()
        else:
            indices = iter(range(self.rank, self.size, self.num_replicas))
        return ((epoch, index) for index in itertools.islice(indices, self.skip, None))

    def __len__(self) -> int:
        if self.shuffle:
            return max(0, self.num_samples - self.skip)
        return max(0, len(range(self.rank, self.size, self.num_replicas)) - self.skip)


def collate_uint8(batch: Sequence[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    """Stack ``(3, H, W)`` images into ``(N, 3, H, W)`` channels-last ``uint8``; labels int64."""
    images = torch.stack([image.permute(1, 2, 0) for image, _ in batch]).permute(0, 3, 1, 2)
    labels = torch.tensor([label for _, label in batch], dtype=torch.int64)
    return images, labels


def make_loader(
    root: str | os.PathLike[str],
    split: str,
    batch_size: int,
    *,
    train: bool,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 8,
    seed: int = 0,
    image_size: int = 224,
    pin_memory: bool | None = None,
    multiprocessing_context: str | None = None,
) -> DataLoader:
    """A loader of this rank's ``(uint8 images, int64 labels)`` batches of ``split``.

    ``batch_size`` is per process (the global batch divided by ``world_size``). With
    ``train=True`` the data is shuffled, augmented and the last incomplete batch dropped;
    otherwise every sample of the split is seen once across the ranks, in order. The loader's
    sampler is a :class:`ShardedSampler`: call ``set_epoch(loader, epoch)`` (or
    ``loader.sampler.set_epoch(epoch)``) before each epoch. ``pin_memory`` defaults to
    whether CUDA is available; ``multiprocessing_context`` (e.g. ``"forkserver"``) starts the
    workers otherwise than by ``fork``, for processes that must not fork (JAX loaded, say).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be non-negative, got {workers}")
    dataset = ImageFolder(root, split, train=train, seed=seed, image_size=image_size)
    sampler = ShardedSampler(dataset, rank=rank, world_size=world_size, shuffle=train, seed=seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_uint8,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=train,
        persistent_workers=workers > 0,
        multiprocessing_context=multiprocessing_context if workers > 0 else None,
    )


def set_epoch(loader: DataLoader, epoch: int, start_batch: int = 0) -> None:
    """Select the shuffle and the augmentation of ``epoch`` for a :func:`make_loader` loader,
    starting at its batch ``start_batch``."""
    if not isinstance(loader.sampler, ShardedSampler):
        raise TypeError("set_epoch expects a loader made by make_loader")
    if epoch < 0 or start_batch < 0:
        raise ValueError(f"epoch and start_batch must be non-negative, got {epoch}, {start_batch}")
    loader.sampler.set_epoch(epoch)
    loader.sampler.skip = start_batch * cast(int, loader.batch_size)


def normalize_imagenet(x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(x - 255 * mean) / (255 * std)`` per channel for ``uint8`` ``(..., 3, H, W)`` images.

    Computed in float32 on ``x``'s device and returned as ``dtype``; the memory format
    (channels-last or not) of ``x`` is kept.
    """
    if x.dim() < 3 or x.shape[-3] != 3:
        raise ValueError(f"expected images of shape (..., 3, H, W), got {tuple(x.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).mul_(255).view(3, 1, 1)
    inv_std = torch.tensor(IMAGENET_STD, device=x.device).mul_(255).reciprocal_().view(3, 1, 1)
    return (x.float() - mean).mul_(inv_std).to(dtype)
