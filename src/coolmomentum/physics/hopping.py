"""Annealed basin hopping: a global optimizer that anneals with CoolMomentum between quenches,
batched over independent replicas.

Basin hopping (D. J. Wales, J. P. K. Doye, J. Phys. Chem. A 101, 5111 (1997)) walks among
local minima: from its current minimum a walker takes a random step, quenches to the nearest
minimum and accepts it by the Metropolis rule at a temperature ``T``. Here every replica is a
walker, and each hop is, for all replicas at once:

1. *displace*: every particle moves by a uniform random vector in ``[-s, s]**3``; each replica
   adapts its own ``s`` toward an acceptance of one half, as GMIN does;
2. *anneal*: ``anneal_steps`` steps of CoolMomentum Langevin dynamics from rest, started at
   ``kT = temperature`` and cooled from ``rho_0`` to 0 along ``schedule``, with the force cap of
   :func:`.anneal.anneal`: the strained structure relaxes through noisy, strongly damped
   dynamics rather than straight downhill (``anneal_steps=0`` gives plain basin hopping);
3. *quench* with batched L-BFGS (:func:`.minimize.lbfgs`);
4. *accept* the new minimum with probability ``min(1, exp(-(E_new - E_current) / T))``.

Every energy-and-gradient evaluation is counted per replica; a run spends a ``budget`` summed
over its replicas and can stop at the first hop in which a replica reaches the potential's
known minimum.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import _plot
from ._batch import check_count, check_positive, independent_seeds
from .langevin import (
    DIVERGED_TEMPERATURE_FACTOR,
    ReplicaWatch,
    check_cooling,
    langevin_optimizer,
    langevin_step_,
    noise_std_for_temperature,
)
from .minimize import Potential, QuenchResult, lbfgs
from .results import ReplicaMinima

__all__ = ["HoppingResult", "HoppingSettings", "annealed_hopping"]

# GMIN's step adaptation: every `_ADAPT_EVERY` hops, a replica that accepted more than
# `_TARGET_ACCEPTANCE` of them widens its step by 1 / `_STEP_FACTOR`, otherwise narrows it.
_ADAPT_EVERY, _TARGET_ACCEPTANCE, _STEP_FACTOR = 10, 0.5, 0.9


@dataclass(frozen=True)
class HoppingSettings:
    """The settings of :func:`annealed_hopping`, checked when made: a bad one is a ValueError
    that names it and the values it may take.

    Attributes:
        replicas: independent walkers, run as one batch from their own random starts.
        budget: stop once the evaluations summed over replicas reach this (the hop under way
            is finished).
        step: each replica's first displacement half-width ``s``, adapted as it goes (``0``:
            no displacement, each hop anneals from the current minimum: reheat and cool).
        anneal_steps: CoolMomentum steps per hop (``0``: displace and quench, plain basin
            hopping).
        temperature: the starting ``kT`` of each anneal, which sets the random force.
        lr, rho_0, schedule: CoolMomentum's step ``dt**2`` and cooling over ``anneal_steps``.
            The defaults are the measured best of ``benchmarks/lj_clusters.py --variants``: 10
            steps from kT 0.1 at ``rho_0 = 0.5`` (strong friction) cost no more than the
            quench they shorten; longer, hotter or less damped anneals find the minimum less
            often per evaluation.
        max_force: cap on each particle's force while annealing (``None``: no cap).
        acceptance_temperature: ``T`` of the Metropolis rule, in energy units.
        fmax: each quench stops when the largest per-particle force is below this.
        quench_steps: at most this many L-BFGS steps per quench.
        tolerance: a minimum within this of ``potential.known_minimum`` is a hit.
        stop_at_minimum: end after the first hop with a hit (where a minimum is known).
        seed: seeds the starts, the displacements, the acceptance and the noise.
    """

    replicas: int = 16
    budget: int = 100_000
    step: float = 0.4
    anneal_steps: int = 10
    temperature: float = 0.1
    lr: float = 1e-3
    rho_0: float = 0.5
    schedule: str = "linear-temperature"
    max_force: float | None = 100.0
    acceptance_temperature: float = 0.8
    fmax: float = 1e-2
    quench_steps: int = 2000
    tolerance: float = 1e-3
    stop_at_minimum: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_count(self.replicas, "replicas", 1)
        check_count(self.budget, "budget", 1)
        check_positive(self.step, "step", allow_zero=True)
        check_count(self.anneal_steps, "anneal_steps", 0)
        check_positive(self.temperature, "temperature", allow_zero=True)
        check_positive(self.lr, "lr")
        check_cooling(self.rho_0, self.schedule)
        if self.max_force is not None:
            check_positive(self.max_force, "max_force")
        check_positive(self.acceptance_temperature, "acceptance_temperature")
        check_positive(self.fmax, "fmax")
        check_count(self.quench_steps, "quench_steps", 1)
        check_positive(self.tolerance, "tolerance")
        check_count(self.seed, "seed", 0)

    @property
    def noise_std(self) -> float:
        """The random force that starts each anneal at ``kT = temperature``."""
        return noise_std_for_temperature(self.temperature, self.lr, self.rho_0)

    @property
    def temperature_bound(self) -> float:
        """A replica whose ``kT`` at one annealing step exceeds this has diverged. A displaced
        structure releases its strain as heat, so the walk's energy scale, the Metropolis
        temperature, bounds the anneal's ``kT`` too."""
        return DIVERGED_TEMPERATURE_FACTOR * max(self.temperature, self.acceptance_temperature)


@dataclass
class HoppingResult(ReplicaMinima):
    """What :func:`annealed_hopping` found. Tensors are on the CPU.

    ``energies`` and ``positions`` are each replica's lowest minimum ``(R,)`` and ``(R, N, 3)``;
    ``evaluations`` counts each replica's energy-and-gradient evaluations (displacements cost
    none; each annealing step and each quench step costs one). ``first_hit_evaluations`` is
    the number of evaluations summed over all replicas up to the end of the hop in which a
    replica first came within ``settings.tolerance`` of the known minimum (``None``: none
    did); ``first_hit_by_replica`` ``(R,)`` is each replica's own count at its first hit
    (``-1``: none), which describes the walkers as independent runs. ``trace_evaluations``
    and ``trace_lowest_energy`` give, after the first quench and after each hop, the
    evaluations spent so far and the lowest minimum so far. ``diverged`` marks replicas whose
    annealing ever exceeded ``settings.temperature_bound`` or ``radius_bound`` (the
    potential's ``escape_radius``; ``inf``: none), as :class:`.langevin.ReplicaWatch` does.
    """

    PLOT_NAME: ClassVar[str] = "hopping.png"

    evaluations: Tensor
    hops: int
    first_hit_evaluations: int | None
    first_hit_by_replica: Tensor
    trace_evaluations: Tensor
    trace_lowest_energy: Tensor
    acceptance: float
    diverged: Tensor
    radius_bound: float
    seconds: float
    settings: HoppingSettings

    @property
    def total_evaluations(self) -> int:
        return int(self.evaluations.sum())

    def plot(self, path: str | os.PathLike[str]) -> None:
        """A PNG of the lowest minimum found against the evaluations spent. Written
        atomically; needs matplotlib."""
        fig, ax = _plot.figure(size=(7, 4))
        ax.step(self.trace_evaluations.numpy(), self.trace_lowest_energy.numpy(), where="post",
                lw=1, label="lowest minimum so far")  # fmt: skip
        if self.known_minimum is not None:
            ax.axhline(self.known_minimum, color="k", ls=":", lw=1, label="best known minimum")
        ax.set_xlabel("energy-and-gradient evaluations, summed over replicas")
        ax.set_ylabel("energy")
        ax.set_title(f"{self.label}: annealed hopping, {len(self.energies)} replicas")
        ax.legend(loc="upper right", fontsize="small")
        _plot.save_png(fig, path)


@dataclass
class _Walk:
    """The walkers, one per replica, on the device: where each stands, its lowest minimum
    and its displacement half-width ``step``, and the counts a result reports."""

    current: Tensor
    current_energy: Tensor
    best: Tensor
    best_energy: Tensor
    step: Tensor
    evaluations: Tensor
    accepted: Tensor  # acceptances since the step was last adapted
    first_hit_by_replica: Tensor  # each replica's evaluations at its first hit (-1: none yet)
    accepted_total: int = 0
    hops: int = 0
    first_hit: int | None = None  # evaluations over all replicas at the first hit
    trace_evaluations: list[int] = field(default_factory=list)
    trace_lowest: list[float] = field(default_factory=list)


@torch.no_grad()
def annealed_hopping(
    potential: Potential,
    settings: HoppingSettings | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
    **changes: Any,
) -> HoppingResult:
    """Search for the global minimum of ``potential`` by annealed basin hopping (module doc).

    Args:
        potential: the problem, e.g. :class:`.lj.LennardJonesCluster`.
        settings: the run's :class:`HoppingSettings`; or give them as keywords, e.g.
            ``annealed_hopping(potential, replicas=64, budget=10**6)``, which also change the
            fields of ``settings`` where both are given.
        device, dtype: where and in what precision the walkers are computed.
    """
    settings = HoppingSettings(**changes) if settings is None else replace(settings, **changes)
    started = time.perf_counter()
    device = torch.device(device)
    start_seed, move_seed, noise_seed = independent_seeds(settings.seed, 3)
    moves = torch.Generator().manual_seed(move_seed)
    noise = torch.Generator(device).manual_seed(noise_seed)
    watch = ReplicaWatch(
        settings.replicas, settings.lr, temperature_bound=settings.temperature_bound,
        radius_bound=potential.escape_radius, dtype=dtype, device=device,
    )  # fmt: skip
    start = potential.random_positions(
        settings.replicas,
        generator=torch.Generator().manual_seed(start_seed),
        dtype=dtype,
        device=device,
    )
    walk = _start(potential, start, settings)
    while not _finished(walk, settings):
        x = _displace(potential, walk, moves)
        if settings.anneal_steps:
            _anneal_hop_(potential, x, settings, noise, watch)
            walk.evaluations += settings.anneal_steps
        trial = _quench(potential, x, settings)
        walk.evaluations += trial.evaluations
        walk.hops += 1
        _accept(walk, trial, moves, settings.acceptance_temperature)
        if walk.hops % _ADAPT_EVERY == 0:
            _adapt_steps(walk)
        _record(walk, trial.energies, potential.known_minimum, settings.tolerance)
    return HoppingResult(
        label=potential.label,
        symbol=potential.symbol,
        energies=walk.best_energy.cpu().double(),
        positions=walk.best.cpu().double(),
        known_minimum=potential.known_minimum,
        evaluations=walk.evaluations.cpu(),
        hops=walk.hops,
        first_hit_evaluations=walk.first_hit,
        first_hit_by_replica=walk.first_hit_by_replica.cpu(),
        trace_evaluations=torch.tensor(walk.trace_evaluations),
        trace_lowest_energy=torch.tensor(walk.trace_lowest, dtype=torch.float64),
        acceptance=walk.accepted_total / max(walk.hops * settings.replicas, 1),
        diverged=watch.diverged().cpu(),
        radius_bound=watch.radius_bound,
        seconds=time.perf_counter() - started,
        settings=settings,
    )


def _quench(potential: Potential, x: Tensor, settings: HoppingSettings) -> QuenchResult:
    return lbfgs(potential, x, fmax=settings.fmax, max_steps=settings.quench_steps)


def _start(potential: Potential, start: Tensor, settings: HoppingSettings) -> _Walk:
    """The walkers at the minima nearest their starts, after the first quench."""
    replicas = start.shape[0]
    first_hit_by_replica = torch.full((replicas,), -1, dtype=torch.long, device=start.device)
    quenched = _quench(potential, start, settings)
    walk = _Walk(
        current=quenched.positions,
        current_energy=quenched.energies,
        best=quenched.positions.clone(),
        best_energy=quenched.energies.clone(),
        step=torch.full((replicas,), settings.step, dtype=start.dtype, device=start.device),
        evaluations=quenched.evaluations,
        accepted=torch.zeros(replicas, dtype=torch.long, device=start.device),
        first_hit_by_replica=first_hit_by_replica,
    )
    _record(walk, walk.current_energy, potential.known_minimum, settings.tolerance)
    return walk


def _finished(walk: _Walk, settings: HoppingSettings) -> bool:
    """Whether the budget is spent or, where asked, a replica has reached the minimum."""
    spent = walk.trace_evaluations[-1] >= settings.budget
    return spent or (settings.stop_at_minimum and walk.first_hit is not None)


def _displace(potential: Potential, walk: _Walk, moves: torch.Generator) -> Tensor:
    """Each replica's current minimum with every particle moved uniformly within its
    ``step`` along each axis (drawn on the CPU from ``moves``, so a seed walks alike on
    every device)."""
    current = walk.current
    uniform = torch.rand(current.shape, generator=moves, dtype=current.dtype).to(current.device)
    x = current + (2 * uniform - 1) * walk.step.view(-1, 1, 1)
    potential.project_(x)
    return x


def _anneal_hop_(
    potential: Potential,
    x: Tensor,
    settings: HoppingSettings,
    noise: torch.Generator,
    watch: ReplicaWatch,
) -> None:
    """Anneal the displaced replicas ``x`` in place: ``anneal_steps`` steps of Langevin
    dynamics from rest, cooled from ``rho_0`` to 0, the random force drawn from ``noise``."""
    optimizer = langevin_optimizer(
        x, steps=settings.anneal_steps, lr=settings.lr, rho_0=settings.rho_0,
        schedule=settings.schedule, noise_std=settings.noise_std, generator=noise,
    )  # fmt: skip
    for _ in range(settings.anneal_steps):
        langevin_step_(potential, x, optimizer, settings.max_force, watch)
    x.grad = None


def _accept(walk: _Walk, trial: QuenchResult, moves: torch.Generator, temperature: float) -> None:
    """Move each walker to its trial minimum by the Metropolis rule at ``temperature``
    (drawn on the CPU from ``moves``), and keep each replica's lowest minimum."""
    energy = walk.current_energy
    threshold = torch.rand(energy.shape, generator=moves, dtype=energy.dtype).to(energy.device)
    change = (trial.energies - energy).clamp(min=0)
    accept = threshold < torch.exp(-change / temperature)
    walk.current = torch.where(accept.view(-1, 1, 1), trial.positions, walk.current)
    walk.current_energy = torch.where(accept, trial.energies, energy)
    walk.accepted += accept
    walk.accepted_total += int(accept.sum())
    lower = trial.energies < walk.best_energy
    walk.best = torch.where(lower.view(-1, 1, 1), trial.positions, walk.best)
    walk.best_energy = torch.where(lower, trial.energies, walk.best_energy)


def _adapt_steps(walk: _Walk) -> None:
    """Widen the step of each replica that accepted more than the target share of its hops
    since the last adaptation, narrow the others' (GMIN's rule)."""
    wider = walk.accepted > _TARGET_ACCEPTANCE * _ADAPT_EVERY
    walk.step = torch.where(wider, walk.step / _STEP_FACTOR, walk.step * _STEP_FACTOR)
    walk.accepted.zero_()


def _record(walk: _Walk, energies: Tensor, known: float | None, tolerance: float) -> None:
    """Trace the evaluations and the lowest minimum so far, and note the replicas whose
    latest minimum ``energies`` is within ``tolerance`` of the ``known`` minimum."""
    walk.trace_evaluations.append(int(walk.evaluations.sum()))
    walk.trace_lowest.append(float(walk.best_energy.min()))
    if known is None:
        return
    reached = (energies - known).abs() <= tolerance
    new = reached & (walk.first_hit_by_replica < 0)
    walk.first_hit_by_replica = torch.where(new, walk.evaluations, walk.first_hit_by_replica)
    if bool(reached.any()) and walk.first_hit is None:
        walk.first_hit = walk.trace_evaluations[-1]
