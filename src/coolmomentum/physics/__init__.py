"""Annealing many-particle potentials with CoolMomentum: Lennard-Jones clusters and the
Thomson problem, batched over independent replicas.

``positions`` are tensors of shape ``(replicas, particles, 3)``. :func:`anneal` runs
CoolMomentum with Langevin noise on all replicas at once and quenches them with batched FIRE;
:func:`annealed_hopping` is a global optimizer, basin hopping with a CoolMomentum anneal in
every hop and batched L-BFGS quenches. Each takes its settings as keywords or as one checked
object (:class:`AnnealSettings`, :class:`HoppingSettings`). ``coolmomentum.physics.ase``
(needs ``ase``) anneals any ASE calculator.
"""

from .anneal import AnnealResult, AnnealSettings, anneal
from .hopping import HoppingResult, HoppingSettings, annealed_hopping
from .langevin import noise_std_for_temperature, temperature_for_noise_std
from .lj import GLOBAL_MINIMA, LennardJonesCluster, lj_energy, lj_energy_and_forces
from .minimize import Potential, QuenchResult, fire, lbfgs
from .thomson import MINIMAL_ENERGIES, ThomsonProblem, thomson_energy, thomson_energy_and_gradient

__all__ = [
    "GLOBAL_MINIMA",
    "MINIMAL_ENERGIES",
    "AnnealResult",
    "AnnealSettings",
    "HoppingResult",
    "HoppingSettings",
    "LennardJonesCluster",
    "Potential",
    "QuenchResult",
    "ThomsonProblem",
    "anneal",
    "annealed_hopping",
    "fire",
    "lbfgs",
    "lj_energy",
    "lj_energy_and_forces",
    "noise_std_for_temperature",
    "temperature_for_noise_std",
    "thomson_energy",
    "thomson_energy_and_gradient",
]
