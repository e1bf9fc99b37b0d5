"""Simulated annealing of many replicas with CoolMomentum, then a quench to the nearest minimum.

Each replica starts from a random configuration and follows CoolMomentum's Langevin dynamics
(:mod:`.langevin`: ``noise_std`` is the random force, ``rho`` the friction) while ``rho`` is
cooled from ``rho_0`` to 0 over the run, which lowers ``kT`` 199-fold from 0.99. The annealed
replicas are then quenched with FIRE (:func:`.minimize.fire`) without noise, and their energies
compared with the problem's best known minimum. Every particle's force is capped at
``max_force``, and a replica whose ``kT`` at some step exceeds
:data:`.langevin.DIVERGED_TEMPERATURE_FACTOR` times the starting ``kT``, or one of whose
particles gets farther than the potential's ``escape_radius`` from the replica's centre, is
reported as diverged.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import _plot
from ._batch import check_count, check_positive, independent_seeds
from .langevin import (
    BAND,
    DIVERGED_TEMPERATURE_FACTOR,
    ReplicaWatch,
    check_cooling,
    langevin_optimizer,
    langevin_step_,
    noise_std_for_temperature,
    temperature_for_noise_std,
)
from .minimize import Potential, fire
from .results import ReplicaMinima

__all__ = ["AnnealResult", "AnnealSettings", "anneal"]


@dataclass(frozen=True)
class AnnealSettings:
    """The settings of :func:`anneal`, checked when made: a bad one is a ValueError that
    names it and the values it may take.

    Attributes:
        replicas: independent copies, run as one batch.
        steps: annealing steps (``0``: quench the random starts, a random-search baseline).
        lr: CoolMomentum's step ``dt**2``.
        rho_0, schedule, hot_steps: CoolMomentum's cooling (:mod:`coolmomentum.schedules`):
            ``rho`` is held at ``rho_0`` for ``hot_steps``, then cooled along ``schedule``
            over the ``steps - hot_steps`` steps left, so that it reaches 0 at the end.
        noise_std: the random force's standard deviation per coordinate; or
        temperature: the starting ``kT``, from which ``noise_std`` is set
            (:func:`.langevin.noise_std_for_temperature` at ``rho_0``). Give exactly one.
        max_force: each particle's force is capped at this norm (``None``: no cap). The
            default, in LJ units ``epsilon / sigma``, binds only in the rare close collision:
            at ``kT`` 0.5 one step in 10**4 has a particle force above about 150.
        seed: seeds the starting positions and the noise (independent streams).
        fmax: the quench stops for a replica when its largest per-particle force is below.
        quench_steps: at most this many FIRE steps.
        trace_every: record the traces every this many steps (each record synchronizes
            with the device once).
    """

    replicas: int = 64
    steps: int = 5000
    lr: float = 1e-3
    rho_0: float = 0.99
    schedule: str = "exponential"
    hot_steps: int = 0
    noise_std: float | None = None
    temperature: float | None = None
    max_force: float | None = 100.0
    seed: int = 0
    fmax: float = 1e-3
    quench_steps: int = 10_000
    trace_every: int = 1

    def __post_init__(self) -> None:
        check_count(self.replicas, "replicas", 1)
        check_count(self.steps, "steps", 0)
        check_positive(self.lr, "lr")
        check_cooling(self.rho_0, self.schedule, self.hot_steps)
        if self.schedule != "constant" and 0 < self.steps <= self.hot_steps:
            raise ValueError(
                f"hot_steps must be < steps to leave steps to cool, got hot_steps="
                f"{self.hot_steps} and steps={self.steps}: lower hot_steps, raise steps, or "
                "hold rho_0 throughout with schedule='constant'"
            )
        if (self.noise_std is None) == (self.temperature is None):
            raise ValueError(
                "give exactly one of noise_std (the random force per coordinate) and "
                "temperature (the starting kT, which sets noise_std)"
            )
        if self.noise_std is not None:
            check_positive(self.noise_std, "noise_std", allow_zero=True)
        else:
            check_positive(self.temperature, "temperature", allow_zero=True)
        if self.max_force is not None:
            check_positive(self.max_force, "max_force")
        check_count(self.seed, "seed", 0)
        check_positive(self.fmax, "fmax")
        check_count(self.quench_steps, "quench_steps", 0)
        check_count(self.trace_every, "trace_every", 1)

    @property
    def random_force_std(self) -> float:
        """``noise_std``, given or set by ``temperature``."""
        if self.temperature is not None:
            return noise_std_for_temperature(self.temperature, self.lr, self.rho_0)
        assert self.noise_std is not None  # exactly one of the two is given
        return self.noise_std

    @property
    def start_temperature(self) -> float:
        """The ``kT`` at which the random force holds a free coordinate at ``rho_0``."""
        return temperature_for_noise_std(self.random_force_std, self.lr, self.rho_0)

    @property
    def temperature_bound(self) -> float:
        """A replica whose ``kT`` at one step exceeds this has diverged (no bound without
        noise)."""
        return DIVERGED_TEMPERATURE_FACTOR * self.start_temperature or math.inf


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
    that exceeded ``settings.temperature_bound`` or ``radius_bound`` (the potential's
    ``escape_radius``; ``inf``: none). ``evaluations`` counts energy-and-gradient evaluations
    per replica, annealing and quench together.
    """

    PLOT_NAME: ClassVar[str] = "anneal.png"

    trace_steps: Tensor
    trace_lowest_energy: Tensor
    trace_temperature: Tensor
    trace_temperature_band: Tensor
    peak_temperature: Tensor
    peak_radius: Tensor
    diverged: Tensor
    radius_bound: float
    evaluations: Tensor
    seconds: float
    settings: AnnealSettings

    def successes(self, tolerance: float = 1e-3) -> int | None:
        """How many replicas ended within ``tolerance`` of the known minimum."""
        if self.known_minimum is None:
            return None
        return int(((self.energies - self.known_minimum).abs() <= tolerance).sum())

    def success_fraction(self, tolerance: float = 1e-3) -> float | None:
        hits = self.successes(tolerance)
        return None if hits is None else hits / len(self.energies)

    def plot(self, path: str | os.PathLike[str]) -> None:
        """A PNG of the lowest energy and the temperature (median and band over replicas)
        against the step. Written atomically; needs matplotlib."""
        fig, (top, bottom) = _plot.figure(2, 1, size=(7, 5.5), sharex=True)
        steps = self.trace_steps.numpy()
        top.plot(steps, self.trace_lowest_energy.numpy(), lw=1, label="lowest over replicas")
        top.axhline(self.best_energy, color="C1", ls="--", lw=1, label="best after quench")
        if self.known_minimum is not None:
            top.axhline(self.known_minimum, color="k", ls=":", lw=1, label="best known minimum")
        top.set_ylabel("energy")
        top.set_title(f"{self.label}: {len(self.energies)} replicas")
        top.legend(loc="upper right", fontsize="small")
        band = self.trace_temperature_band.numpy()
        bottom.fill_between(
            steps, band[:, 0], band[:, 1], color="C3", alpha=0.25, lw=0,
            label=f"{100 * BAND[0]:.0f}-{100 * BAND[1]:.0f}% of replicas",
        )  # fmt: skip
        bottom.plot(steps, self.trace_temperature.numpy(), lw=1, color="C3", label="median")
        bottom.set_yscale("log")
        bottom.set_ylabel("replica temperature kT = <v²>/lr")
        diverged = int(self.diverged.sum())
        if diverged:
            bottom.set_title(f"{diverged} of {len(self.diverged)} replicas diverged", color="C3")
        bottom.legend(loc="upper right", fontsize="small")
        bottom.set_xlabel("step")
        _plot.save_png(fig, path)


@torch.no_grad()
def anneal(
    potential: Potential,
    settings: AnnealSettings | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
    progress: bool = False,
    **changes: Any,
) -> AnnealResult:
    """Anneal ``replicas`` random starts of ``potential`` for ``steps`` steps, then quench.

    Args:
        potential: the problem, e.g. :class:`.lj.LennardJonesCluster` or
            :class:`.thomson.ThomsonProblem`.
        settings: the run's :class:`AnnealSettings`; or give them as keywords, e.g.
            ``anneal(potential, steps=2000, temperature=0.5)``, which also change the
            fields of ``settings`` where both are given.
        device, dtype: where and in what precision the replicas are computed.
        progress: show a progress bar with the lowest energy so far (on stderr; needs tqdm).
    """
    settings = AnnealSettings(**changes) if settings is None else replace(settings, **changes)
    started = time.perf_counter()
    device = torch.device(device)
    start_seed, noise_seed = independent_seeds(settings.seed, 2)
    x = potential.random_positions(
        settings.replicas,
        generator=torch.Generator().manual_seed(start_seed),
        dtype=dtype,
        device=device,
    )
    watch = ReplicaWatch(
        settings.replicas, settings.lr, temperature_bound=settings.temperature_bound,
        radius_bound=potential.escape_radius, dtype=dtype, device=device,
    )  # fmt: skip
    trace = _Trace(settings.steps, settings.trace_every, dtype=dtype, device=device)
    if settings.steps:
        noise = torch.Generator(device).manual_seed(noise_seed)
        bar = _progress_bar(settings.steps, progress, dtype=dtype, device=device)
        _langevin_run_(potential, x, settings, noise, watch, trace, bar)
    quench = fire(potential, x, fmax=settings.fmax, max_steps=settings.quench_steps)
    temperatures = trace.temperatures.cpu().double()
    return AnnealResult(
        label=potential.label,
        symbol=potential.symbol,
        energies=quench.energies.cpu().double(),
        positions=quench.positions.cpu().double(),
        known_minimum=potential.known_minimum,
        trace_steps=trace.steps,
        trace_lowest_energy=trace.lowest.cpu().double(),
        trace_temperature=temperatures[:, 1],
        trace_temperature_band=temperatures[:, [0, 2]],
        peak_temperature=watch.peak_temperature.cpu().double(),
        peak_radius=watch.peak_radius.cpu().double(),
        diverged=watch.diverged().cpu(),
        radius_bound=watch.radius_bound,
        evaluations=quench.evaluations.cpu() + settings.steps,
        seconds=time.perf_counter() - started,
        settings=settings,
    )


def _langevin_run_(
    potential: Potential,
    x: Tensor,
    settings: AnnealSettings,
    noise: torch.Generator,
    watch: ReplicaWatch,
    trace: _Trace,
    bar: _ProgressBar | None,
) -> None:
    """Anneal the replicas ``x`` in place for ``settings.steps`` steps, the random force
    drawn from ``noise``."""
    optimizer = langevin_optimizer(
        x, steps=settings.steps, lr=settings.lr, rho_0=settings.rho_0,
        schedule=settings.schedule, hot_steps=settings.hot_steps,
        noise_std=settings.random_force_std, generator=noise,
    )  # fmt: skip
    for k in range(settings.steps):
        minimum = langevin_step_(potential, x, optimizer, settings.max_force, watch).min()
        trace.observe(k, minimum, watch)
        if bar is not None:
            bar.observe(k, minimum)
    if bar is not None:
        bar.close()
    x.grad = None


class _Trace:
    """The lowest energy and the temperature quantiles over replicas at every ``every``-th
    of ``steps`` steps, kept on the device."""

    def __init__(self, steps: int, every: int, *, dtype: torch.dtype, device: torch.device) -> None:
        records = steps // every
        self.every = every
        self.steps = torch.arange(records) * every + every - 1
        self.lowest = torch.empty(records, dtype=dtype, device=device)
        self.temperatures = torch.empty(records, 3, dtype=dtype, device=device)

    def observe(self, k: int, lowest: Tensor, watch: ReplicaWatch) -> None:
        """Record step ``k`` if it is one to record."""
        if (k + 1) % self.every == 0:
            record = (k + 1) // self.every - 1
            self.lowest[record] = lowest
            self.temperatures[record] = watch.close_window()


def _progress_bar(
    total: int, enabled: bool, *, dtype: torch.dtype, device: torch.device
) -> _ProgressBar | None:
    """A progress bar, or ``None`` when not asked for or tqdm is not installed."""
    if not enabled or importlib.util.find_spec("tqdm") is None:
        return None
    return _ProgressBar(total, dtype=dtype, device=device)


class _ProgressBar:
    """A tqdm bar on stderr over ``total`` steps with the lowest energy so far, refreshed
    about a hundred times (each refresh synchronizes with the device)."""

    def __init__(self, total: int, *, dtype: torch.dtype, device: torch.device) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True)
        self.total = total
        self.refresh_every = max(1, total // 100)
        self.lowest = torch.full((), math.inf, dtype=dtype, device=device)

    def observe(self, k: int, lowest: Tensor) -> None:
        torch.minimum(self.lowest, lowest, out=self.lowest)
        done = k + 1
        if done % self.refresh_every == 0 or done == self.total:
            self.bar.set_postfix_str(f"lowest energy {float(self.lowest):.6f}", refresh=False)
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()
