"""The Thomson problem: ``N`` unit charges on the unit sphere, batched over replicas.

The energy of a configuration is the Coulomb energy ``E = sum_{i<j} 1 / |u_i - u_j|`` of the
unit vectors ``u_i = x_i / |x_i|``. The positions ``x`` are free 3-vectors that the problem
projects back onto the sphere after each step (:meth:`ThomsonProblem.project_`); the gradient
is the tangential one, ``(I - u u^T) dE/du / |x|``, so the radial direction stays flat.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._batch import check_count, check_positions, pair_indices, scatter_pair_forces

__all__ = ["MINIMAL_ENERGIES", "ThomsonProblem", "thomson_energy", "thomson_energy_and_gradient"]

MINIMAL_ENERGIES: dict[int, float] = {
    2: 0.500000000,
    3: 1.732050808,
    4: 3.674234614,
    5: 6.474691495,
    6: 9.985281374,
    7: 14.452977414,
    8: 19.675287861,
    9: 25.759986531,
    10: 32.716949460,
    11: 40.596450510,
    12: 49.165253058,
    13: 58.853230612,
    14: 69.306363297,
    15: 80.670244114,
    16: 92.911655302,
    17: 106.050404829,
    18: 120.084467447,
    19: 135.089467557,
    20: 150.881568334,
    21: 167.641622399,
    22: 185.287536149,
    23: 203.930190663,
    24: 223.347074052,
    25: 243.812760299,
    26: 265.133326317,
    27: 287.302615033,
    28: 310.491542358,
    29: 334.634439920,
    30: 359.603945904,
    31: 385.530838063,
    32: 412.261274651,
}
"""Lowest known energies of ``N`` unit charges on the unit sphere, ``N -> E``.

The values tabulated by the Wikipedia article "Thomson problem" (after T. Erber,
G. M. Hockney, *Equilibrium configurations of N equal charges on a sphere*, J. Phys. A 24,
L1369 (1991), and D. J. Wales, S. Ulker, *Structure and dynamics of spherical crystals
characterized for the Thomson problem*, Phys. Rev. B 74, 212101 (2006)). For ``N <= 6`` and
``N = 12`` they are proven minima; the rest are the putative global minima, each reproduced
here by repeated random starts and quenches.
"""


def thomson_energy(positions: Tensor) -> Tensor:
    """The Coulomb energy of each replica's charges projected onto the unit sphere, ``(R,)``."""
    check_positions(positions)
    return _energy_and_gradient(positions, need_gradient=False)[0]


def thomson_energy_and_gradient(positions: Tensor) -> tuple[Tensor, Tensor]:
    """Energies ``(R,)`` and the gradient with respect to ``positions``, ``(R, N, 3)``."""
    check_positions(positions)
    if not bool((positions.norm(dim=-1) > 0).all()):
        raise ValueError("positions must be nonzero vectors (they are projected onto the sphere)")
    energy, gradient = _energy_and_gradient(positions, need_gradient=True)
    assert gradient is not None
    return energy, gradient


def _energy_and_gradient(positions: Tensor, *, need_gradient: bool) -> tuple[Tensor, Tensor | None]:
    n = positions.shape[1]
    length = positions.norm(dim=-1, keepdim=True)
    u = positions / length
    i, j = pair_indices(n, positions.device)
    diff = u[:, i] - u[:, j]
    inv_r = diff.square().sum(-1).rsqrt()
    energy = inv_r.sum(-1)
    if not need_gradient:
        return energy, None
    # dE/du_i = -sum_j (u_i - u_j) / r**3; the "force" -dE/du is what scatter_pair_forces sums.
    force_u = scatter_pair_forces((inv_r * inv_r * inv_r).unsqueeze(-1) * diff, i, j, n)
    tangential = force_u - (force_u * u).sum(-1, keepdim=True) * u
    return energy, tangential.div_(length).neg_()


class ThomsonProblem:
    """``charges`` unit charges on the unit sphere as a problem to anneal (see :mod:`.anneal`)."""

    name = "Thomson"
    symbol = "H"
    # Projected back onto the unit sphere after every step: no particle can get far.
    escape_radius: float | None = None

    def __init__(self, charges: int) -> None:
        self.particles = check_count(charges, "charges", 2)
        self.known_minimum: float | None = MINIMAL_ENERGIES.get(charges)
        self.label = f"Thomson{charges}"

    def energy(self, positions: Tensor) -> Tensor:
        return _energy_and_gradient(positions, need_gradient=False)[0]

    def energy_and_gradient(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        energy, gradient = _energy_and_gradient(positions, need_gradient=True)
        assert gradient is not None
        return energy, gradient

    def random_positions(
        self,
        replicas: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Points uniform on the sphere, drawn on the CPU (the same on every device)."""
        check_count(replicas, "replicas", 1)
        x = torch.randn(replicas, self.particles, 3, generator=generator, dtype=torch.float64)
        x /= x.norm(dim=-1, keepdim=True)
        return x.to(device=device, dtype=dtype)

    def project_(self, positions: Tensor) -> None:
        positions /= positions.norm(dim=-1, keepdim=True)
