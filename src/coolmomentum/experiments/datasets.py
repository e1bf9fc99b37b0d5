"""Datasets read from their official files into uint8 tensors.

A :class:`Dataset` holds whole splits as tensors: images uint8 ``(N, C, H, W)``, labels int64
``(N,)``. Move it to the device once (``ds.to("cuda")``) and every later step -- shuffling,
augmentation, normalization, batching -- runs there, on the whole batch at once, with one
random draw per image from an explicit ``torch.Generator`` (which must live on the same device
as the data), so a run is reproducible from its seed.

Where the files are looked for (first folder holding any of the dataset's files wins):

- ``fashion-mnist``: the IDX files ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
  ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz`` in ``data_dir``,
  ``data_dir/fashion-mnist``, ``$COOLMOMENTUM_DATA``, ``$COOLMOMENTUM_DATA/fashion-mnist``, then
  ``/usr/share/datasets/fashion-mnist`` (Debian/Ubuntu: ``apt-get install dataset-fashion-mnist``).
- ``cifar10`` / ``cifar100``: the "CIFAR-10 python version" batches
  (``cifar-10-batches-py/data_batch_1`` .. ``_5``, ``test_batch``) and
  ``cifar-100-python/train``, ``test``, in ``data_dir`` or ``$COOLMOMENTUM_DATA`` (the folder
  the archive was unpacked into, or the unpacked folder itself).

The CIFAR batches are Python pickles, and unpickling can run arbitrary code. They are read
with an unpickler that only builds the numpy array and dtype the official files contain and
refuses any other global, so a tampered file fails to load instead of running code.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import pickle
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from coolmomentum.errors import UsageError

__all__ = [
    "DATASETS",
    "DATA_ENV",
    "CorruptDatasetError",
    "Dataset",
    "DatasetError",
    "DatasetNotFoundError",
    "load_dataset",
    "synthetic_dataset",
]

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "synthetic")
DATA_ENV = "COOLMOMENTUM_DATA"
SYSTEM_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")



class DatasetError(UsageError):
    """A dataset's files are missing or are not what they should be."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset's files are not where they are looked for."""


class CorruptDatasetError(DatasetError, ValueError):
    """A dataset file exists but does not hold what its format promises."""


@dataclass(frozen=True)
class Dataset:
    """Train and test splits as tensors: images uint8 ``(N, C, H, W)``, labels int64 ``(N,)``."""

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    in_channels: int
    image_size: int

    def to(self, device: torch.device | str) -> Dataset:
        """The same dataset with its tensors on ``device``."""
        return dataclasses.replace(
            self,
            train_x=self.train_x.to(device),
            train_y=self.train_y.to(device),
            test_x=self.test_x.to(device),
            test_y=self.test_y.to(device),
        )


def load_dataset(
    name: str, data_dir: str | os.PathLike[str] | None = None, **synthetic_options: Any
) -> Dataset:
    """Load ``"fashion-mnist"``, ``"cifar10"``, ``"cifar100"`` or ``"synthetic"`` on the CPU.

    ``synthetic_options`` are passed to :func:`synthetic_dataset` and only accepted for it.
    Raises :class:`DatasetNotFoundError` or :class:`CorruptDatasetError` (both
    :class:`DatasetError`) naming the file and how to obtain the data.
    """
    if name == "synthetic":
        return synthetic_dataset(**synthetic_options)
    if synthetic_options:
        raise TypeError(f"options {sorted(synthetic_options)} apply only to 'synthetic' data")
    if name == "fashion-mnist":
        return _load_fashion_mnist(data_dir)
    if name in _CIFAR:
        return _load_cifar(name, data_dir)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def _from_arrays(
    name: str, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
    num_classes: int,
) -> Dataset:
    train_x, train_y, test_x, test_y = (
        torch.from_numpy(np.require(a, requirements=("C", "W"))) for a in (*train, *test)
    )
    return Dataset(
        name, train_x, train_y.long(), test_x, test_y.long(), num_classes,
        in_channels=train_x.shape[1], image_size=train_x.shape[2],
    )


def _search_dirs(data_dir: str | os.PathLike[str] | None, subfolder: str) -> list[Path]:
    bases = [Path(data_dir)] if data_dir is not None else []
    if os.environ.get(DATA_ENV):
        bases.append(Path(os.environ[DATA_ENV]))
    return [folder for base in bases for folder in (base, base / subfolder)]


def _find_dir(dirs: Sequence[Path], files: Sequence[str], how_to_get: str) -> Path:
    for folder in dirs:
        if any((folder / file).is_file() for file in files):
            return folder
    searched = ", ".join(str(folder) for folder in dirs) or "nowhere (no data_dir given)"
    raise DatasetNotFoundError(f"{files[0]} not found; searched {searched}. {how_to_get}")


def _check_labels(
    path: Path, labels: np.ndarray, count: int, num_classes: int, how_to_get: str
) -> None:
    if len(labels) != count:
        raise CorruptDatasetError(f"{path}: {len(labels)} labels for {count} images. {how_to_get}")
    if count and (labels.min() < 0 or labels.max() >= num_classes):
        raise CorruptDatasetError(
            f"{path}: labels must lie in [0, {num_classes}), found {labels.min()}..{labels.max()}. "
            + how_to_get
        )


# --- Fashion-MNIST: IDX files ----------------------------------------------------------------

_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_FASHION_MNIST_HOW_TO_GET = (
    "Install the files with `apt-get install dataset-fashion-mnist` (into "
    f"{SYSTEM_FASHION_MNIST_DIR}), or download the four *-ubyte.gz files from "
    "https://github.com/zalandoresearch/fashion-mnist into data_dir or "
    f"${DATA_ENV}/fashion-mnist."
)
_IDX_IMAGES, _IDX_LABELS = 2051, 2049  # 0x0803: uint8, 3 dims; 0x0801: uint8, 1 dim


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file (big-endian magic ``0x0000TTNN``: type ``TT`` = 8 for uint8, ``NN`` dims)."""
    try:
        with gzip.open(path, "rb") as file:
            raw = file.read()
    except FileNotFoundError:
        raise DatasetNotFoundError(f"{path} not found. {_FASHION_MNIST_HOW_TO_GET}") from None
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise CorruptDatasetError(
            f"{path}: not a complete gzip file ({error}). {_FASHION_MNIST_HOW_TO_GET}"
        ) from error
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    found = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
    if found != magic or len(raw) < header:
        raise CorruptDatasetError(
            f"{path}: bad IDX magic number {found} (expected {magic}). {_FASHION_MNIST_HOW_TO_GET}"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != math.prod(shape):
        raise CorruptDatasetError(
            f"{path}: the header promises {shape} = {math.prod(shape)} bytes of data, the file "
            f"holds {len(raw) - header}. {_FASHION_MNIST_HOW_TO_GET}"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _load_fashion_mnist(data_dir: str | os.PathLike[str] | None) -> Dataset:
    files = [file for pair in _FASHION_MNIST_FILES.values() for file in pair]
    dirs = [*_search_dirs(data_dir, "fashion-mnist"), SYSTEM_FASHION_MNIST_DIR]
    folder = _find_dir(dirs, files, _FASHION_MNIST_HOW_TO_GET)
    splits = []
    for image_file, label_file in _FASHION_MNIST_FILES.values():
        images = _read_idx(folder / image_file, _IDX_IMAGES)
        labels = _read_idx(folder / label_file, _IDX_LABELS)
        _check_labels(folder / label_file, labels, len(images), 10, _FASHION_MNIST_HOW_TO_GET)
        splits.append((images[:, None], labels))
    return _from_arrays("fashion-mnist", splits[0], splits[1], num_classes=10)


# --- CIFAR-10/100: python pickle batches -----------------------------------------------------

@dataclass(frozen=True)
class _CifarLayout:
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    num_classes: int


_CIFAR = {
    "cifar10": _CifarLayout(
        "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
        b"labels", 10,
    ),
    "cifar100": _CifarLayout("cifar-100-python", ("train",), ("test",), b"fine_labels", 100),
}


def _cifar_how_to_get(layout: _CifarLayout) -> str:
    archive = layout.folder.replace("-batches-py", "-python") + ".tar.gz"
    return (
        f"Download the python version ({archive}) from https://www.cs.toronto.edu/~kriz/cifar.html "
        f"and unpack it into data_dir or ${DATA_ENV}, giving <that folder>/{layout.folder}/."
    )


_reconstruct = np.ndarray((0,)).__reduce__()[0]  # numpy's array-unpickling function
# Everything the official batches (pickled by Python 2 with numpy 1) need, under numpy 1 and 2
# module names: the dict, lists, ints and byte strings take no globals.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _CIFAR_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR batch holds only numpy arrays"
            ) from None


def _read_cifar_batch(path: Path, layout: _CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    how_to_get = _cifar_how_to_get(layout)
    try:
        with open(path, "rb") as file:
            batch = _CifarUnpickler(file, encoding="bytes").load()
    except FileNotFoundError:
        raise DatasetNotFoundError(f"{path} not found. {how_to_get}") from None
    except Exception as error:  # unpickling a damaged file can raise almost anything
        raise CorruptDatasetError(f"{path}: not a CIFAR batch ({error}). {how_to_get}") from error
    data = batch.get(b"data") if isinstance(batch, dict) else None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072):
        raise CorruptDatasetError(
            f"{path}: expected a dict with b'data' a uint8 array (N, 3072). {how_to_get}"
        )
    try:
        labels = np.asarray(batch.get(layout.label_key, []), dtype=np.int64)
    except (TypeError, ValueError):
        labels = np.zeros((0, 0), np.int64)  # reported below
    if labels.ndim != 1:
        raise CorruptDatasetError(
            f"{path}: {layout.label_key!r} is not a list of integers. {how_to_get}"
        )
    _check_labels(path, labels, len(data), layout.num_classes, how_to_get)
    return data.reshape(-1, 3, 32, 32), labels  # rows hold the red, green, blue 32x32 planes


def _load_cifar(name: str, data_dir: str | os.PathLike[str] | None) -> Dataset:
    layout = _CIFAR[name]
    files = (*layout.train_files, *layout.test_files)
    folder = _find_dir(_search_dirs(data_dir, layout.folder), files, _cifar_how_to_get(layout))
    train, test = (
        [_read_cifar_batch(folder / file, layout) for file in split]
        for split in (layout.train_files, layout.test_files)
    )
    return _from_arrays(
        name,
        (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
        (np.concatenate([x for x, _ in test]), np.concatenate([y for _, y in test])),
        layout.num_classes,
    )


# --- synthetic data --------------------------------------------------------------------------

SYNTHETIC_SHAPES = {"cifar": (3, 32, 32), "mnist": (1, 28, 28)}


def synthetic_dataset(
    num_train: int = 2048,
    num_test: int = 512,
    *,
    shape: str = "cifar",
    num_classes: int = 10,
    seed: int = 0,
) -> Dataset:
    """Random images a network can learn, the same for the same arguments on every machine.

    Each class is a smooth random pattern (a 4x4 grid of random colours, upsampled); an image
    is its class's pattern plus Gaussian pixel noise. ``shape`` is ``"cifar"`` (3x32x32) or
    ``"mnist"`` (1x28x28).
    """
    if shape not in SYNTHETIC_SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SYNTHETIC_SHAPES)}")
    channels, height, width = SYNTHETIC_SHAPES[shape]
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.rand(num_classes, channels, 4, 4, generator=generator)
    patterns = F.interpolate(patterns, size=(height, width), mode="bilinear", align_corners=False)

    def split(n: int) -> tuple[Tensor, Tensor]:
        labels = torch.randint(num_classes, (n,), generator=generator)
        noise = torch.randn(n, channels, height, width, generator=generator)
        images = (255 * patterns[labels] + 48 * noise).round().clamp(0, 255).to(torch.uint8)
        return images, labels

    (train_x, train_y), (test_x, test_y) = split(num_train), split(num_test)
    return Dataset("synthetic", train_x, train_y, test_x, test_y, num_classes, channels, height)
