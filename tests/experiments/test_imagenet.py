from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from coolmomentum.experiments.imagenet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetError,
    ImageFolder,
    ShardedSampler,
    center_crop_box,
    find_classes,
    make_loader,
    normalize_imagenet,
    random_resized_crop_box,
    set_epoch,
)

SIZE = 16  # output side: small keeps the tests fast
# Other test modules load JAX, whose threads make forking this process unsafe.
NO_FORK = "forkserver"
TRAIN_SHAPES = [(48, 36), (36, 48), (40, 40), (64, 24)]  # (width, height)
CLASSES = ["n01440764", "n01443537", "n02102040"]


def _write_jpeg(path: Path, width: int, height: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, rng.integers(0, 256, (height, width))])
    Image.fromarray(pixels.transpose(1, 2, 0).astype(np.uint8)).save(path, quality=95)


def _make_tree(root: Path, val_per_class: tuple[int, ...] = (2, 3)) -> Path:
    for label, name in enumerate(CLASSES):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for i, (w, h) in enumerate(TRAIN_SHAPES):
            _write_jpeg(folder / f"{name}_{i}.JPEG", w, h, seed=10 * label + i)
    (root / "val").mkdir()
    for name, count in zip(CLASSES, val_per_class, strict=False):
        folder = root / "val" / name
        folder.mkdir(parents=True)
        for i in range(count):
            _write_jpeg(folder / f"ILSVRC2012_val_{name}_{i}.JPEG", 40, 30, seed=100 + i)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return _make_tree(tmp_path_factory.mktemp("imagenet"))


def _epoch(loader) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*loader, strict=True)
    return torch.cat(images), torch.cat(labels)


def test_classes_and_labels_follow_sorted_train_folders(tree):
    assert find_classes(tree) == sorted(CLASSES)
    train = ImageFolder(tree, "train", train=True, image_size=SIZE)
    assert len(train) == 12
    for path, label in train.samples:
        assert Path(path).parent.name == CLASSES[label]
    val = ImageFolder(tree, "val", train=False, image_size=SIZE)
    assert val.classes == train.classes  # val has fewer classes but the same numbering
    assert [label for _, label in val.samples] == [0, 0, 1, 1, 1]


def test_train_batches(tree):
    loader = make_loader(tree, "train", 5, train=True, workers=0, image_size=SIZE)
    batches = list(loader)
    assert len(batches) == len(loader) == 2  # 12 images, the incomplete batch is dropped
    images, labels = batches[0]
    assert images.shape == (5, 3, SIZE, SIZE) and images.dtype == torch.uint8
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1, 2}
    assert images.float().std() > 10  # real pixels, not padding


def test_eval_batches_keep_every_sample_in_order(tree):
    loader = make_loader(tree, "val", 2, train=False, workers=0, image_size=SIZE)
    images, labels = _epoch(loader)
    assert images.shape == (5, 3, SIZE, SIZE)
    assert labels.tolist() == [0, 0, 1, 1, 1]


def test_batches_do_not_depend_on_the_number_of_workers(tree):
    runs = []
    for workers in (0, 2):
        loader = make_loader(
            tree,
            "train",
            4,
            train=True,
            workers=workers,
            seed=3,
            image_size=SIZE,
            multiprocessing_context=NO_FORK,
        )
        epochs = []
        for epoch in (0, 1):
            set_epoch(loader, epoch)
            epochs.append(_epoch(loader))
        runs.append(epochs)
    for (images_0, labels_0), (images_2, labels_2) in zip(*runs, strict=True):
        assert torch.equal(images_0, images_2) and torch.equal(labels_0, labels_2)


def test_augmentation_is_reproducible_and_changes_with_epoch_and_seed(tree):
    data = ImageFolder(tree, "train", train=True, seed=7, image_size=SIZE)
    again = ImageFolder(tree, "train", train=True, seed=7, image_size=SIZE)
    other_seed = ImageFolder(tree, "train", train=True, seed=8, image_size=SIZE)
    for index in range(len(data)):
        assert torch.equal(data[(2, index)][0], again.load(index, epoch=2)[0])
    epoch_0 = torch.stack([data.load(i, epoch=0)[0] for i in range(len(data))])
    epoch_1 = torch.stack([data.load(i, epoch=1)[0] for i in range(len(data))])
    seed_8 = torch.stack([other_seed.load(i, epoch=0)[0] for i in range(len(data))])
    differ = (epoch_0 != epoch_1).flatten(1).any(1)
    assert differ.sum() >= len(data) - 1  # (a crop may repeat by chance, not most)
    assert (epoch_0 != seed_8).flatten(1).any(1).sum() >= len(data) - 1
    assert torch.equal(data[3][0], data.load(3, epoch=0)[0])


def test_shards_cover_each_sample_once_per_epoch(tree):
    train = ImageFolder(tree, "train", train=True, image_size=SIZE)
    for epoch in (0, 1):
        shards = []
        for rank in (0, 1):
            sampler = ShardedSampler(train, rank=rank, world_size=2, shuffle=True, seed=0)
            sampler.set_epoch(epoch)
            pairs = list(sampler)
            assert len(pairs) == len(sampler) == 6
            assert {e for e, _ in pairs} == {epoch}
            shards.append([i for _, i in pairs])
        assert sorted(shards[0] + shards[1]) == list(range(12))
    orders = []
    for epoch in (0, 1):
        sampler = ShardedSampler(train, rank=0, world_size=1, shuffle=True, seed=0)
        sampler.set_epoch(epoch)
        orders.append([i for _, i in sampler])
    assert orders[0] != orders[1]  # reshuffled every epoch
    # Evaluation: no padding, so an odd count is still covered exactly once.
    val = ImageFolder(tree, "val", train=False, image_size=SIZE)
    labels = []
    for rank in (0, 1):
        loader = make_loader(tree, "val", 2, train=False, rank=rank, world_size=2, workers=0)
        assert len(loader.sampler) == (3, 2)[rank]
        labels += _epoch(loader)[1].tolist()
    assert sorted(labels) == sorted(label for _, label in val.samples)


def test_sharding_needs_no_process_group(tree):
    assert not torch.distributed.is_initialized()
    loader = make_loader(tree, "train", 2, train=True, rank=1, world_size=3, workers=0)
    assert len(list(loader)) == 2  # 12 images, 4 on this rank


def test_eval_transform_is_deterministic_and_centred(tmp_path):
    root = _make_tree(tmp_path)
    # A 64x32 image, green in the middle 32 columns and red outside. The evaluation crop is
    # the centre 28x28 square (0.875 of the shorter side): all green.
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :, 0] = 255
    pixels[:, 16:48] = (0, 255, 0)
    Image.fromarray(pixels).save(root / "val" / CLASSES[0] / "z_centre.png")
    val = ImageFolder(root, "val", train=False, image_size=SIZE)
    index = [Path(p).name for p, _ in val.samples].index("z_centre.png")
    image = val.load(index, epoch=0)[0]
    assert torch.equal(image, val.load(index, epoch=5)[0])
    assert image[1].min() >= 250 and image[0].max() <= 5
    # The training crop of the same image is random and reaches the red border sometimes.
    train = ImageFolder(root, "val", train=True, image_size=SIZE)
    assert any(train.load(index, epoch=e)[0][0].max() > 128 for e in range(20))


def test_center_crop_box_is_resize_256_then_crop_224():
    # 300x200: the shorter side 200 -> 256 is a scale of 1.28; 224 / 1.28 = 175 source pixels.
    assert center_crop_box(300, 200) == (62.5, 12.5, 237.5, 187.5)
    assert center_crop_box(200, 300) == (12.5, 62.5, 187.5, 237.5)


def test_random_resized_crop_box_respects_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(500):
        left, top, right, bottom = random_resized_crop_box(400, 300, rng)
        w, h = right - left, bottom - top
        assert 0 <= left < right <= 400 and 0 <= top < bottom <= 300
        assert 0.08 * 0.97 <= w * h / (400 * 300) <= 1.0
        assert 3 / 4 * 0.97 <= w / h <= 4 / 3 * 1.03
    # No draw fits a 1000x10 strip: fall back to the centred crop with the widest ratio.
    assert random_resized_crop_box(1000, 10, rng) == (493, 0, 506, 10)
    assert random_resized_crop_box(10, 1000, rng) == (0, 493, 10, 506)


def test_normalize_imagenet():
    mean = torch.tensor(IMAGENET_MEAN) * 255
    std = torch.tensor(IMAGENET_STD) * 255
    x = torch.randint(0, 256, (2, 3, 5, 4), dtype=torch.uint8)
    x = x.contiguous(memory_format=torch.channels_last)
    out = normalize_imagenet(x)
    assert out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    expected = (x.float() - mean.view(3, 1, 1)) / std.view(3, 1, 1)
    assert torch.allclose(out, expected, atol=1e-5)
    assert normalize_imagenet(x, torch.bfloat16).dtype == torch.bfloat16
    assert normalize_imagenet(x[0]).shape == (3, 5, 4)
    with pytest.raises(ValueError, match="3, H, W"):
        normalize_imagenet(torch.zeros(2, 4, 5, 5, dtype=torch.uint8))


def test_set_epoch_needs_a_make_loader_loader(tree):
    loader = torch.utils.data.DataLoader(list(range(4)))
    with pytest.raises(TypeError, match="make_loader"):
        set_epoch(loader, 1)
    with pytest.raises(ValueError, match="epoch"):
        set_epoch(make_loader(tree, "train", 2, train=True, workers=0), -1)


# -- errors: each names the problem and the path --------------------------------------------


def _error(root: Path, split: str = "train") -> DatasetError:
    with pytest.raises(DatasetError) as info:
        ImageFolder(root, split, train=split == "train")
    return info.value


def test_missing_root(tmp_path):
    error = _error(tmp_path / "nowhere")
    assert isinstance(error, FileNotFoundError)
    assert "nowhere" in str(error) and "not a directory" in str(error)


@pytest.mark.parametrize("split", ["train", "val"])
def test_missing_split(tmp_path, split):
    _make_tree(tmp_path)
    for path in sorted((tmp_path / split).rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (tmp_path / split).rmdir()
    error = _error(tmp_path, "val")  # val needs train/ too: it defines the classes
    assert isinstance(error, FileNotFoundError)
    assert f"no {split}/ folder" in str(error)


def test_no_class_folders(tmp_path):
    (tmp_path / "train").mkdir()
    error = _error(tmp_path)
    assert isinstance(error, ValueError) and "no class folders" in str(error)


def test_unsorted_val_images(tmp_path):
    _make_tree(tmp_path, val_per_class=())
    _write_jpeg(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG", 20, 20, seed=0)
    error = _error(tmp_path, "val")
    assert "holds images directly but no class folders" in str(error)


def test_empty_class(tmp_path):
    _make_tree(tmp_path)
    (tmp_path / "train" / "n09999999").mkdir()
    (tmp_path / "train" / "n09999999" / "notes.txt").write_text("not an image")
    error = _error(tmp_path)
    assert isinstance(error, ValueError)
    assert "n09999999" in str(error) and "holds no images" in str(error)


def test_no_images_at_all(tmp_path):
    for name in CLASSES:
        (tmp_path / "train" / name).mkdir(parents=True)
    error = _error(tmp_path)
    assert "holds no images" in str(error) and ".jpeg" in str(error)


def test_val_class_missing_from_train(tmp_path):
    _make_tree(tmp_path)
    extra = tmp_path / "val" / "n09999999"
    extra.mkdir()
    _write_jpeg(extra / "a.JPEG", 20, 20, seed=0)
    error = _error(tmp_path, "val")
    assert "train/ lacks" in str(error) and "n09999999" in str(error)


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_jpeg_names_the_file(tmp_path, workers):
    _make_tree(tmp_path)
    bad = tmp_path / "val" / CLASSES[0] / "ILSVRC2012_val_broken.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    loader = make_loader(
        tmp_path, "val", 8, train=False, workers=workers, multiprocessing_context=NO_FORK
    )
    with pytest.raises(DatasetError, match=r"ILSVRC2012_val_broken\.JPEG") as info:
        list(loader)
    assert isinstance(info.value, ValueError) and "cannot read image" in str(info.value)


def test_truncated_jpeg_names_the_file(tmp_path):
    _make_tree(tmp_path)
    good = tmp_path / "train" / CLASSES[1] / f"{CLASSES[1]}_0.JPEG"
    good.write_bytes(good.read_bytes()[:200])
    data = ImageFolder(tmp_path, "train", train=True)
    index = [p for p, _ in data.samples].index(str(good))
    with pytest.raises(DatasetError, match=rf"{CLASSES[1]}_0\.JPEG"):
        data.load(index)


def test_invalid_arguments(tree):
    with pytest.raises(ValueError, match="split"):
        ImageFolder(tree, "test", train=False)
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(tree, "train", 0, train=True)
    with pytest.raises(ValueError, match="workers"):
        make_loader(tree, "train", 2, train=True, workers=-1)
    with pytest.raises(ValueError):
        make_loader(tree, "train", 2, train=True, rank=2, world_size=2)


# -- presets ---------------------------------------------------------------------------------


def test_presets_follow_the_published_scripts():
    from coolmomentum.experiments.presets_imagenet import (
        IMAGENET_PRESETS,
        CoolMomentumRecipe,
        RMSPropRecipe,
    )
    from coolmomentum.schedules import rho

    paper = IMAGENET_PRESETS["paper-efficientnet-b0-imagenet"]
    baseline = IMAGENET_PRESETS["efficientnet-b0-imagenet-rmsprop"]
    assert isinstance(paper.optimizer, CoolMomentumRecipe)
    assert isinstance(baseline.optimizer, RMSPropRecipe)
    for preset in (paper, baseline):
        assert preset.batch_size == 2048 and round(preset.epochs) == 350
        assert (preset.weight_decay, preset.label_smoothing, preset.ema_decay) == (
            1e-5,
            0.1,
            0.9999,
        )
    recipe = paper.optimizer
    assert (recipe.lr, recipe.rho_0, paper.train_steps) == (0.6, 0.99, 218_948)
    assert recipe.cooling_steps == paper.train_steps  # cooled over the whole run
    assert recipe.momentum_warmup_steps == int(5 * paper.steps_per_epoch) == 3127
    # The documented momentum right after the warm-up: the schedule at the global step.
    after = rho(3127, rho_0=0.99, total_steps=218_948, schedule="exponential")
    assert after == pytest.approx(0.98932, abs=1e-5)
    assert paper.target.top1 is None and "not verified" in paper.target.source
    assert baseline.optimizer.lr_per_256 * baseline.batch_size / 256 == pytest.approx(0.128)
