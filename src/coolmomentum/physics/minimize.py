"""Batched local minimization (quenching) of many replicas at once, with FIRE or L-BFGS.

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

__all__ = ["Potential", "QuenchResult", "fire", "lbfgs"]

# FIRE's constants, as published.
_N_MIN, _F_INC, _F_DEC, _ALPHA_START, _F_ALPHA = 5, 1.1, 0.5, 0.1, 0.99


class Potential(Protocol):
    """A many-particle problem, batched over replicas: positions are ``(R, N, 3)``."""

    name: str
    label: str
    symbol: str
    particles: int
    known_minimum: float | None
    escape_radius: float | None
    """A particle farther than this from its replica's centre means the dynamics failed
    (``None``: no such bound, e.g. where positions are projected onto a surface)."""

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
    """Minimized positions ``(R, N, 3)``, their energies ``(R,)`` (of the function minimized,
    from the last evaluation: for an LJ cluster inside its confining sphere, the LJ energy),
    the largest per-particle force ``(R,)``, whether it fell below ``fmax`` ``(R,)``, and the
    number of energy-and-gradient evaluations each replica used ``(R,)``, every one counted."""

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
    state = _FireState(
        velocity=torch.zeros_like(x),
        dt=torch.full((replicas,), dt, dtype=x.dtype, device=x.device),
        alpha=torch.full((replicas,), _ALPHA_START, dtype=x.dtype, device=x.device),
        downhill=torch.zeros(replicas, dtype=torch.long, device=x.device),
    )
    evaluations = torch.zeros(replicas, dtype=torch.long, device=x.device)
    largest = torch.full((replicas,), torch.inf, dtype=x.dtype, device=x.device)
    energy = torch.empty_like(largest)
    # Only the replicas still moving are evaluated: the batch shrinks as they converge.
    active = torch.arange(replicas, device=x.device)
    for iteration in range(max_steps + 1):
        xa = x[active]
        energy[active], gradient = potential.energy_and_gradient(xa)
        evaluations[active] += 1
        largest[active] = gradient.norm(dim=-1).amax(-1)
        moving = largest[active] >= fmax
        if iteration == max_steps or not bool(moving.any()):
            break
        active, xa, gradient = active[moving], xa[moving], gradient[moving]
        move = _fire_move(state, active, gradient.neg_(), dt_max)
        xa = xa + _limit_move(move, max_displacement)
        potential.project_(xa)
        x[active] = xa
    return QuenchResult(
        positions=x,
        energies=energy,
        fmax=largest,
        converged=largest < fmax,
        evaluations=evaluations,
    )


@dataclass
class _FireState:
    """Each replica's FIRE dynamics: its velocity ``(R, N, 3)``, time step, mixing factor
    and the number of steps since it last went uphill ``(R,)``."""

    velocity: Tensor
    dt: Tensor
    alpha: Tensor
    downhill: Tensor


def _fire_move(state: _FireState, active: Tensor, force: Tensor, dt_max: float) -> Tensor:
    """FIRE's step for the replicas ``active`` under ``force`` ``(A, N, 3)``: mix each
    velocity toward the force and lengthen the time step while the replica goes downhill,
    stop it and shorten the step when it goes uphill. Updates ``state``; returns the moves."""
    va, h, a = state.velocity[active], state.dt[active], state.alpha[active]
    going = (force * va).sum((1, 2)) > 0
    v_norm = va.norm(dim=(1, 2), keepdim=True)
    f_norm = force.norm(dim=(1, 2), keepdim=True).clamp(min=torch.finfo(force.dtype).tiny)
    mixed = (1 - a.view(-1, 1, 1)) * va + a.view(-1, 1, 1) * v_norm * force / f_norm
    va = torch.where(going.view(-1, 1, 1), mixed, torch.zeros_like(va))
    speed_up = going & (state.downhill[active] > _N_MIN)
    h = torch.where(speed_up, (h * _F_INC).clamp(max=dt_max), h)
    h = torch.where(going, h, h * _F_DEC)
    a = torch.where(speed_up, a * _F_ALPHA, a)
    state.alpha[active] = torch.where(going, a, torch.full_like(a, _ALPHA_START))
    state.downhill[active] = torch.where(going, state.downhill[active] + 1, 0)
    state.dt[active] = h
    va = va + h.view(-1, 1, 1) * force
    state.velocity[active] = va
    return h.view(-1, 1, 1) * va


def _limit_move(move: Tensor, max_displacement: float) -> Tensor:
    """``move`` ``(B, N, 3)`` scaled down, per replica, so that no particle moves farther
    than ``max_displacement``."""
    longest = move.norm(dim=-1).amax(-1).clamp(min=torch.finfo(move.dtype).tiny)
    return move * (max_displacement / longest).clamp(max=1.0).view(-1, 1, 1)


@torch.no_grad()
def lbfgs(
    potential: Potential,
    positions: Tensor,
    *,
    fmax: float = 1e-4,
    max_steps: int = 5000,
    memory: int = 10,
    max_displacement: float = 0.2,
    initial_step: float = 0.01,
) -> QuenchResult:
    """Quench every replica in ``positions`` with limited-memory BFGS, batched.

    Each replica keeps its own ``memory`` most recent position and gradient differences and
    steps along the two-loop-recursion direction (J. Nocedal, *Updating quasi-Newton matrices
    with limited storage*, Math. Comp. 35, 773 (1980)), scaled down so that no particle moves
    farther than ``max_displacement``. There is no line search: as in GMIN's L-BFGS, a step that
    raises the energy is retried at a tenth of its length, and a direction that is not downhill
    restarts the replica from steepest descent with step ``initial_step`` times the gradient.
    Each try is one energy-and-gradient evaluation. A replica stops once its largest
    per-particle gradient norm is below ``fmax``; the others go on.

    Args:
        potential: the problem (see :class:`Potential`).
        positions: ``(R, N, 3)`` starting points; not modified.
        fmax: convergence threshold on each replica's largest per-particle gradient norm.
        max_steps: at most this many evaluations per replica after the first.
        memory: the number of difference pairs kept per replica.
        max_displacement: no particle moves farther than this in one step.
        initial_step: the inverse curvature guessed before any pair is stored.
    """
    check_positions(positions, particles=potential.particles)
    check_positive(fmax, "fmax")
    check_count(max_steps, "max_steps", 0)
    check_count(memory, "memory", 1)
    check_positive(max_displacement, "max_displacement")
    check_positive(initial_step, "initial_step")
    state = _LbfgsState.start(potential, positions, memory, initial_step)
    active = (state.largest >= fmax).nonzero().squeeze(1)
    fresh = active  # replicas whose direction must be computed from their history
    for _ in range(max_steps):
        if len(fresh):
            state.direction[fresh] = lbfgs_direction(
                state.gradient[fresh], state.s[fresh], state.y[fresh], state.scale[fresh]
            )
        if not len(active):
            break
        step = _descent_step(state, active, initial_step, max_displacement)
        moved = _try_step(potential, state, active, step)
        active = active[state.largest[active] >= fmax]
        fresh = active[torch.isin(active, moved)]
    return QuenchResult(
        positions=state.x,
        energies=state.energy,
        fmax=state.largest,
        converged=state.largest < fmax,
        evaluations=state.evaluations,
    )


@dataclass
class _LbfgsState:
    """Each replica's L-BFGS state. Positions ``x`` are ``(R, N, 3)``; ``gradient`` and
    ``direction`` (the next step) are flat, ``(R, 3 N)``; the history ``s`` and ``y``
    ``(R, memory, 3 N)`` holds the position and gradient differences, oldest first, an
    all-zero pair being an empty slot; ``scale`` is the initial inverse Hessian
    ``H_0 = scale I``; ``largest`` is the largest per-particle gradient norm."""

    x: Tensor
    energy: Tensor
    gradient: Tensor
    largest: Tensor
    evaluations: Tensor
    s: Tensor
    y: Tensor
    scale: Tensor
    direction: Tensor

    @classmethod
    def start(
        cls, potential: Potential, positions: Tensor, memory: int, initial_step: float
    ) -> _LbfgsState:
        """The state at ``positions``, after one evaluation, with an empty history."""
        x = positions.clone()
        replicas, n = x.shape[0], x.shape[1]
        energy, gradient = potential.energy_and_gradient(x)
        flat = gradient.reshape(replicas, 3 * n).clone()
        s = x.new_zeros(replicas, memory, 3 * n)
        return cls(
            x=x,
            energy=energy,
            gradient=flat,
            largest=gradient.norm(dim=-1).amax(-1),
            evaluations=torch.ones(replicas, dtype=torch.long, device=x.device),
            s=s,
            y=torch.zeros_like(s),
            scale=torch.full((replicas,), initial_step, dtype=x.dtype, device=x.device),
            direction=torch.zeros_like(flat),
        )


def _descent_step(
    state: _LbfgsState, active: Tensor, initial_step: float, max_displacement: float
) -> Tensor:
    """The next step of each replica in ``active``, flat: along its direction, or where that
    is not downhill, along ``-initial_step`` times its gradient with its history forgotten;
    scaled down so that no particle moves farther than ``max_displacement``."""
    d, g = state.direction[active], state.gradient[active]
    uphill = (d * g).sum(-1) >= 0
    if bool(uphill.any()):
        restart = active[uphill]
        state.s[restart] = 0
        state.y[restart] = 0
        state.scale[restart] = initial_step
        d[uphill] = -initial_step * g[uphill]
    return _limit_move(d.view(len(active), -1, 3), max_displacement).view(len(active), -1)


def _try_step(potential: Potential, state: _LbfgsState, active: Tensor, step: Tensor) -> Tensor:
    """Evaluate each replica in ``active`` one ``step`` ahead. Where the energy does not
    rise (beyond rounding), the replica moves there and remembers the step; elsewhere its
    next try is a tenth of the step. Returns the replicas that moved."""
    trial = state.x[active] + step.view(len(active), -1, 3)
    potential.project_(trial)
    e_trial, g_trial = potential.energy_and_gradient(trial)
    state.evaluations[active] += 1
    e_now = state.energy[active]
    rounding = 64 * torch.finfo(e_now.dtype).eps  # a rise below rounding of the energy is none
    downhill = e_trial <= e_now + rounding * e_now.abs().clamp(min=1.0)
    state.direction[active[~downhill]] = step[~downhill] * 0.1
    moved = active[downhill]
    _remember(state, moved, trial[downhill], g_trial[downhill])
    state.x[moved] = trial[downhill]
    state.energy[moved] = e_trial[downhill]
    state.largest[moved] = g_trial[downhill].norm(dim=-1).amax(-1)
    return moved


def _remember(state: _LbfgsState, moved: Tensor, x_new: Tensor, gradient_new: Tensor) -> None:
    """Store the step to ``x_new`` and the gradient's change as the newest pair of each
    replica in ``moved``, dropping its oldest, where the pair keeps the inverse Hessian
    positive definite (``s . y > 0``); set the gradient to ``gradient_new``."""
    flat = (len(moved), state.gradient.shape[1])
    s = (x_new - state.x[moved]).reshape(flat)
    g_new = gradient_new.reshape(flat)
    y = g_new - state.gradient[moved]
    sy = (s * y).sum(-1)
    curved = sy > 0
    kept = moved[curved]
    state.s[kept] = torch.cat([state.s[kept, 1:], s[curved, None]], 1)
    state.y[kept] = torch.cat([state.y[kept, 1:], y[curved, None]], 1)
    state.scale[kept] = sy[curved] / y[curved].square().sum(-1)
    state.gradient[moved] = g_new


def lbfgs_direction(g: Tensor, s: Tensor, y: Tensor, scale: Tensor) -> Tensor:
    """``-H g`` for the L-BFGS inverse Hessian ``H`` of each row of ``g`` ``(B, D)``.

    ``s`` and ``y`` ``(B, m, D)`` hold the position and gradient differences, oldest first;
    an all-zero pair is an empty slot and drops out. ``scale`` ``(B,)`` is ``H_0 = gamma I``.
    Computed in the compact form of R. H. Byrd, J. Nocedal, R. B. Schnabel (Math. Program. 63,
    129 (1994)), ``H = gamma I + [S, gamma Y] W [S, gamma Y]^T``, with a few batched matrix
    products instead of the ``4 m`` vector operations of the two-loop recursion (the same
    ``H``: a test checks one against the other).
    """
    gamma = scale[:, None, None]
    sg = s @ g[..., None]  # (B, m, 1)
    yg = y @ g[..., None]
    sy = s @ y.transpose(1, 2)  # (B, m, m): s_i . y_j
    upper = sy.triu()
    empty = upper.diagonal(dim1=1, dim2=2) == 0
    upper = upper + torch.diag_embed(empty.to(g.dtype))  # empty slots: a unit pivot, no effect
    c = torch.linalg.solve_triangular(upper, sg, upper=True)
    inner = sy.diagonal(dim1=1, dim2=2)[..., None] * c + gamma * (y @ (y.transpose(1, 2) @ c))
    top = torch.linalg.solve_triangular(upper.transpose(1, 2), inner - gamma * yg, upper=False)
    hg = scale[:, None] * g + (s.transpose(1, 2) @ top - gamma * (y.transpose(1, 2) @ c))[..., 0]
    return hg.neg_()
