"""Checks and helpers shared by the batched potentials and runs; positions are ``(R, N, 3)``."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .._numbers import check_number


def check_count(value: object, name: str, minimum: int) -> int:
    """``value`` as an ``int`` >= ``minimum``, or a ValueError naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_positive(value: object, name: str, *, allow_zero: bool = False) -> float:
    """``value`` as a finite ``float`` > 0 (or >= 0), or a ValueError naming ``name``."""
    return float(check_number(name, value, positive=not allow_zero, finite=True))


def check_positions(
    positions: object, name: str = "positions", *, particles: int | None = None
) -> Tensor:
    """A floating tensor of shape ``(R, N, 3)`` with ``R >= 1``, ``N >= 2`` and finite entries."""
    if not isinstance(positions, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (replicas, particles, 3)")
    if positions.ndim != 3 or positions.shape[-1] != 3:
        raise ValueError(
            f"{name} must have shape (replicas, particles, 3), got {tuple(positions.shape)}"
        )
    if not positions.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {positions.dtype}")
    replicas, n = positions.shape[0], positions.shape[1]
    if replicas < 1:
        raise ValueError(f"{name} must hold at least one replica, got {tuple(positions.shape)}")
    if n < 2:
        raise ValueError(f"{name} must hold at least 2 particles per replica, got {n}")
    if particles is not None and n != particles:
        raise ValueError(f"{name} must hold {particles} particles per replica, got {n}")
    if not bool(torch.isfinite(positions).all()):
        raise ValueError(f"{name} must be finite, but holds NaN or infinite coordinates")
    return positions


def independent_seeds(seed: int, count: int) -> list[int]:
    """``count`` seeds of independent random streams, drawn from ``seed`` (numpy's
    ``SeedSequence``): one for each stream of a run, so that changing how much one stream
    draws leaves the others alone."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(count, dtype=np.uint64)]


def pair_indices(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The ``n (n - 1) / 2`` pairs ``i < j`` as two index tensors."""
    index = torch.triu_indices(n, n, offset=1, device=device)
    return index[0], index[1]


def scatter_pair_forces(pair_force: Tensor, i: Tensor, j: Tensor, n: int) -> Tensor:
    """Per-particle sums: ``pair_force[:, p]`` acts on ``i[p]``, its opposite on ``j[p]``."""
    forces = pair_force.new_zeros(pair_force.shape[0], n, 3)
    forces.index_add_(1, i, pair_force)
    forces.index_add_(1, j, pair_force, alpha=-1.0)
    return forces


def cap_forces_(gradient: Tensor, max_force: float | None) -> Tensor:
    """Scale each particle's gradient in place down to norm ``max_force`` where it is larger
    (``None``: no cap); returns ``gradient``."""
    if max_force is not None:
        norm = gradient.norm(dim=-1, keepdim=True)
        gradient.mul_((max_force / norm.clamp(min=torch.finfo(norm.dtype).tiny)).clamp(max=1.0))
    return gradient
