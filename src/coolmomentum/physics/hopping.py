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

import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._io import atomic_write
from ..schedules import SCHEDULES
from ..torch import CoolMomentum
from ._batch import check_count, check_positive
from .anneal import (
    DIVERGED_TEMPERATURE_FACTOR,
    ReplicaMinima,
    ReplicaWatch,
    can_plot,
    langevin_step_,
    noise_std_for_temperature,
    write_structures,
)
from .minimize import Potential, lbfgs

__all__ = ["HoppingResult", "annealed_hopping"]

# GMIN's step adaptation: every `_ADAPT_EVERY` hops, a replica that accepted more than
# `_TARGET_ACCEPTANCE` of them widens its step by 1 / `_STEP_FACTOR`, otherwise narrows it.
_ADAPT_EVERY, _TARGET_ACCEPTANCE, _STEP_FACTOR = 10, 0.5, 0.9


@dataclass
class HoppingResult(ReplicaMinima):
    """What :func:`annealed_hopping` found. Tensors are on the CPU.

    ``energies`` and ``positions`` are each replica's lowest minimum ``(R,)`` and ``(R, N, 3)``;
    ``evaluations`` counts each replica's energy-and-gradient evaluations (displacements cost
    none; each annealing step and each quench step costs one). ``first_hit_evaluations`` is
    the number of evaluations summed over all replicas up to the end of the hop in which a
    replica first came within ``settings["tolerance"]`` of the known minimum (``None``: none
    did); ``first_hit_by_replica`` ``(R,)`` is each replica's own count at its first hit
    (``-1``: none), which describes the walkers as independent runs. ``trace_evaluations``
    and ``trace_lowest_energy`` give, after the first quench and after each hop, the
    evaluations spent so far and the lowest minimum so far. ``diverged`` marks replicas whose
    annealing ever exceeded the bounds of :class:`.anneal.ReplicaWatch`.
    """

    label: str
    symbol: str
    energies: Tensor
    positions: Tensor
    known_minimum: float | None
    evaluations: Tensor
    hops: int
    first_hit_evaluations: int | None
    first_hit_by_replica: Tensor
    trace_evaluations: Tensor
    trace_lowest_energy: Tensor
    acceptance: float
    diverged: Tensor
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def total_evaluations(self) -> int:
        return int(self.evaluations.sum())

    def save(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write ``best.xyz``, ``replicas.xyz`` (each replica's lowest minimum, lowest first)
        and, where matplotlib is installed, ``hopping.png`` into ``directory``."""
        names = write_structures(directory, self.positions, self.energies, self.symbol, self.label)
        if can_plot():
            names.append(Path(directory) / "hopping.png")
            self.plot(names[-1])
        return names

    def plot(self, path: str | os.PathLike[str]) -> None:
        """A PNG of the lowest minimum found against the evaluations spent. Written
        atomically; needs matplotlib."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 4), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        ax.step(self.trace_evaluations.numpy(), self.trace_lowest_energy.numpy(), where="post",
                lw=1, label="lowest minimum so far")  # fmt: skip
        if self.known_minimum is not None:
            ax.axhline(self.known_minimum, color="k", ls=":", lw=1, label="best known minimum")
        ax.set_xlabel("energy-and-gradient evaluations, summed over replicas")
        ax.set_ylabel("energy")
        ax.set_title(f"{self.label}: annealed hopping, {len(self.energies)} replicas")
        ax.legend(loc="upper right", fontsize="small")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=120)
        atomic_write(path, buffer.getvalue())


@torch.no_grad()
def annealed_hopping(
    potential: Potential,
    *,
    replicas: int = 16,
    budget: int = 100_000,
    step: float = 0.4,
    anneal_steps: int = 10,
    temperature: float = 0.1,
    lr: float = 1e-3,
    rho_0: float = 0.5,
    schedule: str = "linear-temperature",
    max_force: float | None = 100.0,
    acceptance_temperature: float = 0.8,
    fmax: float = 1e-2,
    quench_steps: int = 2000,
    tolerance: float = 1e-3,
    stop_at_minimum: bool = True,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
) -> HoppingResult:
    """Search for the global minimum of ``potential`` by annealed basin hopping (module doc).

    Args:
        potential: the problem, e.g. :class:`.lj.LennardJonesCluster`.
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
    check_count(replicas, "replicas", 1)
    check_count(budget, "budget", 1)
    check_positive(step, "step", allow_zero=True)
    check_count(anneal_steps, "anneal_steps", 0)
    check_positive(temperature, "temperature", allow_zero=True)
    check_positive(lr, "lr")
    if not 0.0 <= rho_0 < 1.0:
        raise ValueError(f"rho_0 must be in [0, 1), got {rho_0!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if max_force is not None:
        check_positive(max_force, "max_force")
    check_positive(acceptance_temperature, "acceptance_temperature")
    check_positive(fmax, "fmax")
    check_count(quench_steps, "quench_steps", 1)
    check_positive(tolerance, "tolerance")
    device = torch.device(device)
    start_seed, move_seed, noise_seed = (
        int(s) for s in np.random.SeedSequence(seed).generate_state(3, dtype=np.uint64)
    )
    moves = torch.Generator().manual_seed(move_seed)
    noise = torch.Generator(device).manual_seed(noise_seed)
    noise_std = noise_std_for_temperature(temperature, lr, rho_0)
    # A displaced structure releases its strain as heat, so the walk's energy scale, the
    # Metropolis temperature, bounds the anneal's kT too.
    scale = max(temperature, acceptance_temperature)
    watch = ReplicaWatch(
        replicas, lr, temperature_bound=DIVERGED_TEMPERATURE_FACTOR * scale,
        radius_bound=potential.escape_radius, dtype=dtype, device=device,
    )  # fmt: skip
    settings = dict(
        replicas=replicas, budget=budget, step=step, anneal_steps=anneal_steps,
        temperature=temperature, lr=lr, rho_0=rho_0, schedule=schedule, max_force=max_force,
        acceptance_temperature=acceptance_temperature, fmax=fmax, tolerance=tolerance, seed=seed,
        temperature_bound=watch.temperature_bound, radius_bound=watch.radius_bound,
    )  # fmt: skip
    known = potential.known_minimum
    started = time.perf_counter()

    def quench(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        result = lbfgs(potential, x, fmax=fmax, max_steps=quench_steps)
        return result.positions, result.energies, result.evaluations

    first_hit_by_replica = torch.full((replicas,), -1, dtype=torch.long, device=device)

    def hit(energies: Tensor) -> bool:
        """Note the replicas that reach the known minimum; whether any did."""
        if known is None:
            return False
        reached = (energies - known).abs() <= tolerance
        new = reached & (first_hit_by_replica < 0)
        first_hit_by_replica.copy_(torch.where(new, evaluations, first_hit_by_replica))
        return bool(reached.any())

    start = potential.random_positions(
        replicas, generator=torch.Generator().manual_seed(start_seed), dtype=dtype, device=device
    )
    current, current_energy, evaluations = quench(start)
    best, best_energy = current.clone(), current_energy.clone()
    steps = torch.full((replicas,), step, dtype=dtype, device=device)
    accepted = torch.zeros(replicas, dtype=torch.long, device=device)
    accepted_total = 0
    trace_evaluations = [int(evaluations.sum())]
    trace_lowest = [float(best_energy.min())]
    first_hit = trace_evaluations[0] if hit(current_energy) else None
    hops = 0
    while trace_evaluations[-1] < budget and not (stop_at_minimum and first_hit is not None):
        uniform = torch.rand(current.shape, generator=moves, dtype=dtype).to(device)
        x = current + (2 * uniform - 1) * steps.view(-1, 1, 1)
        potential.project_(x)
        if anneal_steps:
            optimizer = CoolMomentum(
                [x], lr=lr, rho_0=rho_0,
                total_steps=None if schedule == "constant" else anneal_steps, schedule=schedule,
                noise_std=noise_std, generator=noise, track_temperature=False,
            )  # fmt: skip
            for _ in range(anneal_steps):
                langevin_step_(potential, x, optimizer, max_force, watch)
            x.grad = None
            evaluations += anneal_steps
        trial, trial_energy, spent = quench(x)
        evaluations += spent
        hops += 1
        threshold = torch.rand(replicas, generator=moves, dtype=dtype).to(device)
        change = (trial_energy - current_energy).clamp(min=0)
        accept = threshold < torch.exp(-change / acceptance_temperature)
        current = torch.where(accept.view(-1, 1, 1), trial, current)
        current_energy = torch.where(accept, trial_energy, current_energy)
        lower = trial_energy < best_energy
        best = torch.where(lower.view(-1, 1, 1), trial, best)
        best_energy = torch.where(lower, trial_energy, best_energy)
        accepted += accept
        accepted_total += int(accept.sum())
        if hops % _ADAPT_EVERY == 0:
            wider = accepted > _TARGET_ACCEPTANCE * _ADAPT_EVERY
            steps = torch.where(wider, steps / _STEP_FACTOR, steps * _STEP_FACTOR)
            accepted.zero_()
        trace_evaluations.append(int(evaluations.sum()))
        trace_lowest.append(float(best_energy.min()))
        if hit(trial_energy) and first_hit is None:
            first_hit = trace_evaluations[-1]
    return HoppingResult(
        label=potential.label,
        symbol=potential.symbol,
        energies=best_energy.cpu().double(),
        positions=best.cpu().double(),
        known_minimum=known,
        evaluations=evaluations.cpu(),
        hops=hops,
        first_hit_evaluations=first_hit,
        first_hit_by_replica=first_hit_by_replica.cpu(),
        trace_evaluations=torch.tensor(trace_evaluations),
        trace_lowest_energy=torch.tensor(trace_lowest, dtype=torch.float64),
        acceptance=accepted_total / max(hops * replicas, 1),
        diverged=watch.diverged().cpu(),
        seconds=time.perf_counter() - started,
        settings=settings,
    )
