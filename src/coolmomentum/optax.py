"""CoolMomentum for JAX, as optax gradient transformations.

Per leaf of the parameter pytree, at step ``k`` (counted from 0), with ``b`` the momentum::

    b_k     = rho_k * b_{k-1} - (1 + rho_k) / 2 * g_k      (b_{-1} = 0)
    x_{k+1} = x_k + lr_k * b_k

with ``rho_k`` from :mod:`coolmomentum.schedules`: the same rule as
:class:`coolmomentum.torch.CoolMomentum`, step for step, also under a learning-rate
schedule (the velocity ``v_k = lr_k * b_k`` follows a change of ``lr`` as SGD's does). The
temperature is a property of ``v``, so :func:`scale_by_coolmomentum` takes
``learning_rate`` and its output *is* the parameter change ``v_k``, signs included (apply it
with ``optax.apply_updates``; do not chain ``optax.scale_by_learning_rate`` after it).

Usage::

    import optax
    from coolmomentum.optax import coolmomentum, read_stats

    tx = coolmomentum(learning_rate=0.1, rho_0=0.99, total_steps=epochs * steps_per_epoch)
    opt_state = tx.init(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    read_stats(opt_state)  # {"step": ..., "rho": ..., "temperature": ..., ...}
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import _stats
from ._numbers import check_number, is_number, schedule_float
from .schedules import RhoFn, Schedule

__all__ = [
    "SCHEDULE_ARGS",
    "CoolMomentumState",
    "coolmomentum",
    "read_stats",
    "reset_temperature",
    "scale_by_coolmomentum",
]

# The arguments that define the cooling schedule. They must be Python values when the
# transform is built; with ``optax.inject_hyperparams`` pass them as ``static_args``.
SCHEDULE_ARGS = ("rho_0", "total_steps", "alpha", "schedule", "hot_steps")


class CoolMomentumState(NamedTuple):
    """State of :func:`scale_by_coolmomentum`; every field is an array, so it saves as leaves.

    Attributes:
        count: steps taken (int32); the schedule position of the next step.
        momentum: ``b = v / lr``, a pytree like the parameters, each leaf in its parameter's
            dtype.
        rho: the ``rho`` of the latest step (``rho_0`` before the first).
        temperature_sum: the sum of ``v**2`` over the elements and the steps of the current
            window.
        temperature_steps: the number of steps in the current window (int32); times the
            number of elements, the count of that sum.
    """

    count: jax.Array  # type: ignore[assignment]  # optax's name; shadows tuple.count
    momentum: optax.Updates
    rho: jax.Array
    temperature_sum: jax.Array
    temperature_steps: jax.Array


def _build_schedule(
    rho_0: float,
    total_steps: float | None,
    alpha: float | None,
    schedule: str | RhoFn | None,
    hot_steps: int,
) -> Schedule:
    given = {"rho_0": rho_0, "total_steps": total_steps, "alpha": alpha, "hot_steps": hot_steps}
    for name, value in given.items():
        if isinstance(value, (jax.Array, np.ndarray)):
            raise ValueError(
                f"{name} must be a Python number, got an array: the schedule is fixed when the "
                f"transform is built. With optax.inject_hyperparams, list the schedule "
                f"arguments as static: inject_hyperparams(coolmomentum, "
                f"static_args=coolmomentum.optax.SCHEDULE_ARGS)"
            )
    return Schedule.create(rho_0, total_steps, alpha, schedule, hot_steps)


def _value_at(learning_rate: optax.ScalarOrSchedule, count: jax.Array) -> Any:
    return learning_rate(count) if callable(learning_rate) else learning_rate


def _compute_dtypes(leaf: jax.Array) -> tuple[Any, Any]:
    """The dtype a leaf is updated in (at least float32) and its real counterpart.

    Low-precision leaves are updated in float32 and stored back in their dtype.
    """
    dtype = jnp.promote_types(leaf.dtype, jnp.float32)
    return dtype, jnp.finfo(dtype).dtype  # float32 for complex64 too


def _sum_of_squares(v: jax.Array, dtype: Any) -> jax.Array:
    if jnp.iscomplexobj(v):
        return jnp.sum(jnp.square(v.real.astype(dtype))) + jnp.sum(jnp.square(v.imag.astype(dtype)))
    return jnp.sum(jnp.square(v.astype(dtype)))


def _real_size(v: jax.Array) -> int:
    """The number of real elements (a complex element counts twice, as in PyTorch)."""
    return v.size * (2 if jnp.iscomplexobj(v) else 1)


def scale_by_coolmomentum(
    learning_rate: optax.ScalarOrSchedule,
    rho_0: float = 0.99,
    total_steps: float | None = None,
    *,
    alpha: float | None = None,
    schedule: str | RhoFn | None = None,
    hot_steps: int = 0,
    track_temperature: bool = True,
) -> optax.GradientTransformation:
    """The CoolMomentum recurrence: gradients in, parameter changes ``v_k`` out.

    Args:
        learning_rate: ``lr``, the integration step ``dt**2``: a float, a scalar array, or an
            optax schedule ``count -> lr`` evaluated at the step being taken. It is applied
            inside the recurrence (see the module docstring), so the output is the update
            itself, signs included.
        rho_0: initial momentum coefficient, in ``[0, 1)``.
        total_steps: ``S``, the number of cooling steps; after ``hot_steps + S`` steps
            ``rho`` is 0 for good. Needed by every schedule but ``"constant"`` and callables.
        alpha: the paper's cooling rate, instead of ``total_steps`` for the exponential
            schedule: ``S = ln(1 - rho_0) / ln(alpha)``.
        schedule: ``"cosine-temperature"`` (the default), ``"linear-temperature"``,
            ``"exponential"`` (the paper's Eq. 20; the default when ``alpha`` is given),
            ``"exponential-temperature"``,
            ``"constant"``, or a callable ``step -> rho`` that
            receives the step as a floating-point jax scalar (use ``jax.numpy`` in it).
        hot_steps: ``H``, steps held at ``rho_0`` before cooling starts.
        track_temperature: accumulate the temperature read by :func:`read_stats`
            (one reduction per leaf per step); ``False`` skips it.

    ``rho`` is computed in float32, or float64 when ``jax_enable_x64`` is on; each momentum
    leaf is kept in its parameter's dtype and updated in at least float32. Arguments that
    are out of range raise ``ValueError``.
    """
    sched = _build_schedule(rho_0, total_steps, alpha, schedule, hot_steps)
    if not callable(learning_rate):
        # An array (from inject_hyperparams) is known only inside jit.
        check_number(
            "learning_rate", learning_rate, hint=" (the step dt**2, e.g. 0.01)", arrays=True
        )

    def rho_at(count: jax.Array) -> jax.Array:
        dtype = schedule_float("jax")
        return jnp.asarray(sched(count.astype(dtype), ops=jnp), dtype)

    def init_fn(params: optax.Params) -> CoolMomentumState:
        dtype = schedule_float("jax")
        count = jnp.zeros([], jnp.int32)
        return CoolMomentumState(
            count=count,
            momentum=jax.tree.map(jnp.zeros_like, params),
            rho=rho_at(count),
            temperature_sum=jnp.zeros([], dtype),
            temperature_steps=jnp.zeros([], jnp.int32),
        )

    def update_fn(
        updates: optax.Updates, state: CoolMomentumState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, CoolMomentumState]:
        del params
        rho = rho_at(state.count)
        lr = _value_at(learning_rate, state.count)

        def step(grad: jax.Array, momentum: jax.Array) -> jax.Array:
            dtype, real = _compute_dtypes(momentum)
            rho_k = rho.astype(real)
            new = rho_k * momentum.astype(dtype) - (1 + rho_k) / 2 * grad.astype(dtype)
            return new.astype(momentum.dtype)

        def velocity_of(momentum: jax.Array) -> jax.Array:
            dtype, real = _compute_dtypes(momentum)
            return (jnp.asarray(lr, real) * momentum.astype(dtype)).astype(momentum.dtype)

        momentum = jax.tree.map(step, updates, state.momentum)
        velocity = jax.tree.map(velocity_of, momentum)
        temperature_sum, temperature_steps = state.temperature_sum, state.temperature_steps
        leaves = jax.tree.leaves(velocity)
        if track_temperature and sum(_real_size(v) for v in leaves) > 0:
            acc = temperature_sum.dtype
            temperature_sum = temperature_sum + sum(_sum_of_squares(v, acc) for v in leaves)
            temperature_steps = optax.safe_increment(temperature_steps)
        new_state = CoolMomentumState(
            count=optax.safe_increment(state.count),
            momentum=momentum,
            rho=rho,
            temperature_sum=temperature_sum,
            temperature_steps=temperature_steps,
        )
        return velocity, new_state

    return optax.GradientTransformation(init_fn, update_fn)


class DecoupledWeightDecayState(NamedTuple):
    """Step count of the decoupled weight decay, to evaluate a learning-rate schedule."""

    count: jax.Array  # type: ignore[assignment]


def _add_decoupled_weight_decay(
    learning_rate: optax.ScalarOrSchedule, weight_decay: Any
) -> optax.GradientTransformation:
    """Adds ``-lr_k * weight_decay * x`` to the updates: ``x *= 1 - lr * wd`` before the step."""

    def init_fn(params: optax.Params) -> DecoupledWeightDecayState:
        del params
        return DecoupledWeightDecayState(count=jnp.zeros([], jnp.int32))

    def update_fn(
        updates: optax.Updates,
        state: DecoupledWeightDecayState,
        params: optax.Params | None = None,
    ) -> tuple[optax.Updates, DecoupledWeightDecayState]:
        if params is None:
            raise ValueError(
                "decoupled_weight_decay=True needs the parameters: call "
                "tx.update(grads, state, params)"
            )
        shrink = _value_at(learning_rate, state.count) * weight_decay
        updates = jax.tree.map(
            lambda u, p: (u - jnp.asarray(shrink, u.dtype) * p).astype(u.dtype), updates, params
        )
        return updates, DecoupledWeightDecayState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def coolmomentum(
    learning_rate: optax.ScalarOrSchedule,
    rho_0: float = 0.99,
    total_steps: float | None = None,
    *,
    alpha: float | None = None,
    schedule: str | RhoFn | None = None,
    hot_steps: int = 0,
    weight_decay: float | jax.Array = 0.0,
    decoupled_weight_decay: bool = False,
    track_temperature: bool = True,
) -> optax.GradientTransformation:
    """CoolMomentum, the optax counterpart of :class:`coolmomentum.torch.CoolMomentum`.

    Args:
        learning_rate: a float or an optax schedule ``count -> lr``; see
            :func:`scale_by_coolmomentum`.
        rho_0, total_steps, alpha, schedule, hot_steps, track_temperature: as in
            :func:`scale_by_coolmomentum`.
        weight_decay: L2 penalty added to the gradient (``g + weight_decay * x``), as in the
            paper's code; with ``decoupled_weight_decay=True`` the weights are shrunk instead
            (``x *= 1 - lr * weight_decay`` before the step), as AdamW does. Both need
            ``params`` in ``update``.

    With ``optax.inject_hyperparams``, the schedule arguments must be static (they define
    the schedule, which is fixed when the transform is built)::

        tx = optax.inject_hyperparams(coolmomentum, static_args=SCHEDULE_ARGS)(
            learning_rate=0.1, total_steps=1000
        )
        opt_state.hyperparams["learning_rate"] = 0.05  # takes effect at the next step
    """
    check_number("weight_decay", weight_decay, arrays=True)
    core = scale_by_coolmomentum(
        learning_rate,
        rho_0,
        total_steps,
        alpha=alpha,
        schedule=schedule,
        hot_steps=hot_steps,
        track_temperature=track_temperature,
    )
    # A Python 0 adds nothing; an array (e.g. injected) may change, so it stays in the chain.
    no_decay = is_number(weight_decay) and weight_decay == 0
    if no_decay:
        return optax.chain(core)
    if decoupled_weight_decay:
        return optax.chain(core, _add_decoupled_weight_decay(learning_rate, weight_decay))
    return optax.chain(optax.add_decayed_weights(weight_decay), core)


def _find_states(state: Any) -> list[CoolMomentumState]:
    def is_ours(x: Any) -> bool:
        return isinstance(x, CoolMomentumState)

    return [s for s in jax.tree.leaves(state, is_leaf=is_ours) if is_ours(s)]


def read_stats(state: Any) -> dict[str, Any]:
    """The statistics of the CoolMomentum state inside ``state``, as Python values.

    ``state`` is the optimizer state of :func:`coolmomentum` or of any optax wrapper around it
    (``chain``, ``MultiSteps``, ``inject_hyperparams``, ...). Returns the dict every port
    returns: ``step`` (the number of steps taken), ``rho`` (of the latest step; ``rho_0``
    before the first), ``temperature`` (the mean of ``v**2`` over all elements and the steps
    of the window since the last :func:`reset_temperature`; ``None`` when the window is
    empty or tracking is off), ``temperature_sum`` and ``temperature_count`` (that sum and
    the number of element-steps it covers) and ``temperature_steps``. This reads device
    values (it synchronizes); call it outside ``jit``.
    """
    found = _find_states(state)
    if len(found) != 1:
        raise ValueError(
            f"read_stats needs a state holding exactly one CoolMomentumState, found "
            f"{len(found)}; pass the part of the state that belongs to one transform"
        )
    s = jax.device_get(found[0])
    steps = int(s.temperature_steps)
    size = sum(_real_size(m) for m in jax.tree.leaves(s.momentum))
    return _stats.window(int(s.count), float(s.rho), float(s.temperature_sum), steps * size, steps)


def reset_temperature(state: Any) -> Any:
    """``state`` with every CoolMomentum temperature window emptied (e.g. once per epoch)."""

    def is_ours(x: Any) -> bool:
        return isinstance(x, CoolMomentumState)

    def reset(x: Any) -> Any:
        if not is_ours(x):
            return x
        return x._replace(
            temperature_sum=jnp.zeros_like(x.temperature_sum),
            temperature_steps=jnp.zeros_like(x.temperature_steps),
        )

    return jax.tree.map(reset, state, is_leaf=is_ours)
