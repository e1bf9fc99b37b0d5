import math

import pytest
import torch
from torch import nn

from coolmomentum.experiments.efficientnet import (
    B0_STAGES,
    EfficientNet,
    MBConv,
    drop_connect,
    efficientnet_b0,
)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def b0() -> EfficientNet:
    torch.manual_seed(0)
    return efficientnet_b0()


def test_parameter_count_is_the_published_one(b0):
    # Tan & Le (2019), Table 2: 5.3 M; the TF reference builds exactly this many.
    assert _count(b0) == 5_288_548
    # Only the classifier depends on the number of classes.
    assert _count(efficientnet_b0(num_classes=10)) == 5_288_548 - 1281 * 1000 + 1281 * 10


def test_architecture_follows_b0_table(b0):
    blocks = [b for b in b0.blocks if isinstance(b, MBConv)]
    assert len(blocks) == sum(stage.repeats for stage in B0_STAGES) == 16
    assert b0.stem[0].out_channels == 32 and b0.stem[0].stride == (2, 2)
    assert b0.head[0].out_channels == 1280
    # Squeeze-excitation is a quarter of the block's input width, not of the expanded width.
    assert blocks[0].se.reduce.out_channels == 8  # 32 inputs, no expansion
    assert blocks[1].se.reduce.out_channels == 4  # 16 inputs, expanded to 96
    assert blocks[1].depthwise[0].in_channels == 96
    kernels = [b.depthwise[0].kernel_size[0] for b in blocks]
    assert kernels == [3, 3, 3, 5, 5, 3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 3]
    for module in b0.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.momentum == 0.01 and module.eps == 1e-3  # TF momentum 0.99
    assert b0.dropout.p == 0.2


def test_output_shape_and_resolutions(b0):
    b0.eval()
    with torch.no_grad():
        assert b0(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
        assert b0(torch.randn(1, 3, 64, 96)).shape == (1, 1000)
        assert b0.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 1280)


def test_stochastic_depth_rates_grow_linearly_over_blocks(b0):
    rates = [b.drop_connect_rate for b in b0.blocks]
    assert rates == pytest.approx([0.2 * i / 16 for i in range(16)])
    assert [b.residual for b in b0.blocks].count(True) == 9


def test_drop_connect_drops_whole_samples_only_in_training():
    torch.manual_seed(0)
    x = torch.ones(4000, 3, 2, 2)
    out = drop_connect(x, 0.25, training=True)
    per_sample = out.flatten(1)
    assert torch.all(per_sample == per_sample[:, :1])  # a sample is kept or dropped whole
    kept = per_sample[:, 0] != 0
    assert torch.allclose(per_sample[kept], torch.full_like(per_sample[kept], 1 / 0.75))
    assert abs((~kept).float().mean().item() - 0.25) < 0.03
    assert drop_connect(x, 0.25, training=False) is x
    assert drop_connect(x, 0.0, training=True) is x


def test_stochastic_depth_active_only_in_train_mode():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 64, 64)
    with_sd = efficientnet_b0(num_classes=10, dropout=0.0, drop_connect=0.2)
    without_sd = efficientnet_b0(num_classes=10, dropout=0.0, drop_connect=0.0)
    without_sd.load_state_dict(with_sd.state_dict())
    with torch.no_grad():
        with_sd.eval()
        without_sd.eval()
        assert torch.equal(with_sd(x), with_sd(x))
        assert torch.allclose(with_sd(x), without_sd(x), atol=1e-6)
        # Train mode: batch statistics make the network deterministic for a fixed batch,
        # so two passes differ only through stochastic depth.
        with_sd.train()
        without_sd.train()
        assert not torch.allclose(with_sd(x), with_sd(x))
        assert torch.equal(without_sd(x), without_sd(x))


def test_channels_last_matches_contiguous_and_trains():
    torch.manual_seed(0)
    model = efficientnet_b0(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out, reference, atol=1e-4, rtol=1e-4)
    model.train()
    loss = model(x.contiguous(memory_format=torch.channels_last)).logsumexp(1).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_initialization_as_in_the_tf_reference(b0):
    head = b0.head[0].weight  # 1x1, 320 -> 1280: fan_out = 1280
    assert head.std().item() == pytest.approx(math.sqrt(2 / 1280), rel=0.02)
    # Depthwise kernels: TF counts fan_out = kh * kw (one output per input channel).
    depthwise_3x3 = b0.blocks[15].depthwise[0].weight  # 1152 channels
    depthwise_5x5 = b0.blocks[12].depthwise[0].weight
    assert depthwise_3x3.std().item() == pytest.approx(math.sqrt(2 / 9), rel=0.03)
    assert depthwise_5x5.std().item() == pytest.approx(math.sqrt(2 / 25), rel=0.03)
    bound = 1 / math.sqrt(1000)
    weight = b0.classifier.weight
    assert weight.abs().max().item() <= bound
    assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    assert torch.count_nonzero(b0.classifier.bias) == 0
    assert all(torch.count_nonzero(b.se.reduce.bias) == 0 for b in b0.blocks)


@pytest.mark.parametrize(
    "kwargs",
    [{"num_classes": 0}, {"dropout": 1.0}, {"drop_connect": -0.1}, {"drop_connect": 1.0}],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        efficientnet_b0(**kwargs)
