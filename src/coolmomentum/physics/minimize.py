"""Batched local minimization (quenching) of many replicas at once with FIRE.

FIRE (E. Bitzek, P. Koskinen, F. Gähler, M. Moseler, P. Gumbsch, *Structural relaxation made
simple*, Phys. Rev. Lett. 97, 170201 (2006)) is damped molecular dynamics that mixes the
velocity toward the force and restarts from rest whenever it goes uphill. Each replica keeps
its own time step and mixing factor; a replica stops moving once its largest per-particle force
is below ``fmax``, while the others go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from ._batch import check_count, check_positions, check_positive

__all__ = ["Potential", "QuenchResult", "fire"]

# FIRE's constants, as published.
_N_MIN, _F_INC, _F_DEC, _ALPHA_START, _F_ALPHA = 5, 1.1, 0.5, 0.1, 0.99


class Potential(Protocol):
    """A many-particle problem, batched over replicas: positions are ``(R, N, 3)``."""

    name: str
    label: str
    symbol: str
    particles: int
    known_minimum: float | None

    def energy(self, positions: Tensor) -> Tensor:
        """The reported energy of each replica, ``(R,)``."""
        ...

    def energy_and_gradient(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """The energy that is minimized ``(R,)`` and its gradient ``(R, N, 3)``."""
        ...

    def random_positions(
        self,
        replicas: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Random starting configurations, ``(replicas, N, 3)``."""
        ...

    def project_(self, positions: Tensor) -> None:
        """Put ``positions`` back on the problem's constraint surface, in place."""
        ...


@dataclass
class QuenchResult:
    """Minimized positions ``(R, N, 3)``, their reported energies ``(R,)``, the largest
    per-particle force ``(R,)``, whether it fell below ``fmax`` ``(R,)``, and the number of
    energy-and-gradient evaluations each replica used ``(R,)``."""

    positions: Tensor
    energies: Tensor
    fmax: Tensor
    converged: Tensor
    evaluations: Tensor


@torch.no_grad()
def fire(
    potential: Potential,
    positions: Tensor,
    *,
    fmax: float = 1e-4,
    max_steps: int = 5000,
    dt: float = 0.02,
    dt_max: float = 0.05,
    max_displacement: float = 0.1,
) -> QuenchResult:
    """Quench every replica in ``positions`` to a local minimum of ``potential``.

    Args:
        potential: the problem (see :class:`Potential`).
        positions: ``(R, N, 3)`` starting points; not modified.
        fmax: convergence threshold on each replica's largest per-particle gradient norm.
        max_steps: at most this many steps (gradient evaluations) per replica.
        dt, dt_max: FIRE's initial and largest time step (unit mass); the defaults suit LJ
            clusters in reduced units and Thomson charges on the unit sphere.
        max_displacement: no particle moves farther than this in one step.

    The FIRE constants are those of Bitzek et al.: ``N_min = 5``, ``f_inc = 1.1``,
    ``f_dec = 0.5``, ``alpha_start = 0.1``, ``f_alpha = 0.99``.
    """
    check_positions(positions, particles=potential.particles)
    check_positive(fmax, "fmax")
    check_count(max_steps, "max_steps", 0)
    check_positive(dt, "dt")
    check_positive(dt_max, "dt_max")
    check_positive(max_displacement, "max_displacement")
    x = positions.clone()
    replicas = x.shape[0]
    v = torch.zeros_like(x)
    step = torch.full((replicas,), dt, dtype=x.dtype, device=x.device)
    alpha = torch.full_like(step, _ALPHA_START)
    downhill = torch.zeros(replicas, dtype=torch.long, device=x.device)
    evaluations = torch.zeros(replicas, dtype=torch.long, device=x.device)
    largest = torch.full_like(step, torch.inf)
    # Only the replicas still moving are evaluated: the batch shrinks as they converge.
    active = torch.arange(replicas, device=x.device)
    for iteration in range(max_steps + 1):
        xa = x[active]
        _, gradient = potential.energy_and_gradient(xa)
        evaluations[active] += 1
        largest[active] = gradient.norm(dim=-1).amax(-1)
        moving = largest[active] >= fmax
        if iteration == max_steps or not bool(moving.any()):
            break
        active, xa, gradient = active[moving], xa[moving], gradient[moving]
        force = gradient.neg_()
        va, h, a = v[active], step[active], alpha[active]
        going = (force * va).sum((1, 2)) > 0
        v_norm = va.norm(dim=(1, 2), keepdim=True)
        f_norm = force.norm(dim=(1, 2), keepdim=True).clamp(min=torch.finfo(x.dtype).tiny)
        mixed = (1 - a.view(-1, 1, 1)) * va + a.view(-1, 1, 1) * v_norm * force / f_norm
        va = torch.where(going.view(-1, 1, 1), mixed, torch.zeros_like(va))
        speed_up = going & (downhill[active] > _N_MIN)
        h = torch.where(speed_up, (h * _F_INC).clamp(max=dt_max), h)
        h = torch.where(going, h, h * _F_DEC)
        a = torch.where(speed_up, a * _F_ALPHA, a)
        alpha[active] = torch.where(going, a, torch.full_like(a, _ALPHA_START))
        downhill[active] = torch.where(going, downhill[active] + 1, 0)
        step[active] = h
        va = va + h.view(-1, 1, 1) * force
        v[active] = va
        move = h.view(-1, 1, 1) * va
        longest = move.norm(dim=-1).amax(-1).clamp(min=torch.finfo(x.dtype).tiny)
        xa = xa + move * (max_displacement / longest).clamp(max=1.0).view(-1, 1, 1)
        potential.project_(xa)
        x[active] = xa
    return QuenchResult(
        positions=x,
        energies=potential.energy(x),
        fmax=largest,
        converged=largest < fmax,
        evaluations=evaluations,
    )
