"""Simulated annealing of many replicas with CoolMomentum, then a quench to the nearest minimum.

Each replica starts from a random configuration. CoolMomentum integrates Langevin dynamics:
``noise_std`` adds Gaussian noise to every force component (the random force) and ``rho``
(the friction) is cooled from ``rho_0`` to 0 over the run. At a fixed ``rho`` the velocity
``v = x_{k+1} - x_k`` of a free coordinate settles at ``E[v**2] = lr**2 noise_std**2 (1 + rho)
/ (4 (1 - rho))``, which for unit mass and time step ``sqrt(lr)`` is the temperature::

    kT = E[v**2] / lr = lr * noise_std**2 / 4 * (1 + rho) / (1 - rho)

so cooling ``rho`` from 0.99 to 0 lowers ``kT`` 199-fold. The annealed replicas are then
quenched with FIRE (:func:`.minimize.fire`) without noise, and their energies compared with the
problem's best known minimum.

A time step that suits a cluster at ``kT`` 0.5 cannot resolve the rare head-on collision: an
atom that arrives too fast lands deep in the ``r**-12`` wall, whose force then throws it (and
the replica's temperature) out by many orders of magnitude. Each particle's force is therefore
capped at ``max_force`` (its gradient scaled down to that norm), which bounds the momentum one
step can transfer, and every replica is watched over the whole run: one whose kT at any step
exceeds :data:`DIVERGED_TEMPERATURE_FACTOR` times the starting kT, or one of whose particles
gets farther than the potential's ``escape_radius`` from the replica's centre, is reported
as diverged.
"""

from __future__ import annotations

import importlib.util
import io
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._io import atomic_write
from ..schedules import SCHEDULES
from ..torch import CoolMomentum
from ._batch import cap_forces_, check_count, check_positive
from .minimize import Potential, fire

__all__ = [
    "DIVERGED_TEMPERATURE_FACTOR",
    "AnnealResult",
    "ReplicaMinima",
    "ReplicaWatch",
    "anneal",
    "can_plot",
    "langevin_step_",
    "noise_std_for_temperature",
    "plot_traces",
    "temperature_for_noise_std",
    "write_structures",
    "write_xyz",
]

DIVERGED_TEMPERATURE_FACTOR = 20.0
"""A replica whose kT at one step exceeds this multiple of the starting kT has diverged. A
cluster condensing from the random start heats itself to a few times the starting kT; a
replica thrown out by a collision the step could not resolve reaches 10**3 to 10**21 times."""

BAND = (0.1, 0.9)
"""The quantiles over replicas that bound the plotted temperature band."""


def noise_std_for_temperature(temperature: float, lr: float, rho: float) -> float:
    """The ``noise_std`` that holds a free coordinate at ``kT = temperature`` at ``rho``."""
    check_positive(temperature, "temperature", allow_zero=True)
    check_positive(lr, "lr")
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"rho must be in [0, 1), got {rho!r}")
    return math.sqrt(4.0 * temperature * (1.0 - rho) / (lr * (1.0 + rho)))


def temperature_for_noise_std(noise_std: float, lr: float, rho: float) -> float:
    """``kT = lr noise_std**2 (1 + rho) / (4 (1 - rho))``: the inverse of the function above."""
    return lr * noise_std**2 * (1.0 + rho) / (4.0 * (1.0 - rho))


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


class ReplicaMinima:
    """The lowest of the replicas' minima, for the results of :func:`anneal` and
    :func:`.hopping.annealed_hopping`."""

    energies: Tensor
    positions: Tensor
    known_minimum: float | None

    @property
    def best_index(self) -> int:
        return int(self.energies.argmin())

    @property
    def best_energy(self) -> float:
        return float(self.energies.min())

    @property
    def best_positions(self) -> Tensor:
        return self.positions[self.best_index]

    def gap(self) -> float | None:
        """``best_energy - known_minimum`` (``None`` where no minimum is known)."""
        return None if self.known_minimum is None else self.best_energy - self.known_minimum


@dataclass
class AnnealResult(ReplicaMinima):
    """What :func:`anneal` found. Tensors are on the CPU; ``energies`` and ``positions`` are
    the quenched replicas in their original order.

    ``trace_steps``, ``trace_lowest_energy``, ``trace_temperature`` and
    ``trace_temperature_band`` follow the annealing: at each recorded step the lowest energy
    over the replicas (of the function being descended, at that moment, not quenched), and
    the median over replicas of each replica's ``kT`` (the mean over its coordinates of
    ``v**2 / lr``, averaged since the previous record) with the 10th and 90th percentiles
    ``(records, 2)``: a robust temperature that one runaway replica cannot own.
    ``peak_temperature`` and ``peak_radius`` are each replica's highest ``kT`` at a single step
    and the farthest any of its particles got from its centre; ``diverged`` marks the replicas
    that exceeded ``settings["temperature_bound"]`` or ``settings["radius_bound"]``.
    ``evaluations`` counts energy-and-gradient evaluations per replica, annealing and quench
    together.
    """

    label: str
    symbol: str
    energies: Tensor
    positions: Tensor
    known_minimum: float | None
    trace_steps: Tensor
    trace_lowest_energy: Tensor
    trace_temperature: Tensor
    trace_temperature_band: Tensor
    peak_temperature: Tensor
    peak_radius: Tensor
    diverged: Tensor
    evaluations: Tensor
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)

    def successes(self, tolerance: float = 1e-3) -> int | None:
        """How many replicas ended within ``tolerance`` of the known minimum."""
        if self.known_minimum is None:
            return None
        return int(((self.energies - self.known_minimum).abs() <= tolerance).sum())

    def success_fraction(self, tolerance: float = 1e-3) -> float | None:
        hits = self.successes(tolerance)
        return None if hits is None else hits / len(self.energies)

    def save(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write ``best.xyz``, ``replicas.xyz`` (every replica, lowest energy first) and, where
        matplotlib is installed, ``anneal.png`` into ``directory``; returns their paths."""
        names = write_structures(directory, self.positions, self.energies, self.symbol, self.label)
        if can_plot():
            names.append(Path(directory) / "anneal.png")
            plot_traces(self, names[-1])
        return names


def can_plot() -> bool:
    """Whether matplotlib, which draws the plots, is installed (the ``[experiments]`` extra)."""
    return importlib.util.find_spec("matplotlib") is not None


def write_structures(
    directory: str | os.PathLike[str], positions: Tensor, energies: Tensor, symbol: str, label: str
) -> list[Path]:
    """Write ``best.xyz`` (the lowest replica) and ``replicas.xyz`` (every replica, lowest
    energy first) into ``directory``, created if needed; returns their paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    order = energies.argsort()
    names = [out / "best.xyz", out / "replicas.xyz"]
    write_xyz(names[0], positions[order[:1]], energies[order[:1]].tolist(), symbol, label)
    write_xyz(names[1], positions[order], energies[order].tolist(), symbol, label)
    return names


def write_xyz(
    path: str | os.PathLike[str],
    frames: Tensor,
    energies: Sequence[float],
    symbol: str,
    label: str = "",
) -> None:
    """Write ``frames`` ``(F, N, 3)`` as a multi-frame XYZ file, each comment line carrying
    ``energy=...`` (readable by ASE's extended-XYZ reader). Written atomically."""
    lines = []
    for frame, energy in zip(frames.tolist(), energies, strict=True):
        lines.append(f"{len(frame)}\n")
        lines.append(f'energy={energy:.9f} config_type="{label}"\n')
        lines.extend(f"{symbol} {x:.10f} {y:.10f} {z:.10f}\n" for x, y, z in frame)
    atomic_write(path, "".join(lines))


def plot_traces(result: AnnealResult, path: str | os.PathLike[str]) -> None:
    """A PNG of the lowest energy and the temperature (median and band over replicas)
    against the step. Written atomically; needs matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    steps = result.trace_steps.numpy()
    top.plot(steps, result.trace_lowest_energy.numpy(), lw=1, label="lowest over replicas")
    top.axhline(result.best_energy, color="C1", ls="--", lw=1, label="best after quench")
    if result.known_minimum is not None:
        top.axhline(result.known_minimum, color="k", ls=":", lw=1, label="best known minimum")
    top.set_ylabel("energy")
    top.set_title(f"{result.label}: {len(result.energies)} replicas")
    top.legend(loc="upper right", fontsize="small")
    band = result.trace_temperature_band.numpy()
    bottom.fill_between(
        steps, band[:, 0], band[:, 1], color="C3", alpha=0.25, lw=0,
        label=f"{100 * BAND[0]:.0f}-{100 * BAND[1]:.0f}% of replicas",
    )  # fmt: skip
    bottom.plot(steps, result.trace_temperature.numpy(), lw=1, color="C3", label="median")
    bottom.set_yscale("log")
    bottom.set_ylabel("replica temperature kT = <v²>/lr")
    diverged = int(result.diverged.sum())
    if diverged:
        bottom.set_title(f"{diverged} of {len(result.diverged)} replicas diverged", color="C3")
    bottom.legend(loc="upper right", fontsize="small")
    bottom.set_xlabel("step")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write(path, buffer.getvalue())


def _seeds(seed: int) -> tuple[int, int]:
    """Independent seeds for the starting positions and for the noise."""
    a, b = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64)
    return int(a), int(b)


@torch.no_grad()
def anneal(
    potential: Potential,
    *,
    replicas: int = 64,
    steps: int = 5000,
    lr: float = 1e-3,
    rho_0: float = 0.99,
    schedule: str = "exponential",
    hot_steps: int = 0,
    noise_std: float | None = None,
    temperature: float | None = None,
    max_force: float | None = 100.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
    fmax: float = 1e-3,
    quench_steps: int = 10_000,
    trace_every: int = 1,
    progress: bool = False,
) -> AnnealResult:
    """Anneal ``replicas`` random starts of ``potential`` for ``steps`` steps, then quench.

    Args:
        potential: the problem, e.g. :class:`.lj.LennardJonesCluster` or
            :class:`.thomson.ThomsonProblem`.
        replicas: independent copies, run as one batch.
        steps: annealing steps (``0``: quench the random starts, a random-search baseline).
        lr, rho_0, schedule, hot_steps: CoolMomentum's settings; cooling takes the
            ``steps - hot_steps`` steps after the hot phase, so ``rho`` reaches 0 at the end.
        noise_std: the random force's standard deviation per coordinate; or
        temperature: the starting ``kT``, from which ``noise_std`` is set
            (:func:`noise_std_for_temperature` at ``rho_0``). Give exactly one.
        max_force: each particle's force is capped at this norm (``None``: no cap). The
            default, in LJ units ``epsilon / sigma``, binds only in the rare close collision:
            at ``kT`` 0.5 one step in 10**4 has a particle force above about 150.
        seed: seeds the starting positions and the noise (independent streams).
        fmax: the quench stops for a replica when its largest per-particle force is below.
        quench_steps: at most this many FIRE steps.
        trace_every: record the traces every this many steps (each record synchronizes
            with the device once).
        progress: show a progress bar with the lowest energy so far (on stderr; needs tqdm).

    A replica whose ``kT`` at some step exceeds :data:`DIVERGED_TEMPERATURE_FACTOR` times the
    starting ``kT`` (no bound without noise), or one of whose particles gets farther than
    ``potential.escape_radius`` from its centre, is marked in ``result.diverged``.
    """
    check_count(replicas, "replicas", 1)
    check_count(steps, "steps", 0)
    check_count(hot_steps, "hot_steps", 0)
    check_count(trace_every, "trace_every", 1)
    check_positive(lr, "lr")
    if max_force is not None:
        check_positive(max_force, "max_force")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if schedule != "constant" and steps > 0 and hot_steps >= steps:
        raise ValueError(f"hot_steps must be < steps to leave steps to cool, got {hot_steps}")
    if (noise_std is None) == (temperature is None):
        raise ValueError("give exactly one of noise_std and temperature (the starting kT)")
    if temperature is not None:
        noise_std = noise_std_for_temperature(temperature, lr, rho_0)
    assert noise_std is not None
    check_positive(noise_std, "noise_std", allow_zero=True)
    start_seed, noise_seed = _seeds(seed)
    device = torch.device(device)
    start_temperature = temperature_for_noise_std(noise_std, lr, rho_0)
    watch = ReplicaWatch(
        replicas, lr, temperature_bound=DIVERGED_TEMPERATURE_FACTOR * start_temperature or math.inf,
        radius_bound=potential.escape_radius, dtype=dtype, device=device,
    )  # fmt: skip
    settings = dict(
        replicas=replicas, steps=steps, lr=lr, rho_0=rho_0, schedule=schedule,
        hot_steps=hot_steps, noise_std=noise_std, max_force=max_force, seed=seed, fmax=fmax,
        start_temperature=start_temperature, temperature_bound=watch.temperature_bound,
        radius_bound=watch.radius_bound,
    )  # fmt: skip
    started = time.perf_counter()

    x = potential.random_positions(
        replicas, generator=torch.Generator().manual_seed(start_seed), dtype=dtype, device=device
    )
    records = steps // trace_every
    trace_steps = torch.arange(records) * trace_every + trace_every - 1
    lowest = torch.empty(records, dtype=dtype, device=device)
    temperatures = torch.empty(records, 3, dtype=dtype, device=device)
    if steps:
        optimizer = CoolMomentum(
            [x],
            lr=lr,
            rho_0=rho_0,
            total_steps=None if schedule == "constant" else steps - hot_steps,
            schedule=schedule,
            hot_steps=hot_steps,
            noise_std=noise_std,
            generator=torch.Generator(device).manual_seed(noise_seed),
            track_temperature=False,  # the watch measures each replica's temperature instead
        )
        bar = _progress_bar(steps, progress)
        refresh = max(1, steps // 100)
        best_seen = torch.full((), math.inf, dtype=dtype, device=device)
        for k in range(steps):
            minimum = langevin_step_(potential, x, optimizer, max_force, watch).min()
            torch.minimum(best_seen, minimum, out=best_seen)
            if (k + 1) % trace_every == 0:
                record = (k + 1) // trace_every - 1
                lowest[record] = minimum
                temperatures[record] = watch.close_window()
            if bar is not None and ((k + 1) % refresh == 0 or k + 1 == steps):
                bar.set_postfix_str(f"lowest energy {float(best_seen):.6f}", refresh=False)
                bar.update((k + 1) - bar.n)
        if bar is not None:
            bar.close()
        x.grad = None

    quench = fire(potential, x, fmax=fmax, max_steps=quench_steps)
    temperatures = temperatures.cpu().double()
    return AnnealResult(
        label=potential.label,
        symbol=potential.symbol,
        energies=quench.energies.cpu().double(),
        positions=quench.positions.cpu().double(),
        known_minimum=potential.known_minimum,
        trace_steps=trace_steps,
        trace_lowest_energy=lowest.cpu().double(),
        trace_temperature=temperatures[:, 1],
        trace_temperature_band=temperatures[:, [0, 2]],
        peak_temperature=watch.peak_temperature.cpu().double(),
        peak_radius=watch.peak_radius.cpu().double(),
        diverged=watch.diverged().cpu(),
        evaluations=quench.evaluations.cpu() + steps,
        seconds=time.perf_counter() - started,
        settings=settings,
    )


def _progress_bar(total: int, enabled: bool) -> Any:
    """A tqdm bar on stderr, or ``None`` when not asked for or tqdm is not installed."""
    if not enabled or importlib.util.find_spec("tqdm") is None:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True)
