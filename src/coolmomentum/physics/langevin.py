"""Langevin dynamics of many replicas with CoolMomentum: the part shared by :func:`.anneal.anneal`
and :func:`.hopping.annealed_hopping`.

CoolMomentum integrates Langevin dynamics: ``noise_std`` adds Gaussian noise to every force
component (the random force) and ``rho`` (the friction) is cooled from ``rho_0`` to 0. At a
fixed ``rho`` the velocity ``v = x_{k+1} - x_k`` of a free coordinate settles at
``E[v**2] = lr**2 noise_std**2 (1 + rho) / (4 (1 - rho))``, which for unit mass and time step
``sqrt(lr)`` is the temperature::

    kT = E[v**2] / lr = lr * noise_std**2 / 4 * (1 + rho) / (1 - rho)

so cooling ``rho`` from 0.99 to 0 lowers ``kT`` 199-fold.

A time step that suits a cluster at ``kT`` 0.5 cannot resolve the rare head-on collision: an
atom that arrives too fast lands deep in the ``r**-12`` wall, whose force then throws it (and
the replica's temperature) out by many orders of magnitude. Each particle's force is therefore
capped at ``max_force`` (its gradient scaled down to that norm), which bounds the momentum one
step can transfer, and every replica is watched over the whole run (:class:`ReplicaWatch`): one
whose kT at any step exceeds a bound, or one of whose particles gets farther than the
potential's ``escape_radius`` from the replica's centre, is reported as diverged.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..schedules import Schedule, temperature_ratio
from ..torch import CoolMomentum
from ._batch import cap_forces_, check_positive
from .minimize import Potential

__all__ = [
    "DIVERGED_TEMPERATURE_FACTOR",
    "ReplicaWatch",
    "check_cooling",
    "langevin_optimizer",
    "langevin_step_",
    "noise_std_for_temperature",
    "temperature_for_noise_std",
]

DIVERGED_TEMPERATURE_FACTOR = 20.0
"""A replica whose kT at one step exceeds this multiple of the run's temperature scale has
diverged. A cluster condensing from the random start heats itself to a few times the starting
kT; a replica thrown out by a collision the step could not resolve reaches 10**3 to 10**21
times."""

BAND = (0.1, 0.9)
"""The quantiles over replicas that bound the reported temperature band."""


def noise_std_for_temperature(temperature: float, lr: float, rho: float) -> float:
    """The ``noise_std`` that holds a free coordinate at ``kT = temperature`` at ``rho``."""
    check_positive(temperature, "temperature", allow_zero=True)
    check_positive(lr, "lr")
    temperature_ratio(rho)  # checks that rho is in [0, 1), as every schedule's rho is
    return math.sqrt(4.0 * temperature * (1.0 - rho) / (lr * (1.0 + rho)))


def temperature_for_noise_std(noise_std: float, lr: float, rho: float) -> float:
    """``kT = lr noise_std**2 (1 + rho) / (4 (1 - rho))``: the inverse of the function above."""
    return lr * noise_std**2 * (1.0 + rho) / (4.0 * (1.0 - rho))


def check_cooling(rho_0: float, schedule: str, hot_steps: int = 0) -> None:
    """Raise the ValueError of :meth:`coolmomentum.schedules.Schedule.create`, which checks
    every CoolMomentum schedule, for a bad ``rho_0``, ``schedule`` or ``hot_steps``. Those
    checks do not depend on the number of cooling steps, which the caller checks: any positive
    number stands in for it here."""
    cooling_steps = None if schedule == "constant" else 1
    Schedule.create(rho_0, cooling_steps, schedule=schedule, hot_steps=hot_steps)


def langevin_optimizer(
    x: Tensor,
    *,
    steps: int,
    lr: float,
    rho_0: float,
    schedule: str,
    noise_std: float,
    generator: torch.Generator,
    hot_steps: int = 0,
) -> CoolMomentum:
    """CoolMomentum for a Langevin run of ``steps`` steps of the replicas ``x``: ``rho`` is
    held at ``rho_0`` for ``hot_steps``, then cooled along ``schedule`` to 0 at the last step;
    the random force is drawn from ``generator``."""
    return CoolMomentum(
        [x],
        lr=lr,
        rho_0=rho_0,
        total_steps=None if schedule == "constant" else steps - hot_steps,
        schedule=schedule,
        hot_steps=hot_steps,
        noise_std=noise_std,
        generator=generator,
        track_temperature=False,  # a ReplicaWatch measures each replica's temperature instead
    )


class ReplicaWatch:
    """Each replica's temperature and extent over a Langevin run, kept on the device.

    Call :meth:`observe` after every step with the positions before and after it: the step's
    velocity ``v`` gives the replica's ``kT`` (the mean over its coordinates of ``v**2 / lr``)
    and its extent (the largest distance of a particle from the replica's centre). The peaks
    over the whole run decide :meth:`diverged`; :meth:`close_window` summarizes the steps
    since its previous call as quantiles over replicas.
    """

    def __init__(
        self,
        replicas: int,
        lr: float,
        *,
        temperature_bound: float,
        radius_bound: float | None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> None:
        self.lr = lr
        self.temperature_bound = temperature_bound
        self.radius_bound = math.inf if radius_bound is None else radius_bound
        self.peak_temperature = torch.zeros(replicas, dtype=dtype, device=device)
        self.peak_radius = torch.zeros(replicas, dtype=dtype, device=device)
        self._window = torch.zeros(replicas, dtype=dtype, device=device)
        self._window_steps = 0
        self._quantiles = torch.tensor([BAND[0], 0.5, BAND[1]], dtype=dtype, device=device)

    def observe(self, before: Tensor, after: Tensor) -> None:
        temperature = (after - before).square().mean((1, 2)).div_(self.lr)
        self._window += temperature
        self._window_steps += 1
        torch.maximum(self.peak_temperature, temperature, out=self.peak_temperature)
        extent = (after - after.mean(1, keepdim=True)).norm(dim=-1).amax(-1)
        torch.maximum(self.peak_radius, extent, out=self.peak_radius)

    def close_window(self) -> Tensor:
        """The low band edge, median and high band edge over replicas of each replica's mean
        ``kT`` since the previous call, ``(3,)``."""
        mean = self._window / max(self._window_steps, 1)
        self._window.zero_()
        self._window_steps = 0
        return torch.quantile(mean, self._quantiles)

    def diverged(self) -> Tensor:
        """Whether each replica ever exceeded the temperature or the radius bound, ``(R,)``."""
        return (self.peak_temperature > self.temperature_bound) | (
            self.peak_radius > self.radius_bound
        )


def langevin_step_(
    potential: Potential,
    x: Tensor,
    optimizer: CoolMomentum,
    max_force: float | None,
    watch: ReplicaWatch,
) -> Tensor:
    """One step of CoolMomentum's Langevin dynamics for the replicas ``x``, the optimizer's
    parameter, in place: forces capped at ``max_force``, the step observed by ``watch``,
    the positions projected onto the problem's constraint. Returns the energies before it."""
    energy, gradient = potential.energy_and_gradient(x)
    x.grad = cap_forces_(gradient, max_force)
    before = x.clone()
    optimizer.step()
    watch.observe(before, x)
    potential.project_(x)
    return energy
