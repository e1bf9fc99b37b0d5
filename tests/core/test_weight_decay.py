"""``coolmomentum.param_groups``: weight decay for weights, none for biases and norms."""

import pytest
import torch
from torch import nn

from coolmomentum import CoolMomentum, param_groups


class Block(nn.Module):
    """Conv + batch norm, a transformer-style layer norm and an RMS norm, a tied head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.embed = nn.Embedding(10, 4)
        self.ln = nn.LayerNorm(4)
        self.rms = nn.RMSNorm(4)
        self.head = nn.Linear(4, 10)
        self.head.weight = self.embed.weight  # tied: one parameter in two modules
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def names(model, group):
    by_id = {id(p): n for n, p in model.named_parameters()}
    return sorted(by_id[id(p)] for p in group["params"])


def test_biases_and_normalization_weights_are_exempt():
    model = Block()
    decay, exempt = param_groups(model, weight_decay=5e-4)
    assert decay["weight_decay"] == 5e-4 and exempt["weight_decay"] == 0.0
    assert names(model, decay) == ["conv.weight", "embed.weight"]
    assert names(model, exempt) == [
        "bn.bias", "bn.weight", "conv.bias", "head.bias", "ln.bias", "ln.weight", "rms.weight",
    ]  # fmt: skip


def test_groups_train_with_the_decay_of_each_group():
    """An exempt parameter with zero gradient stays put; a decayed one shrinks."""
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    opt = torch.optim.SGD(param_groups(model, weight_decay=0.5), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    weight, bias, ln_weight, ln_bias = model.parameters()
    torch.testing.assert_close(weight, before[0] * (1 - 0.1 * 0.5))
    for p, b in zip((bias, ln_weight, ln_bias), before[1:]):
        torch.testing.assert_close(p, b, rtol=0, atol=0)


def test_custom_rule_decays_conv_kernels_only():
    model = Block()
    groups = param_groups(
        model,
        1e-4,
        no_decay=lambda m, name, p: not (isinstance(m, nn.Conv2d) and name == "weight"),
    )
    assert names(model, groups[0]) == ["conv.weight"]
    CoolMomentum(groups, lr=0.01, total_steps=10)  # accepted as param groups


def test_empty_group_is_left_out():
    groups = param_groups(nn.Linear(3, 3, bias=False), 1e-4)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 1e-4


def test_clear_errors():
    with pytest.raises(ValueError, match="weight_decay must be a number >= 0"):
        param_groups(nn.Linear(2, 2), -1.0)
    with pytest.raises(TypeError, match="no_decay must be a function"):
        param_groups(nn.Linear(2, 2), 1e-4, no_decay=["bias"])
