"""CoolMomentum as an ASE optimizer: anneal any ``ase`` calculator (needs ``pip install ase``).

    from ase.calculators.lj import LennardJones
    from coolmomentum.physics.ase import CoolMomentum

    atoms.calc = LennardJones(sigma=1.0, epsilon=1.0, rc=100.0, smooth=False)
    opt = CoolMomentum(atoms, lr=1e-3, total_steps=3000, temperature=0.3, trajectory="a.traj")
    opt.run(fmax=1e-3, steps=20_000)

Each step applies :class:`coolmomentum.torch.CoolMomentum` to the positions with the
calculator's forces (every atom has unit mass, as in ASE's own optimizers, so ``lr`` is in
length**2 / energy, e.g. Å²/eV). Gaussian noise of ``noise_std`` per force component is the
random force while the schedule cools; once cooling is over (``hot_steps + total_steps``
steps) the noise stops, so the rest of the run is a plain descent that ``run(fmax)`` can
converge.
"""

from __future__ import annotations

from typing import IO, Any

import numpy as np
import torch
from ase import Atoms
from ase.optimize.optimize import Optimizer

from ..schedules import Schedule
from ..torch import CoolMomentum as _TorchCoolMomentum
from .langevin import noise_std_for_temperature

__all__ = ["CoolMomentum"]


class CoolMomentum(Optimizer):
    """Simulated annealing of ``atoms`` by Langevin dynamics with a cooled momentum.

    Args:
        atoms: the structure (or any ASE optimizable, e.g. a filter), with a calculator.
        restart: a JSON file the state is saved to after each step and resumed from.
        logfile, trajectory, append_trajectory: as for every ASE optimizer.
        lr: the integration step ``dt**2`` (unit masses).
        rho_0, total_steps, schedule, hot_steps: CoolMomentum's schedule.
        noise_std: the random force's standard deviation per component; or
        temperature: the starting ``kT`` (energy units), which sets ``noise_std``.
        seed: seeds the noise (default: ``torch.initial_seed()``).
        kwargs: passed to :class:`ase.optimize.optimize.Optimizer`.
    """

    def __init__(
        self,
        atoms: Atoms,
        restart: str | None = None,
        logfile: IO[str] | str | None = "-",
        trajectory: str | None = None,
        *,
        lr: float = 1e-3,
        rho_0: float = 0.99,
        total_steps: int = 1000,
        schedule: str = "exponential",
        hot_steps: int = 0,
        noise_std: float | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        if noise_std is not None and temperature is not None:
            raise ValueError("give at most one of noise_std and temperature (the starting kT)")
        if temperature is not None:
            noise_std = noise_std_for_temperature(temperature, lr, rho_0)
        self.lr = lr
        self.rho_0 = rho_0
        self.total_steps = total_steps
        self.schedule = schedule
        self.hot_steps = hot_steps
        self.noise_std = 0.0 if noise_std is None else noise_std
        self.seed = torch.initial_seed() if seed is None else seed
        self._schedule = Schedule.create(
            rho_0,
            None if schedule == "constant" else total_steps,
            schedule=schedule,
            hot_steps=hot_steps,
        )
        super().__init__(atoms, restart, logfile, trajectory, **kwargs)

    def initialize(self) -> None:
        self._x = torch.tensor(self.optimizable.get_x(), dtype=torch.float64)
        self._opt = _TorchCoolMomentum(
            [self._x],
            lr=self.lr,
            rho_0=self.rho_0,
            total_steps=None if self.schedule == "constant" else self.total_steps,
            schedule=self.schedule,
            hot_steps=self.hot_steps,
            noise_std=self.noise_std,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def todict(self) -> dict[str, Any]:
        description = super().todict()
        description.update(
            lr=self.lr,
            rho_0=self.rho_0,
            total_steps=self.total_steps,
            schedule=self.schedule,
            hot_steps=self.hot_steps,
            noise_std=self.noise_std,
        )
        return description

    @property
    def cooling_done(self) -> bool:
        """Whether the schedule has reached ``rho = 0``, where it stays (from then on there is
        no noise); never for a constant ``rho_0 > 0``."""
        return self._schedule(self._opt.stats(reset=False)[0]["step"]) == 0.0

    def step(self, forces: np.ndarray | None = None) -> None:
        gradient = self._get_gradient(forces)
        group = self._opt.param_groups[0]
        group["noise_std"] = 0.0 if self.cooling_done else self.noise_std
        self._x.copy_(torch.from_numpy(np.asarray(self.optimizable.get_x(), dtype=np.float64)))
        self._x.grad = torch.from_numpy(np.asarray(gradient, dtype=np.float64).copy())
        self._opt.step()
        self.optimizable.set_x(self._x.numpy().copy())
        self.dump(self._state())

    def _state(self) -> dict[str, Any]:
        state = self._opt.state_dict()
        buffer = state["state"].get(0, {}).get("momentum_buffer")
        return {
            "step": int(state["param_groups"][0]["step"]),
            "velocity": None if buffer is None else buffer.numpy(),
            "rng": state["noise_generators"]["cpu"].numpy(),
        }

    def read(self) -> None:
        saved = self.load()
        self.initialize()
        state = self._opt.state_dict()
        state["param_groups"][0]["step"] = torch.tensor(int(saved["step"]), dtype=torch.int64)
        if saved["velocity"] is not None:
            velocity = torch.tensor(np.asarray(saved["velocity"]), dtype=torch.float64)
            state["state"] = {0: {"momentum_buffer": velocity}}
        rng = np.asarray(saved["rng"], dtype=np.uint8)
        state["noise_generators"] = {"cpu": torch.from_numpy(rng)}
        self._opt.load_state_dict(state)
