"""An independent float64 NumPy CoolMomentum, written from the formulas, and a test problem.

Shared by the optax and Keras tests (and the Keras backend subprocesses); imports only NumPy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

RHO_0 = 0.9
TOTAL_STEPS = 12
HOT_STEPS = 4
NUM_STEPS = 24  # the hot phase, S cooling steps, then 8 more at rho = 0
LR = 0.125  # exact in binary, so float32 frameworks start from the same lr
SCHEDULES = (
    "exponential",
    "exponential-temperature",
    "linear-temperature",
    "cosine-temperature",
    "constant",
)

_CURVATURE = np.linspace(0.5, 2.0, 6)
_NOISE = np.random.default_rng(20210531).normal(size=(64, 6))
X0 = np.linspace(-1.0, 1.5, 6)


def gradient(x: np.ndarray, k: int) -> np.ndarray:
    """The gradient at step ``k``: a quadratic bowl plus fixed minibatch-like noise."""
    return _CURVATURE * x + _NOISE[k]


def reference_rho(
    k: int, schedule: str, rho_0: float = RHO_0, total_steps: float = TOTAL_STEPS, hot: int = 0
) -> float:
    """``rho_k`` from the table of the design notes, in the paper's own parameterization."""
    if schedule == "constant":
        return rho_0
    s = total_steps
    j = min(max(k - hot, 0), s)
    if schedule == "exponential":
        alpha = (1 - rho_0) ** (1 / s)
        return max(0.0, 1 - (1 - rho_0) / alpha**j)
    if schedule == "exponential-temperature":
        c = (1 - rho_0) / (1 + rho_0)
        beta = c ** (1 / s)
        ratio = c / beta**j  # (1 - rho) / (1 + rho)
        return max(0.0, (1 - ratio) / (1 + ratio))
    if schedule == "linear-temperature":
        return rho_0 * (1 - j / s) / (1 - rho_0 * j / s)
    if schedule == "cosine-temperature":  # T(rho) / T(0) along half a cosine, T_0 to 1
        t_0 = (1 + rho_0) / (1 - rho_0)
        ratio = 1 + (t_0 - 1) * (1 + np.cos(np.pi * j / s)) / 2  # (1 + rho) / (1 - rho)
        return float((ratio - 1) / (ratio + 1))
    raise ValueError(schedule)


def reference_trajectory(
    rho: Callable[[int], float],
    num_steps: int = NUM_STEPS,
    lr: Callable[[int], float] | float = LR,
    weight_decay: float = 0.0,
    decoupled: bool = False,
) -> tuple[np.ndarray, list[float]]:
    """Parameters after every step (``num_steps x n``) and the mean of ``v**2`` per step.

    The momentum ``b = v / lr`` carries no learning rate, so a change of ``lr`` rescales the
    velocity as SGD's: ``b_k = rho_k b_{k-1} - (1 + rho_k) / 2 g_k``, ``x += lr_k b_k``.
    """
    x = X0.copy()
    b = np.zeros_like(x)
    xs, mean_sq = [], []
    for k in range(num_steps):
        lr_k = lr(k) if callable(lr) else lr
        g = gradient(x, k)
        if weight_decay and decoupled:
            x = x * (1 - lr_k * weight_decay)
        elif weight_decay:
            g = g + weight_decay * x
        r = rho(k)
        b = r * b - (1 + r) / 2 * g
        v = lr_k * b
        x = x + v
        xs.append(x)
        mean_sq.append(float(np.mean(v**2)))
    return np.array(xs), mean_sq


def torch_trajectory(
    num_steps: int = NUM_STEPS,
    lr: Callable[[int], float] | float = LR,
    dtype_name: str = "float64",
    **kwargs: object,
) -> np.ndarray:
    """The same problem with ``coolmomentum.torch.CoolMomentum`` (``kwargs`` go to it)."""
    import torch

    from coolmomentum.torch import CoolMomentum

    dtype = getattr(torch, dtype_name)
    x = torch.tensor(X0, dtype=dtype, requires_grad=True)
    opt = CoolMomentum([x], lr=lr(0) if callable(lr) else lr, **kwargs)  # type: ignore[arg-type]
    xs = []
    for k in range(num_steps):
        if callable(lr):
            opt.param_groups[0]["lr"] = lr(k)
        x.grad = torch.as_tensor(gradient(x.detach().numpy(), k), dtype=dtype)
        opt.step()
        xs.append(x.detach().numpy().copy())
    return np.array(xs)


def empty_window(rho: float) -> dict:
    """The statistics every port reports before its first step."""
    return {
        "step": 0,
        "rho": rho,
        "temperature": None,
        "temperature_sum": 0.0,
        "temperature_count": 0,
        "temperature_steps": 0,
    }


def callable_rho(step):
    """A schedule of the user's own: works on numbers and on any framework's scalars."""
    return 0.5 + 0.4 * 0.8**step


def schedule_case(schedule: str) -> tuple[dict, Callable[[int], float]]:
    """The optimizer arguments for ``schedule`` (or ``"callable"``) and its reference rho."""
    if schedule == "callable":
        return {"schedule": callable_rho}, callable_rho
    kwargs = {
        "rho_0": RHO_0,
        "total_steps": None if schedule == "constant" else TOTAL_STEPS,
        "schedule": schedule,
        "hot_steps": HOT_STEPS,
    }
    return kwargs, lambda k: reference_rho(k, schedule, hot=HOT_STEPS)
