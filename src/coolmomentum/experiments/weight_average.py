"""An exponential moving average of a model's weights, evaluated beside the weights."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["WeightAverage"]


class WeightAverage:
    """An exponential moving average of a model's parameters and float buffers.

    As TensorFlow's ``ExponentialMovingAverage(decay, num_updates=step)``: it starts at the
    initial weights and, after optimizer step ``k`` (from 1), moves towards the current ones
    by ``1 - min(decay, (1 + k) / (10 + k))``, so that early averages forget the random
    initialization. ``model`` holds the averaged weights, ready to evaluate; integer buffers
    (batch norm's step counter) are copied.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        # state_dict() tensors share storage with the modules': in-place updates reach them.
        averaged, current = self.model.state_dict(), model.state_dict()
        floats = [k for k, v in current.items() if v.is_floating_point()]
        others = [k for k in current if k not in floats]
        self._averaged, self._current = [averaged[k] for k in floats], [current[k] for k in floats]
        self._copied, self._source = [averaged[k] for k in others], [current[k] for k in others]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        k = self.updates
        decay = min(self.decay, (1 + k) / (10 + k))
        if self._averaged:
            torch._foreach_lerp_(self._averaged, self._current, 1.0 - decay)
        if self._copied:
            torch._foreach_copy_(self._copied, self._source)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = state["updates"]
        self.model.load_state_dict(state["model"])
