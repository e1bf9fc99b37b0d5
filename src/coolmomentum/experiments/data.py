"""The data a training run reads: batches on the device, for this rank, reproducible from
the seed.

:class:`TrainingData` is what the loop needs; :class:`InMemoryData` (Fashion-MNIST, CIFAR,
synthetic: the whole dataset on the device as uint8, augmented there) and
:class:`ImageNetData` (JPEGs decoded in DataLoader workers) provide it. Every random draw
comes from a seed derived from ``(run seed, purpose, epoch, step)`` (:func:`derived_seed`),
so an epoch can start at any step and a resumed run sees the batches an uninterrupted one
would.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import math
from collections.abc import Iterator
from typing import Protocol

import torch
from torch import Tensor

from . import augment, imagenet
from .config import IMAGENET, ConfigError, RunConfig
from .datasets import load_dataset
from .distributed import World

__all__ = [
    "CROP_PADDING",
    "SHIFT_FRACTION",
    "ImageNetData",
    "InMemoryData",
    "Stream",
    "TrainingData",
    "derived_seed",
    "load_data",
]

# ``shift-flip``: shifts of up to this fraction of the side (Keras' width/height_shift_range
# of the authors' ResNet-20 run). ``crop-flip``: zero padding of the random crop (CIFAR's).
SHIFT_FRACTION = 0.1
CROP_PADDING = 4


class Stream(enum.IntEnum):
    """What a derived seed is for: each purpose draws from its own stream."""

    ORDER = 1  # the permutation of the training set, per epoch
    AUGMENT = 2  # the augmentation of one batch
    MODEL = 3  # the model's own randomness (dropout, drop-connect) in one step


def derived_seed(seed: int, stream: Stream, epoch: int, step: int = 0) -> int:
    """A reproducible 63-bit seed, distinct for every ``(seed, stream, epoch, step)``."""
    key = f"{seed}/{int(stream)}/{epoch}/{step}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def rank_batch(config: RunConfig, world: World) -> int:
    """This rank's part of the global batch."""
    if config.batch_size % world.size:
        raise ConfigError(
            f"--batch-size {config.batch_size} is the global batch, split over {world.size} "
            f"ranks: it must be divisible by the world size"
        )
    return config.batch_size // world.size


class TrainingData(Protocol):
    """What the training loop reads from a dataset.

    ``eval_name`` names the evaluation set: ``"test"``, or ``"val"`` when it is held out of
    the training images (``RunConfig.validation``); ``num_eval`` is its size.
    """

    world: World
    device: torch.device
    channels_last: bool
    num_train: int
    num_eval: int
    eval_name: str
    in_channels: int
    num_classes: int
    image_size: int

    def steps_per_epoch(self) -> int: ...

    def train_batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor, float]]:
        """This rank's ``(images, labels, share)`` of global batches ``start``, ``start + 1``,
        ... of ``epoch``; ``share`` weights the rank's mean loss so that the ranks' average
        gradient is the global batch's."""
        ...

    def eval_batches(self, training_set: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's shard of the evaluation set (or of the training set, unaugmented), in
        order, in batches."""
        ...


class InMemoryData:
    """A dataset held on the device as uint8, normalized and augmented there in batches.

    With ``config.validation = N`` the last ``N`` training images are the evaluation set
    (``ds.test_x``) and the test set is not kept; ``train_subset`` then takes the first images
    of the rest, ``test_subset`` the first of the evaluation set.
    """

    def __init__(self, config: RunConfig, device: torch.device, world: World | None = None) -> None:
        world = world or World()
        rank_batch(config, world)
        ds = load_dataset(config.dataset, config.data_dir)
        self.eval_name = "test"
        if config.validation:
            if config.validation >= len(ds.train_x):
                raise ConfigError(
                    f"--validation {config.validation} leaves no training images of the "
                    f"{len(ds.train_x)}"
                )
            cut = len(ds.train_x) - config.validation
            ds = dataclasses.replace(
                ds,
                train_x=ds.train_x[:cut],
                train_y=ds.train_y[:cut],
                test_x=ds.train_x[cut:],
                test_y=ds.train_y[cut:],
            )
            self.eval_name = "val"
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
        self.num_train, self.num_eval = len(ds.train_x), len(ds.test_x)
        self.in_channels, self.num_classes = ds.in_channels, ds.num_classes
        self.image_size = ds.image_size
        self.device = device
        self.config = config
        self.world = world
        if config.normalize == "pixel-mean":
            self.mean: Tensor | list[float] = augment.pixel_mean(self.ds.train_x)
            self.std: Tensor | list[float] | None = None
        else:
            mean, std = augment.channel_stats(self.ds.train_x)
            self.mean = config.mean if config.mean is not None else mean
            self.std = config.std if config.std is not None else std
        self.channels_last = device.type == "cuda"

    def steps_per_epoch(self) -> int:
        n, b = self.num_train, self.config.batch_size
        return n // b if self.config.drop_last else math.ceil(n / b)

    def prepare(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment (when a ``generator`` is given) and normalize a uint8 batch."""
        aug = self.config.augment if generator is not None else "none"
        if aug == "shift-flip":
            shift = max(1, int(x.shape[-1] * SHIFT_FRACTION))
            x = augment.random_flip(augment.random_shift(x, shift, generator), generator)
        elif aug == "crop-flip":
            x = augment.random_flip(augment.random_crop(x, CROP_PADDING, generator), generator)
        x = augment.normalize(x, self.mean, self.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def train_batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor, float]]:
        """Every rank draws the same order and augmentation, so the global batches are those of
        a single process whatever the world size."""
        seed = self.config.seed
        order_gen = torch.Generator(self.device).manual_seed(
            derived_seed(seed, Stream.ORDER, epoch)
        )
        aug_gen = torch.Generator(self.device)
        x_all, y_all = self.ds.train_x, self.ds.train_y
        n, b = len(x_all), self.config.batch_size
        order = torch.randperm(n, generator=order_gen, device=self.device)
        for i in range(start, self.steps_per_epoch()):
            index = order[i * b : (i + 1) * b]
            aug_gen.manual_seed(derived_seed(seed, Stream.AUGMENT, epoch, i))
            x = self.prepare(x_all[index], aug_gen)
            mine = torch.tensor_split(torch.arange(len(index)), self.world.size)[self.world.rank]
            # Data parallelism averages the ranks' gradients; weighting each rank's mean loss
            # by its share keeps that the global batch's mean when the last batch splits unevenly.
            share = len(mine) * self.world.size / len(index)
            yield x[mine], y_all[index][mine], share

    def eval_batches(self, training_set: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        if training_set:
            x_all, y_all = self.ds.train_x, self.ds.train_y
        else:
            x_all, y_all = self.ds.test_x, self.ds.test_y
        mine = torch.tensor_split(torch.arange(len(x_all)), self.world.size)[self.world.rank]
        b = self.config.eval_batch_size
        for start in range(0, len(mine), b):
            index = mine[start : start + b].to(self.device)
            yield self.prepare(x_all[index]), y_all[index]


class ImageNetData:
    """ImageNet from an ImageFolder tree (:mod:`.imagenet`), too big to hold in memory.

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
        if config.train_subset or config.test_subset or config.validation:
            raise ConfigError(
                "--train-subset, --test-subset and --validation do not apply to imagenet"
            )
        if config.final_train_loss:
            raise ConfigError(
                "--final-train-loss does not apply to imagenet (a pass over 1.28 M images)"
            )
        self.eval_name = "test"
        common = dict(
            rank=world.rank,
            world_size=world.size,
            workers=config.workers,
            seed=config.seed,
            image_size=config.image_size,
            pin_memory=device.type == "cuda",
        )
        self.train_loader = imagenet.make_loader(
            config.data_dir,
            "train",
            rank_batch(config, world),
            train=True,
            **common,  # type: ignore[arg-type]
        )
        eval_batch = max(1, config.eval_batch_size // world.size)
        self.test_loader = imagenet.make_loader(
            config.data_dir,
            "val",
            eval_batch,
            train=False,
            **common,  # type: ignore[arg-type]
        )
        train_set: imagenet.ImageFolder = self.train_loader.dataset  # type: ignore[assignment]
        test_set: imagenet.ImageFolder = self.test_loader.dataset  # type: ignore[assignment]
        self.num_train, self.num_eval = len(train_set), len(test_set)
        self.in_channels, self.num_classes = 3, len(train_set.classes)
        self.image_size = config.image_size
        self.device = device
        self.channels_last = device.type == "cuda"

    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    def _on_device(self, x: Tensor) -> Tensor:
        x = imagenet.normalize_imagenet(x.to(self.device, non_blocking=True))
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    def train_batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor, float]]:
        imagenet.set_epoch(self.train_loader, epoch, start_batch=start)
        for x, y in self.train_loader:
            yield self._on_device(x), y.to(self.device, non_blocking=True), 1.0

    def eval_batches(self, training_set: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        if training_set:
            raise ConfigError("imagenet is not evaluated on its training set")
        for x, y in self.test_loader:
            yield self._on_device(x), y.to(self.device, non_blocking=True)


def load_data(config: RunConfig, device: torch.device, world: World) -> TrainingData:
    """The data of ``config.dataset`` for this rank."""
    cls = ImageNetData if config.dataset == IMAGENET else InMemoryData
    return cls(config, device, world)
