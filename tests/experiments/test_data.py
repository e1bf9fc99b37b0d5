"""Datasets read from files in their official formats; augmentation, normalization, batching."""

from __future__ import annotations

import dataclasses
import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from coolmomentum.experiments import datasets
from coolmomentum.experiments.augment import (
    channel_stats,
    normalize,
    pixel_mean,
    random_crop,
    random_flip,
    random_shift,
    translate,
)
from coolmomentum.experiments.config import ConfigError, RunConfig
from coolmomentum.experiments.data import InMemoryData
from coolmomentum.experiments.datasets import (
    CorruptDatasetError,
    DatasetError,
    DatasetNotFoundError,
    load_dataset,
    synthetic_dataset,
)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tensors here are tiny: extra threads only wait on each other, badly on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_data_outside_tmp(monkeypatch, tmp_path):
    """Only the files a test writes are found: no $COOLMOMENTUM_DATA, an empty system folder."""
    monkeypatch.delenv(datasets.DATA_ENV, raising=False)
    monkeypatch.setattr(datasets, "SYSTEM_FASHION_MNIST_DIR", tmp_path / "system-empty")


# --- Fashion-MNIST: gzipped IDX files --------------------------------------------------------

def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> None:
    """An IDX file: big-endian magic 0x0000 08 NN (uint8, NN dims), the dims, the bytes."""
    magic = 0x0800 + array.ndim if magic is None else magic
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(folder: Path, seed: int = 0, n_train: int = 5, n_test: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(folder / name, array)
    return arrays


def test_fashion_mnist_round_trip(tmp_path):
    arrays = write_fashion_mnist(tmp_path)
    ds = load_dataset("fashion-mnist", tmp_path)
    assert (ds.name, ds.num_classes, ds.in_channels, ds.image_size) == ("fashion-mnist", 10, 1, 28)
    assert ds.train_x.shape == (5, 1, 28, 28) and ds.test_x.shape == (3, 1, 28, 28)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    np.testing.assert_array_equal(ds.train_x[:, 0].numpy(), arrays["train-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(ds.train_y.numpy(), arrays["train-labels-idx1-ubyte.gz"])
    np.testing.assert_array_equal(ds.test_x[:, 0].numpy(), arrays["t10k-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(ds.test_y.numpy(), arrays["t10k-labels-idx1-ubyte.gz"])


def _bad_magic(path: Path) -> None:
    write_idx(path, np.zeros((5, 28, 28), np.uint8), magic=2049)


def _extra_byte(path: Path) -> None:
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw + b"\0"))


def _truncated_gzip(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _not_gzip(path: Path) -> None:
    path.write_bytes(gzip.decompress(path.read_bytes()))


def _header_only(path: Path) -> None:
    path.write_bytes(gzip.compress(struct.pack(">I", 2051)))


CORRUPT_FASHION_MNIST = {
    "bad magic number": ("train-images-idx3-ubyte.gz", _bad_magic),
    "data size differs from header": ("train-images-idx3-ubyte.gz", _extra_byte),
    "truncated gzip": ("t10k-images-idx3-ubyte.gz", _truncated_gzip),
    "not gzipped": ("train-labels-idx1-ubyte.gz", _not_gzip),
    "header cut short": ("train-images-idx3-ubyte.gz", _header_only),
    "fewer labels than images": (
        "t10k-labels-idx1-ubyte.gz", lambda p: write_idx(p, np.zeros(2, np.uint8))),
    "label out of range": (
        "train-labels-idx1-ubyte.gz", lambda p: write_idx(p, np.array([0, 1, 2, 3, 10]))),
}


@pytest.mark.parametrize("case", CORRUPT_FASHION_MNIST)
def test_corrupt_fashion_mnist_names_the_file_and_the_remedy(tmp_path, case):
    write_fashion_mnist(tmp_path)
    name, damage = CORRUPT_FASHION_MNIST[case]
    damage(tmp_path / name)
    with pytest.raises(CorruptDatasetError) as error:
        load_dataset("fashion-mnist", tmp_path)
    assert isinstance(error.value, ValueError) and isinstance(error.value, DatasetError)
    assert str(tmp_path / name) in str(error.value)
    assert "apt-get install dataset-fashion-mnist" in str(error.value)


def test_missing_fashion_mnist_file_names_it(tmp_path):
    write_fashion_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset("fashion-mnist", tmp_path)
    assert isinstance(error.value, FileNotFoundError)
    assert str(tmp_path / "t10k-labels-idx1-ubyte.gz") in str(error.value)


def test_no_fashion_mnist_anywhere_lists_the_places_searched(tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.DATA_ENV, str(tmp_path / "env"))
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset("fashion-mnist", tmp_path / "given")
    message = str(error.value)
    for place in ("given", "env", "env/fashion-mnist", "system-empty"):
        assert str(tmp_path / place) in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_fashion_mnist_search_order(tmp_path, monkeypatch):
    """data_dir, then $COOLMOMENTUM_DATA (or its fashion-mnist folder), then the system path."""
    given, env, system = tmp_path / "given", tmp_path / "env", tmp_path / "system"
    labels = {
        seed: write_fashion_mnist(folder, seed)["train-labels-idx1-ubyte.gz"]
        for seed, folder in enumerate([given, env / "fashion-mnist", system])
    }
    monkeypatch.setattr(datasets, "SYSTEM_FASHION_MNIST_DIR", system)

    def loaded_labels(data_dir):
        return load_dataset("fashion-mnist", data_dir).train_y.numpy()

    np.testing.assert_array_equal(loaded_labels(None), labels[2])
    monkeypatch.setenv(datasets.DATA_ENV, str(env))
    np.testing.assert_array_equal(loaded_labels(None), labels[1])
    np.testing.assert_array_equal(loaded_labels(tmp_path / "elsewhere"), labels[1])
    np.testing.assert_array_equal(loaded_labels(given), labels[0])


REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not (REAL_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="apt-get install dataset-fashion-mnist to run this",
)
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.setattr(datasets, "SYSTEM_FASHION_MNIST_DIR", REAL_FASHION_MNIST)
    ds = load_dataset("fashion-mnist")
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_y.bincount().tolist() == [6000] * 10
    assert ds.test_y.bincount().tolist() == [1000] * 10


# --- CIFAR: python pickle batches as Python 2 wrote them --------------------------------------

class Python2Pickler(pickle._Pickler):
    """Writes text and bytes as Python 2 ``str`` (BINSTRING), as in the official batches."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_str(self, obj):
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str
    dispatch[str] = save_python2_str


def python2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(obj)
    # numpy 1, which wrote the official files, kept the array constructor in numpy.core
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def write_cifar_batch(path: Path, images: np.ndarray, labels, label_key=b"labels", extra=None):
    batch = {
        b"batch_label": b"batch",
        label_key: [int(label) for label in labels],
        b"data": images.reshape(len(images), -1),
        b"filenames": [b"image_%d.png" % i for i in range(len(images))],
        **(extra or {}),
    }
    path.write_bytes(python2_pickle(batch))


def write_cifar10(folder: Path, per_batch: int = 2) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6 * per_batch, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, 6 * per_batch)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        part = slice(i * per_batch, (i + 1) * per_batch)
        write_cifar_batch(folder / name, x[part], y[part])
    split = 5 * per_batch
    return x[:split], y[:split], x[split:], y[split:]


@pytest.mark.parametrize("layout", ["parent", "folder itself", "env"])
def test_cifar10_round_trip(tmp_path, monkeypatch, layout):
    train_x, train_y, test_x, test_y = write_cifar10(tmp_path / "cifar-10-batches-py")
    data_dir = {"parent": tmp_path, "folder itself": tmp_path / "cifar-10-batches-py"}.get(layout)
    if layout == "env":
        monkeypatch.setenv(datasets.DATA_ENV, str(tmp_path))
    ds = load_dataset("cifar10", data_dir)
    assert (ds.num_classes, ds.in_channels, ds.image_size) == (10, 3, 32)
    np.testing.assert_array_equal(ds.train_x.numpy(), train_x)
    np.testing.assert_array_equal(ds.train_y.numpy(), train_y)
    np.testing.assert_array_equal(ds.test_x.numpy(), test_x)
    np.testing.assert_array_equal(ds.test_y.numpy(), test_y)
    assert ds.train_y.dtype == torch.int64


def test_cifar_rows_are_red_green_blue_planes(tmp_path):
    row = np.repeat(np.array([10, 20, 30], np.uint8), 1024)  # all red 10, green 20, blue 30
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_batch(tmp_path / name, row[None].copy(), [3])
    image = load_dataset("cifar10", tmp_path).train_x[0]
    assert image[:, 5, 7].tolist() == [10, 20, 30]


def test_cifar100_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    for name, part in [("train", slice(0, 3)), ("test", slice(3, 4))]:
        fine = [99, 0, 57, 42][part]
        write_cifar_batch(folder / name, x[part], fine, b"fine_labels",
                          extra={b"coarse_labels": [0] * len(fine)})
    ds = load_dataset("cifar100", tmp_path)
    assert ds.num_classes == 100
    assert ds.train_y.tolist() == [99, 0, 57] and ds.test_y.tolist() == [42]
    np.testing.assert_array_equal(ds.train_x.numpy(), x[:3])


class WritesAFile:
    """Unpickling this would create ``path``: what a malicious pickle could do."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


CORRUPT_CIFAR = {
    "truncated": lambda p, marker: p.write_bytes(p.read_bytes()[:100]),
    "not a pickle": lambda p, marker: p.write_bytes(b"hello"),
    "wrong row length": lambda p, marker: write_cifar_batch(
        p, np.zeros((2, 3071), np.uint8), [0, 0]),
    "not a dict": lambda p, marker: p.write_bytes(python2_pickle([1, 2])),
    "fewer labels than images": lambda p, marker: write_cifar_batch(
        p, np.zeros((2, 3, 32, 32), np.uint8), [0]),
    "labels not numbers": lambda p, marker: write_cifar_batch(
        p, np.zeros((2, 3, 32, 32), np.uint8), [0, 0], extra={b"labels": [b"cat", b"dog"]}),
    "label out of range": lambda p, marker: write_cifar_batch(
        p, np.zeros((2, 3, 32, 32), np.uint8), [0, 10]),
    "code in the pickle": lambda p, marker: p.write_bytes(
        pickle.dumps({b"data": WritesAFile(marker)})),
}


@pytest.mark.parametrize("case", CORRUPT_CIFAR)
def test_corrupt_cifar_names_the_file_and_the_remedy(tmp_path, case):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    marker = tmp_path / "code-ran"
    CORRUPT_CIFAR[case](folder / "data_batch_3", marker)
    with pytest.raises(CorruptDatasetError) as error:
        load_dataset("cifar10", tmp_path)
    assert isinstance(error.value, ValueError)
    assert str(folder / "data_batch_3") in str(error.value)
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in str(error.value)
    assert not marker.exists()


def test_missing_cifar_batch_names_it(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    (folder / "data_batch_5").unlink()
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset("cifar10", tmp_path)
    assert isinstance(error.value, FileNotFoundError)
    assert str(folder / "data_batch_5") in str(error.value)


def test_no_cifar_anywhere_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"cifar-10-python\.tar\.gz") as error:
        load_dataset("cifar10", tmp_path)
    assert str(tmp_path / "cifar-10-batches-py") in str(error.value)
    with pytest.raises(DatasetNotFoundError, match=r"cifar-100-python\.tar\.gz"):
        load_dataset("cifar100")


def test_unknown_dataset_lists_the_names():
    with pytest.raises(ValueError, match="fashion-mnist, cifar10, cifar100, synthetic"):
        load_dataset("mnist")
    with pytest.raises(TypeError, match="synthetic"):
        load_dataset("cifar10", seed=1)


# --- synthetic data, Dataset ------------------------------------------------------------------

@pytest.mark.parametrize("shape, chw", [("cifar", (3, 32, 32)), ("mnist", (1, 28, 28))])
def test_synthetic_is_deterministic_and_learnable(shape, chw):
    ds = load_dataset("synthetic", num_train=500, num_test=200, shape=shape, seed=3)
    assert ds.train_x.shape == (500, *chw) and ds.test_x.shape == (200, *chw)
    assert (ds.in_channels, ds.image_size, ds.num_classes) == (chw[0], chw[1], 10)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    again = synthetic_dataset(500, 200, shape=shape, seed=3)
    assert torch.equal(ds.train_x, again.train_x) and torch.equal(ds.test_y, again.test_y)
    assert not torch.equal(ds.train_x, synthetic_dataset(500, 200, shape=shape, seed=4).train_x)
    # learnable: nearest class mean of the training set classifies the test set
    x_train, x_test = ds.train_x.flatten(1).float(), ds.test_x.flatten(1).float()
    means = torch.stack([x_train[ds.train_y == c].mean(0) for c in range(10)])
    accuracy = (torch.cdist(x_test, means).argmin(1) == ds.test_y).float().mean()
    assert accuracy > 0.9


def test_dataset_to_moves_every_tensor():
    ds = synthetic_dataset(8, 4).to("meta")
    for tensor in (ds.train_x, ds.train_y, ds.test_x, ds.test_y):
        assert tensor.device.type == "meta"
    assert (ds.name, ds.num_classes, ds.in_channels, ds.image_size) == ("synthetic", 10, 3, 32)


# --- normalization ---------------------------------------------------------------------------

def test_channel_normalization_gives_zero_mean_unit_std():
    x = synthetic_dataset(300, 1).train_x
    mean, std = channel_stats(x)
    assert mean.shape == std.shape == (3,)
    torch.testing.assert_close(mean, (x.double() / 255).mean((0, 2, 3)).float())
    out = normalize(x, mean, std)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std((0, 2, 3), correction=0), torch.ones(3), atol=1e-4, rtol=0)


def test_pixel_mean_subtraction_as_in_keras():
    """Keras ``subtract_pixel_mean``: ``x / 255 - mean(x_train / 255, axis=0)``."""
    ds = synthetic_dataset(300, 50)
    mean = pixel_mean(ds.train_x)
    assert mean.shape == (3, 32, 32)
    expected = ds.test_x.numpy() / 255 - (ds.train_x.numpy() / 255).mean(0)
    np.testing.assert_allclose(normalize(ds.test_x, mean).numpy(), expected, atol=1e-5)
    assert normalize(ds.train_x, mean).mean(0).abs().max() < 1e-5


def test_normalize_accepts_plain_numbers():
    x = torch.full((1, 2, 2, 2), 51, dtype=torch.uint8)
    out = normalize(x, [0.1, 0.2], [0.5, 0.25])
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.2, 0.0]))


# --- augmentation ----------------------------------------------------------------------------

def random_images(n: int = 6, channels: int = 3, size: int = 8, device: str = "cpu"):
    generator = torch.Generator().manual_seed(0)
    return torch.randint(1, 256, (n, channels, size, size), generator=generator,
                         dtype=torch.uint8).to(device)


def test_translate_moves_content_by_the_offset_and_fills_with_zeros():
    x = random_images(3)
    dy, dx = torch.tensor([2, -1, 0]), torch.tensor([-3, 0, 1])
    out = translate(x, dy, dx, fill="zero")
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out[0, :, 2:, :-3], x[0, :, :-2, 3:])
    assert (out[0, :, :2] == 0).all() and (out[0, :, :, -3:] == 0).all()
    assert torch.equal(out[1, :, :-1], x[1, :, 1:]) and (out[1, :, -1] == 0).all()
    assert torch.equal(out[2, :, :, 1:], x[2, :, :, :-1]) and (out[2, :, :, 0] == 0).all()


def test_translate_nearest_fill_repeats_the_edge():
    x = random_images(1)
    out = translate(x, torch.tensor([2]), torch.tensor([-1]), fill="nearest")
    assert torch.equal(out[0, :, 2:, :-1], x[0, :, :-2, 1:])
    for row in range(2):  # the rows shifted in copy the top row
        assert torch.equal(out[0, :, row, :-1], x[0, :, 0, 1:])
    assert torch.equal(out[0, :, 2:, -1], x[0, :, :-2, -1])  # the last column copies itself


def test_translate_equals_pad_and_crop():
    x = random_images(4).float()
    dy, dx = torch.tensor([0, 4, -4, 1]), torch.tensor([4, -2, 0, -4])
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    expected = torch.stack([padded[i, :, 4 - a : 12 - a, 4 - b : 12 - b]
                            for i, (a, b) in enumerate(zip(dy.tolist(), dx.tolist()))])
    assert torch.equal(translate(x, dy, dx), expected)


def drawn_offsets(x: torch.Tensor, out: torch.Tensor, max_shift: int, fill: str) -> list:
    """The offset each image was shifted by (random content makes it unique)."""
    candidates = [(a, b) for a in range(-max_shift, max_shift + 1)
                  for b in range(-max_shift, max_shift + 1)]
    found = []
    for i in range(len(x)):
        matches = [(a, b) for a, b in candidates
                   if torch.equal(translate(x[i:i + 1], torch.tensor([a]), torch.tensor([b]),
                                            fill), out[i:i + 1])]
        assert len(matches) == 1, f"image {i} is no shift of its input"
        found.append(matches[0])
    return found


@pytest.mark.parametrize("device", DEVICES)
def test_random_shift_draws_one_offset_per_image(device):
    x = random_images(64, device=device)
    out = random_shift(x, 3, torch.Generator(device).manual_seed(1))
    offsets = drawn_offsets(x.cpu(), out.cpu(), 3, "nearest")
    rows, cols = zip(*offsets)
    assert set(rows) == set(cols) == set(range(-3, 4))  # every offset occurs in 64 draws
    again = random_shift(x, 3, torch.Generator(device).manual_seed(1))
    assert torch.equal(out, again)
    assert not torch.equal(out, random_shift(x, 3, torch.Generator(device).manual_seed(2)))


@pytest.mark.parametrize("device", DEVICES)
def test_random_crop_pads_with_zeros(device):
    x = random_images(64, device=device)
    out = random_crop(x, 2, torch.Generator(device).manual_seed(0))
    offsets = drawn_offsets(x.cpu(), out.cpu(), 2, "zero")
    assert len(set(offsets)) > 10
    assert (out == 0).any()  # the input has no zeros: these are padding
    assert torch.equal(random_crop(x, 0), x)


@pytest.mark.parametrize("device", DEVICES)
def test_random_flip_mirrors_about_half(device):
    x = random_images(200, device=device)
    out = random_flip(x, torch.Generator(device).manual_seed(0))
    flipped = (out == x.flip(3)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert (flipped ^ kept).all()  # each image is itself or its mirror image
    assert 60 < flipped.sum() < 140
    assert torch.equal(out, random_flip(x, torch.Generator(device).manual_seed(0)))


def test_augmentations_keep_dtype_and_memory_format():
    x = random_images(4).float().contiguous(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    for out in (random_shift(x, 2, generator), random_crop(x, 4, generator),
                random_flip(x, generator)):
        assert out.dtype == torch.float32 and out.shape == x.shape


class CountTorchCalls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("augment", [
    lambda x, g: random_shift(x, 3, g),
    lambda x, g: random_crop(x, 4, g),
    lambda x, g: random_flip(x, g),
    lambda x, g: normalize(x, [0.5] * 3, [0.25] * 3),
])
def test_augmentations_cost_the_same_number_of_ops_for_any_batch(augment):
    """No loop over images: a batch of 256 takes as many tensor ops as a batch of 2."""
    calls = []
    for n in (2, 256):
        x, generator = random_images(n), torch.Generator().manual_seed(0)
        with CountTorchCalls() as counter:
            augment(x, generator)
        calls.append(counter.calls)
    assert calls[0] == calls[1] > 0


# --- batching --------------------------------------------------------------------------------

def _in_memory(device: str, **settings) -> InMemoryData:
    """2048 synthetic training images (labels replaced by their index) and 512 test images."""
    d = InMemoryData(RunConfig(dataset="synthetic", **settings), torch.device(device))
    d.ds = dataclasses.replace(d.ds, train_y=torch.arange(d.num_train, device=device))
    return d


@pytest.mark.parametrize("device", DEVICES)
def test_training_batches_shuffle_reproducibly_and_drop_the_last(device):
    d = _in_memory(device, batch_size=500)
    first = list(d.train_batches(0))
    assert len(first) == d.steps_per_epoch() == 4
    seen = torch.cat([y for _, y, _ in first])
    assert len(seen) == 2000 and len(set(seen.tolist())) == 2000  # each sample at most once
    assert seen.tolist() != sorted(seen.tolist())
    for x, y, share in first:
        assert x.device.type == device and x.shape == (500, 3, 32, 32) and share == 1
        assert torch.equal(x, d.prepare(d.ds.train_x[y]))  # images stay with their labels
    assert all(torch.equal(a[1], b[1]) for a, b in zip(first, d.train_batches(0)))
    assert not torch.equal(first[0][1], next(d.train_batches(1))[1])


@pytest.mark.parametrize("augment", ["none", "shift-flip"])
def test_an_epoch_started_mid_way_yields_the_rest_of_the_same_epoch(augment):
    d = _in_memory("cpu", batch_size=300, augment=augment, seed=5)
    whole = list(d.train_batches(3))
    tail = list(d.train_batches(3, start=4))
    assert len(tail) == len(whole) - 4 == 2
    for (x, y, _), (x_tail, y_tail, _) in zip(whole[4:], tail, strict=True):
        assert torch.equal(x, x_tail) and torch.equal(y, y_tail)


def test_evaluation_batches_cover_the_test_set_or_the_training_set_in_order():
    d = _in_memory("cpu", eval_batch_size=200, augment="crop-flip")
    out = list(d.eval_batches())
    assert [len(y) for _, y in out] == [200, 200, 112] and d.eval_name == "test"
    assert torch.equal(torch.cat([x for x, _ in out]), d.prepare(d.ds.test_x))
    assert torch.equal(torch.cat([y for _, y in out]), d.ds.test_y)
    whole = list(d.eval_batches(training_set=True))  # unaugmented
    assert torch.equal(torch.cat([x for x, _ in whole]), d.prepare(d.ds.train_x))


def test_validation_holds_out_the_last_training_images_and_drops_the_test_set():
    full = load_dataset("synthetic")
    d = InMemoryData(RunConfig(dataset="synthetic", validation=300, train_subset=1000),
                     torch.device("cpu"))  # fmt: skip
    assert (d.eval_name, d.num_eval, d.num_train) == ("val", 300, 1000)
    assert torch.equal(d.ds.test_x, full.train_x[-300:])
    assert torch.equal(d.ds.test_y, full.train_y[-300:])
    assert torch.equal(d.ds.train_x, full.train_x[:1000])
    with pytest.raises(ConfigError, match="leaves no training images"):
        InMemoryData(RunConfig(dataset="synthetic", validation=2048), torch.device("cpu"))
