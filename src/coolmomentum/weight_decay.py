"""Param groups that apply weight decay to weight matrices and kernels only.

Decaying biases and the scales and shifts of normalization layers pulls them toward 0,
which the layers do not need and which usually costs accuracy; the common practice (timm,
nanoGPT, the Hugging Face ``Trainer``) is to exempt them. :func:`param_groups` builds the
two groups for any ``torch.optim`` optimizer, CoolMomentum included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ._numbers import check_number

__all__ = ["is_bias_or_norm", "param_groups"]

NoDecayRule = Callable[[nn.Module, str, nn.Parameter], bool]


def is_bias_or_norm(module: nn.Module, name: str, param: nn.Parameter) -> bool:
    """The default rule of :func:`param_groups`: every parameter with fewer than 2 dimensions.

    Those are the biases and the weights (scales and shifts) of normalization layers:
    batch, group, layer and RMS norms of ``torch.nn`` and the custom norm layers of other
    libraries alike. Weight matrices, convolution kernels and embeddings have 2 or more
    dimensions and are decayed. This is the rule of timm's ``weight_decay_exclude_1d``.
    """
    return param.ndim <= 1


def param_groups(
    model: nn.Module, weight_decay: float, no_decay: NoDecayRule = is_bias_or_norm
) -> list[dict[str, Any]]:
    """``model``'s trainable parameters in two param groups: decayed and not.

    Pass them to any optimizer in place of ``model.parameters()``::

        opt = CoolMomentum(param_groups(model, weight_decay=5e-4), lr=0.01, total_steps=S)

    Other rules are one function away, e.g. decaying convolution kernels only::

        param_groups(model, 1e-4, no_decay=lambda m, name, p: not (
            isinstance(m, torch.nn.Conv2d) and name == "weight"))

    Args:
        model: the module whose parameters are grouped; parameters with
            ``requires_grad=False`` are left out, and a parameter shared by several modules
            is listed once (where :meth:`torch.nn.Module.modules` meets it first).
        weight_decay: the decay of the first group; the second group gets ``0.0``.
        no_decay: ``no_decay(module, name, param)`` is true for the parameters to exempt;
            ``name`` is the parameter's name in ``module`` (``"weight"``, ``"bias"``).
            Default: :func:`is_bias_or_norm`.

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay}, {"params": [...],
        "weight_decay": 0.0}]``, without a group that would be empty.
    """
    check_number("weight_decay", weight_decay)
    if not callable(no_decay):
        raise TypeError(
            f"no_decay must be a function (module, name, param) -> bool, got {no_decay!r}"
        )
    decay: list[nn.Parameter] = []
    exempt: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (exempt if no_decay(module, name, param) else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": exempt, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]
