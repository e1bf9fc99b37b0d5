"""The networks: sizes as published, shapes, memory formats, gradients, initialization."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coolmomentum.experiments.models import MODELS, build_model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tensors here are tiny: extra threads only wait on each other, badly on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# He et al. 2016, Table 6 (CIFAR-10 ResNets); the CIFAR ResNet-34 is usually quoted at 21.3 M.
PUBLISHED_SIZES = {
    "resnet20": 0.27e6,
    "resnet32": 0.46e6,
    "resnet44": 0.66e6,
    "resnet56": 0.85e6,
    "resnet34": 21.3e6,
}


@pytest.mark.parametrize("name", PUBLISHED_SIZES)
def test_parameter_counts_match_the_papers(name):
    assert num_parameters(build_model(name)) == pytest.approx(PUBLISHED_SIZES[name], rel=0.02)


def test_resnet20_is_the_keras_resnet_v1():
    """Keras' resnet_v1(depth=20) has 273,066 trainable parameters, 688 of them the biases of
    the 19 convolutions followed by batch norm, which this model leaves out."""
    assert num_parameters(build_model("resnet20")) == 273_066 - 688


def test_convnet_is_small():
    assert 50_000 < num_parameters(build_model("convnet", 1, 10)) < 150_000


@pytest.mark.parametrize("name, depth", [
    ("resnet20", 20), ("resnet32", 32), ("resnet44", 44), ("resnet56", 56), ("resnet34", 34)])
def test_depth_counts_the_weighted_layers(name, depth):
    """The depth counts the 3x3 convolutions and the classifier, not the 1x1 shortcuts."""
    model = build_model(name)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == depth


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("channels, size, classes", [(3, 32, 10), (1, 28, 100)])
def test_output_shape(name, channels, size, classes):
    model = build_model(name, in_channels=channels, num_classes=classes, image_size=size).eval()
    with torch.no_grad():
        assert model(torch.randn(1, channels, size, size)).shape == (1, classes)


@pytest.mark.parametrize("name", ["resnet20", "convnet"])
def test_channels_last_gives_the_same_output(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["resnet20", "resnet34", "convnet"])
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = build_model(name, in_channels=3, num_classes=10).train()
    x, y = torch.randn(2, 3, 16, 16), torch.randint(10, (2,))  # small: only the graph matters
    F.cross_entropy(model(x), y).backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, param_name


def test_one_training_step_lowers_the_loss():
    torch.manual_seed(0)
    model = build_model("convnet", 1, 10).train()
    x, y = torch.randn(32, 1, 28, 28), torch.randint(10, (32,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_he_initialization():
    """Weights ~ N(0, 2 / fan_in), biases 0, batch norm the identity."""
    torch.manual_seed(0)
    model = build_model("resnet34")
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear) and module.weight.numel() > 100_000:
            fan_in = module.weight[0].numel()
            assert module.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.05)
            assert abs(module.weight.mean().item()) < 0.05 * (2 / fan_in) ** 0.5
        if isinstance(module, nn.BatchNorm2d):
            assert (module.weight == 1).all() and (module.bias == 0).all()
        if getattr(module, "bias", None) is not None and not isinstance(module, nn.BatchNorm2d):
            assert (module.bias == 0).all()


def test_pytorch_initialization_keeps_the_layer_defaults():
    """The authors' ResNet-34: torch's Kaiming-uniform (a = sqrt(5)), std 1 / sqrt(3 fan_in)."""
    torch.manual_seed(0)
    model = build_model("resnet34", init="pytorch")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.numel() > 100_000]
    assert convs
    for conv in convs:
        fan_in = conv.weight[0].numel()
        bound = fan_in**-0.5
        assert conv.weight.abs().max().item() <= bound
        assert conv.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.05)
    with pytest.raises(ValueError, match="he-normal, pytorch"):
        build_model("resnet20", init="xavier")


def test_unknown_model_lists_the_names():
    names = "resnet20, resnet32, resnet44, resnet56, resnet34, convnet"
    with pytest.raises(ValueError, match=names):
        build_model("resnet18")


def test_cifar_resnets_use_keras_batch_norm_settings():
    bns = [m for m in build_model("resnet20").modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all((bn.momentum, bn.eps) == (0.01, 1e-3) for bn in bns)


def test_mlp_is_784_256_256_10_on_flattened_images():
    torch.manual_seed(0)
    model = build_model("mlp", in_channels=1, num_classes=10, image_size=28).eval()
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in layers] == [(784, 256), (256, 256), (256, 10)]
    assert num_parameters(model) == 269_322
    x = torch.randn(4, 1, 28, 28)
    by_hand = x.flatten(1)
    for layer in layers[:-1]:
        by_hand = torch.relu(layer(by_hand))
    with torch.no_grad():
        torch.testing.assert_close(model(x), layers[-1](by_hand))


def test_lstm_reads_the_image_row_by_row():
    """Sequential Fashion-MNIST: 28 steps of 28 pixels; the output depends on the row order."""
    torch.manual_seed(0)
    model = build_model("lstm", in_channels=1, num_classes=10, image_size=28).eval()
    assert sum(p.numel() for p in model.parameters()) == 214_282
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        out = model(x)
        rows, _ = model.lstm(x[:, 0])  # (N, 28 rows, 28 pixels) by hand
        torch.testing.assert_close(out, model.head(rows[:, -1]))
        assert not torch.allclose(out, model(x.flip(2)))
