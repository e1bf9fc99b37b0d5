"""Lennard-Jones clusters in reduced units, batched over independent replicas.

With ``epsilon = sigma = 1`` the energy of a cluster of ``N`` atoms is::

    E = 4 * sum_{i<j} (r_ij**-12 - r_ij**-6)

(no cutoff; a pair at the minimum ``r = 2**(1/6)`` contributes ``-1``). Every function takes
positions of shape ``(R, N, 3)``: ``R`` replicas of the same cluster, evaluated at once.

An optional *confining sphere* keeps hot atoms from evaporating while the cluster is annealed:
an atom farther than ``radius`` from the cluster's centre of mass pays a harmonic penalty::

    U_wall = stiffness / 2 * sum_i max(0, |x_i - c| - radius)**2,     c = mean_i x_i

Measured from the centre of mass, the wall leaves the energy invariant under translations; it
is zero for any compact cluster well inside the sphere, so minima inside keep their energy.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from ._batch import (
    check_count,
    check_positions,
    check_positive,
    pair_indices,
    scatter_pair_forces,
)

__all__ = [
    "GLOBAL_MINIMA",
    "LennardJonesCluster",
    "confinement_energy_and_forces",
    "default_confine_radius",
    "lj_energy",
    "lj_energy_and_forces",
    "random_cluster",
]

GLOBAL_MINIMA: dict[int, float] = {
    2: -1.000000,
    3: -3.000000,
    4: -6.000000,
    5: -9.103852,
    6: -12.712062,
    7: -16.505384,
    8: -19.821489,
    9: -24.113360,
    10: -28.422532,
    11: -32.765970,
    12: -37.967600,
    13: -44.326801,
    14: -47.845157,
    15: -52.322627,
    16: -56.815742,
    17: -61.317995,
    18: -66.530949,
    19: -72.659782,
    20: -77.177043,
    21: -81.684571,
    22: -86.809782,
    23: -92.844472,
    24: -97.348815,
    25: -102.372663,
    26: -108.315616,
    27: -112.873584,
    28: -117.822402,
    29: -123.587371,
    30: -128.286571,
    31: -133.586422,
    32: -139.635524,
    33: -144.842719,
    34: -150.044528,
    35: -155.756643,
    36: -161.825363,
    37: -167.033672,
    38: -173.928427,
}
"""Putative global minimum energies of LJ clusters, ``N -> E`` (reduced units, 6 decimals).

From the Cambridge Cluster Database (D. J. Wales, J. P. K. Doye, *Global optimization by
basin-hopping and the lowest energy structures of Lennard-Jones clusters containing up to 110
atoms*, J. Phys. Chem. A 101, 5111 (1997); https://www-wales.ch.cam.ac.uk/CCD.html).
``N = 38`` is the truncated octahedron, lower than the icosahedral funnel's ``-173.252378``.
"""


def lj_energy(positions: Tensor) -> Tensor:
    """The Lennard-Jones energy of each replica, shape ``(R,)``."""
    check_positions(positions)
    return _lj_energy_and_forces(positions, need_forces=False)[0]


def lj_energy_and_forces(
    positions: Tensor, *, confine_radius: float | None = None, wall_stiffness: float = 10.0
) -> tuple[Tensor, Tensor]:
    """Energies ``(R,)`` and analytic forces ``-dE/dx`` ``(R, N, 3)``, wall included if asked.

    ``confine_radius`` switches on the confining sphere (see the module docstring) of that
    radius around each replica's centre of mass, with spring constant ``wall_stiffness``.
    """
    check_positions(positions)
    energy, forces = _lj_energy_and_forces(positions, need_forces=True)
    assert forces is not None
    if confine_radius is not None:
        radius = check_positive(confine_radius, "confine_radius")
        stiffness = check_positive(wall_stiffness, "wall_stiffness")
        wall_energy, wall_forces = confinement_energy_and_forces(positions, radius, stiffness)
        energy = energy + wall_energy
        forces = forces + wall_forces
    return energy, forces


def _lj_energy_and_forces(positions: Tensor, *, need_forces: bool) -> tuple[Tensor, Tensor | None]:
    n = positions.shape[1]
    i, j = pair_indices(n, positions.device)
    diff = positions[:, i] - positions[:, j]  # (R, P, 3): x_i - x_j for each pair i < j
    inv_r2 = diff.square().sum(-1).reciprocal()
    inv_r6 = inv_r2 * inv_r2 * inv_r2
    energy = 4.0 * (inv_r6 * (inv_r6 - 1.0)).sum(-1)
    if not need_forces:
        return energy, None
    # -dU/dr * (x_i - x_j) / r with dU/dr = -24 (2 r**-13 - r**-7): the force on atom i.
    magnitude = 24.0 * inv_r6 * (2.0 * inv_r6 - 1.0) * inv_r2
    return energy, scatter_pair_forces(magnitude.unsqueeze(-1) * diff, i, j, n)


def confinement_energy_and_forces(
    positions: Tensor, radius: float, stiffness: float
) -> tuple[Tensor, Tensor]:
    """The confining sphere's energy ``(R,)`` and forces ``(R, N, 3)`` (module docstring)."""
    relative = positions - positions.mean(1, keepdim=True)
    distance = relative.norm(dim=-1)
    excess = (distance - radius).clamp(min=0.0)
    energy = 0.5 * stiffness * excess.square().sum(-1)
    # d/dx_j: k e_j u_j, minus the mean of those terms through the centre of mass.
    push = (stiffness * excess / distance.clamp(min=torch.finfo(distance.dtype).tiny)).unsqueeze(-1)
    gradient = push * relative
    return energy, gradient.mean(1, keepdim=True) - gradient


def default_confine_radius(atoms: int) -> float:
    """The radius of a sphere that ``atoms`` fill at number density 0.2: ``(3 N / 0.8 pi)**(1/3)``.

    A dilute gas (the liquid's density is about 0.8), so a hot cluster can rearrange freely,
    yet atoms cannot wander off; compact clusters (radius about ``0.6 N**(1/3)``) lie well
    inside.
    """
    return (3.0 * atoms / (4.0 * math.pi * 0.2)) ** (1.0 / 3.0)


def random_cluster(
    replicas: int,
    atoms: int,
    radius: float,
    *,
    min_distance: float = 0.9,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Random starting clusters, uniform in a ball of ``radius``, no two atoms nearer than
    ``min_distance`` (so that the first forces are moderate). Shape ``(replicas, atoms, 3)``.

    Atoms are placed one at a time by rejection, for all replicas at once; drawn on the CPU
    from ``generator``, so a seed gives the same clusters on every device.
    """
    check_count(replicas, "replicas", 1)
    check_count(atoms, "atoms", 2)
    check_positive(radius, "radius")
    check_positive(min_distance, "min_distance", allow_zero=True)
    x = torch.zeros(replicas, atoms, 3, dtype=torch.float64)
    for a in range(atoms):
        pending = torch.arange(replicas)
        for _ in range(10_000):
            direction = torch.randn(len(pending), 3, generator=generator, dtype=torch.float64)
            direction /= direction.norm(dim=-1, keepdim=True)
            r = radius * torch.rand(len(pending), 1, generator=generator, dtype=torch.float64) ** (
                1.0 / 3.0
            )
            candidate = direction * r
            x[pending, a] = candidate
            if a == 0:
                break
            nearest = (x[pending, :a] - candidate.unsqueeze(1)).norm(dim=-1).amin(-1)
            pending = pending[nearest < min_distance]
            if len(pending) == 0:
                break
        else:
            raise ValueError(
                f"radius={radius} is too small to place {atoms} atoms at least "
                f"min_distance={min_distance} apart"
            )
    return x.to(device=device, dtype=dtype)


class LennardJonesCluster:
    """The LJ cluster of ``atoms`` atoms as a problem to anneal (see :mod:`.anneal`).

    ``confine_radius`` is the confining sphere's radius (``"auto"``:
    :func:`default_confine_radius`; ``None``: no wall). ``energy`` reports the pure LJ energy;
    ``energy_and_gradient``, what the optimizers descend, includes the wall. ``escape_radius``
    is twice the wall's radius: an atom beyond it was thrown through the wall, which holds any
    thermal excursion to a fraction of ``sigma`` (``None`` without a wall, where atoms may
    evaporate).
    """

    name = "LJ"
    symbol = "Ar"

    def __init__(
        self,
        atoms: int,
        *,
        confine_radius: float | Literal["auto"] | None = "auto",
        wall_stiffness: float = 10.0,
    ) -> None:
        self.particles = check_count(atoms, "atoms", 2)
        if confine_radius == "auto":
            confine_radius = default_confine_radius(atoms)
        elif confine_radius is not None:
            check_positive(confine_radius, "confine_radius")
        self.confine_radius: float | None = confine_radius
        self.escape_radius: float | None = None if confine_radius is None else 2 * confine_radius
        self.wall_stiffness = check_positive(wall_stiffness, "wall_stiffness")
        self.known_minimum: float | None = GLOBAL_MINIMA.get(atoms)
        self.label = f"LJ{atoms}"

    def energy(self, positions: Tensor) -> Tensor:
        return _lj_energy_and_forces(positions, need_forces=False)[0]

    def energy_and_gradient(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        energy, forces = _lj_energy_and_forces(positions, need_forces=True)
        assert forces is not None
        if self.confine_radius is not None:
            wall_energy, wall_forces = confinement_energy_and_forces(
                positions, self.confine_radius, self.wall_stiffness
            )
            energy = energy + wall_energy
            forces = forces + wall_forces
        return energy, forces.neg_()

    def random_positions(
        self,
        replicas: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        radius = self.confine_radius or default_confine_radius(self.particles)
        return random_cluster(
            replicas, self.particles, radius, generator=generator, dtype=dtype, device=device
        )

    def project_(self, positions: Tensor) -> None:
        """Unconstrained: nothing to do."""
