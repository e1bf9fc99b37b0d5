"""RMSProp as TensorFlow 1 has it: the EfficientNet recipe's baseline, which torch does not
ship in its published form."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["TFRMSprop"]


class TFRMSprop(torch.optim.Optimizer):
    """RMSProp as TensorFlow 1's ``tf.train.RMSPropOptimizer``, the EfficientNet recipe's::

        g   = grad + weight_decay * x                  (L2 in the loss)
        ms  = decay * ms + (1 - decay) * g**2           (ms starts at initial_mean_square)
        mom = momentum * mom + lr * g / sqrt(ms + eps)
        x  -= mom

    Unlike ``torch.optim.RMSprop``, ``eps`` sits inside the square root, the mean square starts
    at 1 (TF's ``ones`` slot) rather than 0, and ``lr`` enters the momentum buffer, so a change
    of the learning rate acts on new gradients only.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        decay: float = 0.9,
        momentum: float = 0.0,
        eps: float = 1e-10,
        initial_mean_square: float = 1.0,
        weight_decay: float = 0.0,
    ) -> None:
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not 0 <= decay < 1 or not 0 <= momentum < 1:
            raise ValueError(f"decay and momentum must be in [0, 1), got {decay}, {momentum}")
        if not eps > 0 or not initial_mean_square >= 0 or not weight_decay >= 0:
            raise ValueError("eps must be > 0, initial_mean_square and weight_decay >= 0")
        defaults = dict(
            lr=lr,
            decay=decay,
            momentum=momentum,
            eps=eps,
            initial_mean_square=initial_mean_square,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if not self.state[p]:
                    self.state[p]["mean_square"] = torch.full_like(
                        p, group["initial_mean_square"], memory_format=torch.preserve_format
                    )
                    self.state[p]["momentum_buffer"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )
            grads: list[Tensor] = [p.grad for p in params]
            if group["weight_decay"]:
                grads = list(torch._foreach_add(grads, params, alpha=group["weight_decay"]))
            mean_squares = [self.state[p]["mean_square"] for p in params]
            buffers = [self.state[p]["momentum_buffer"] for p in params]
            torch._foreach_mul_(mean_squares, group["decay"])
            torch._foreach_addcmul_(mean_squares, grads, grads, value=1 - group["decay"])
            denominators = torch._foreach_add(mean_squares, group["eps"])
            torch._foreach_sqrt_(denominators)
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_addcdiv_(buffers, grads, denominators, value=group["lr"])
            torch._foreach_sub_(params, buffers)
        return loss
