"""The optax port: same trajectories as the formulas and as PyTorch, and optax's composability."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
optax = pytest.importorskip("optax")

from _reference import (  # noqa: E402
    HOT_STEPS,
    LR,
    NUM_STEPS,
    RHO_0,
    SCHEDULES,
    TOTAL_STEPS,
    X0,
    empty_window,
    gradient,
    reference_rho,
    reference_trajectory,
    schedule_case,
    torch_trajectory,
)

from coolmomentum.optax import (  # noqa: E402
    SCHEDULE_ARGS,
    CoolMomentumState,
    coolmomentum,
    read_stats,
    reset_temperature,
    scale_by_coolmomentum,
)
from coolmomentum.schedules import DEFAULT_SCHEDULE  # noqa: E402


@pytest.fixture
def x64():
    """float64 for this test only (jax's x64 mode, scoped)."""
    with jax.enable_x64(True):
        yield


def run(tx, num_steps=NUM_STEPS, dtype=None, jit=True, params=None, state=None, start=0):
    """Optimize the shared test problem with ``tx``; parameters after every step, final state."""
    params = jnp.asarray(X0, dtype) if params is None else params
    state = tx.init(params) if state is None else state
    update = jax.jit(tx.update) if jit else tx.update
    xs = []
    for k in range(start, num_steps):
        g = jnp.asarray(gradient(np.asarray(params, np.float64), k), params.dtype)
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
        xs.append(np.asarray(params))
    return np.array(xs), params, state



@pytest.mark.parametrize("schedule", [*SCHEDULES, "callable"])
def test_trajectory_matches_formulas_and_torch(x64, schedule):
    """Every schedule, through the hot phase, the cooling and past S, in float64."""
    kwargs, rho = schedule_case(schedule)

    expected, _ = reference_trajectory(rho)
    xs, _, _ = run(coolmomentum(LR, **kwargs))
    assert xs.dtype == np.float64
    np.testing.assert_allclose(xs, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(xs, torch_trajectory(**kwargs), rtol=1e-13, atol=1e-13)


def test_alpha_is_the_papers_cooling_rate(x64):
    alpha = (1 - RHO_0) ** (1 / TOTAL_STEPS)
    by_alpha, _, _ = run(coolmomentum(LR, RHO_0, alpha=alpha))
    by_steps, _, _ = run(coolmomentum(LR, RHO_0, TOTAL_STEPS, schedule="exponential"))
    np.testing.assert_allclose(by_alpha, by_steps, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("decoupled", [False, True], ids=["l2", "decoupled"])
def test_weight_decay_matches_formulas_and_torch(x64, decoupled):
    kwargs = {"rho_0": RHO_0, "total_steps": TOTAL_STEPS, "weight_decay": 0.3}
    expected, _ = reference_trajectory(
        lambda k: reference_rho(k, DEFAULT_SCHEDULE), weight_decay=0.3, decoupled=decoupled
    )
    xs, _, _ = run(coolmomentum(LR, **kwargs, decoupled_weight_decay=decoupled))
    np.testing.assert_allclose(xs, expected, rtol=1e-12, atol=1e-12)
    torch_xs = torch_trajectory(**kwargs, decoupled_weight_decay=decoupled)
    np.testing.assert_allclose(xs, torch_xs, rtol=1e-13, atol=1e-13)


def test_learning_rate_schedule_enters_the_recurrence(x64):
    """An optax schedule gives the step-by-step rule, as a PyTorch lr scheduler does."""

    def lr(k):
        return LR * 0.9**k

    for decoupled in (False, True):
        kwargs = {"rho_0": RHO_0, "total_steps": TOTAL_STEPS, "weight_decay": 0.3}
        expected, _ = reference_trajectory(
            lambda k: reference_rho(k, DEFAULT_SCHEDULE),
            lr=lr,
            weight_decay=0.3,
            decoupled=decoupled,
        )
        xs, _, _ = run(coolmomentum(lr, **kwargs, decoupled_weight_decay=decoupled))
        np.testing.assert_allclose(xs, expected, rtol=1e-12, atol=1e-12)
        torch_xs = torch_trajectory(lr=lr, **kwargs, decoupled_weight_decay=decoupled)
        np.testing.assert_allclose(xs, torch_xs, rtol=1e-13, atol=1e-13)


def test_constant_schedule_is_sgd_with_momentum_under_a_learning_rate_schedule(x64):
    rho = 0.8

    def warm_up(count, scale=1.0):  # over 6 steps, in float64
        return scale * LR * jnp.minimum(1.0, (count.astype(jnp.float64) + 1) / 6)

    for lr, sgd_lr in ((LR, LR * (1 + rho) / 2), (warm_up, lambda k: warm_up(k, (1 + rho) / 2))):
        xs, _, _ = run(coolmomentum(lr, rho, schedule="constant"))
        sgd_xs, _, _ = run(optax.sgd(sgd_lr, momentum=rho))
        np.testing.assert_allclose(xs, sgd_xs, rtol=1e-14, atol=1e-14)


def test_jit_matches_eager_in_float32():
    tx = coolmomentum(LR, RHO_0, TOTAL_STEPS, hot_steps=HOT_STEPS, weight_decay=0.1)
    jitted, _, _ = run(tx, jit=True)
    eager, _, _ = run(tx, jit=False)
    assert jitted.dtype == np.float32
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)
    expected, _ = reference_trajectory(
        lambda k: reference_rho(k, DEFAULT_SCHEDULE, hot=HOT_STEPS), weight_decay=0.1
    )
    np.testing.assert_allclose(jitted, expected, rtol=1e-5, atol=1e-5)


def test_mixed_dtype_pytree():
    """Velocities and updates keep each leaf's dtype; rho follows jax's x64 setting."""
    params = {
        "w": jnp.ones((3,), jnp.float32),
        "b": jnp.ones((2, 2), jnp.bfloat16),
        "h": jnp.ones((4,), jnp.float16),
    }
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    tx = coolmomentum(LR, RHO_0, TOTAL_STEPS)
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    inner = state[0]
    assert inner.rho.dtype == jnp.float32
    for name, p in params.items():
        assert updates[name].dtype == p.dtype
        assert inner.momentum[name].dtype == p.dtype
        step = np.float32(-LR * (1 + RHO_0) / 2 * 0.5)
        np.testing.assert_array_equal(updates[name], jnp.full_like(p, step))

    with jax.enable_x64(True):
        params = {**params, "d": jnp.ones((2,), jnp.float64)}
        grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
        state = tx.init(params)
        updates, state = jax.jit(tx.update)(grads, state, params)
        assert state[0].rho.dtype == jnp.float64
        assert state[0].temperature_sum.dtype == jnp.float64
        assert jax.tree.map(lambda u: u.dtype, updates) == jax.tree.map(lambda p: p.dtype, params)


def test_multisteps_averages_then_steps(x64):
    """optax.MultiSteps: one CoolMomentum step (one schedule step) per k microbatches."""
    every_k, num_steps = 3, 8
    micro = [gradient(X0, i) for i in range(every_k * num_steps)]
    kwargs = {"rho_0": RHO_0, "total_steps": 5, "weight_decay": 0.2}

    # MultiSteps accumulates in float32 unless told otherwise.
    tx = optax.MultiSteps(
        coolmomentum(LR, **kwargs), every_k_schedule=every_k, accumulator_dtype=jnp.float64
    )
    params = jnp.asarray(X0)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for g in micro:
        updates, state = update(jnp.asarray(g), state, params)
        params = optax.apply_updates(params, updates)

    plain = coolmomentum(LR, **kwargs)
    ref_params = jnp.asarray(X0)
    ref_state = plain.init(ref_params)
    for i in range(num_steps):
        g = np.mean(micro[i * every_k : (i + 1) * every_k], axis=0)
        updates, ref_state = plain.update(jnp.asarray(g), ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, updates)

    np.testing.assert_allclose(params, ref_params, rtol=1e-13, atol=1e-13)
    assert read_stats(state)["step"] == num_steps
    assert read_stats(state)["rho"] == 0.0


def test_inject_hyperparams_learning_rate(x64):
    """A learning rate changed through inject_hyperparams takes effect at the next step."""
    tx = optax.inject_hyperparams(coolmomentum, static_args=SCHEDULE_ARGS)(
        learning_rate=LR, rho_0=RHO_0, total_steps=TOTAL_STEPS, hot_steps=HOT_STEPS
    )
    xs1, params, state = run(tx, num_steps=10)
    state.hyperparams["learning_rate"] = jnp.asarray(LR / 2)
    xs2, _, state = run(tx, params=params, state=state, start=10)

    def lr(k):
        return LR if k < 10 else LR / 2

    expected, _ = reference_trajectory(
        lambda k: reference_rho(k, DEFAULT_SCHEDULE, hot=HOT_STEPS), lr=lr
    )
    np.testing.assert_allclose(np.concatenate([xs1, xs2]), expected, rtol=1e-12, atol=1e-12)
    assert read_stats(state)["step"] == NUM_STEPS


def test_inject_hyperparams_without_static_schedule_args_explains():
    tx = optax.inject_hyperparams(coolmomentum)(learning_rate=LR, total_steps=TOTAL_STEPS)
    with pytest.raises(ValueError, match="static_args"):
        tx.init(jnp.asarray(X0))


@pytest.mark.parametrize("use_x64", [False, True], ids=["float32", "float64"])
def test_saved_state_continues_exactly(tmp_path, use_x64):
    """Leaves saved with np.savez and restored into a fresh state: the run goes on bit for bit."""
    with jax.enable_x64(use_x64):

        def make():
            return coolmomentum(
                lambda count: LR * 0.95**count,
                RHO_0,
                TOTAL_STEPS,
                schedule="exponential-temperature",
                hot_steps=HOT_STEPS,
                weight_decay=0.1,
                decoupled_weight_decay=True,
            )

        full, _, _ = run(make())
        first, params, state = run(make(), num_steps=7)
        np.savez(tmp_path / "opt.npz", *jax.tree.leaves(state))
        np.save(tmp_path / "params.npy", np.asarray(params))

        tx = make()
        params = jnp.asarray(np.load(tmp_path / "params.npy"))
        with np.load(tmp_path / "opt.npz") as saved:
            leaves = [jnp.asarray(saved[f"arr_{i}"]) for i in range(len(saved.files))]
        state = jax.tree.unflatten(jax.tree.structure(tx.init(params)), leaves)
        rest, _, _ = run(tx, params=params, state=state, start=7)
    np.testing.assert_array_equal(np.concatenate([first, rest]), full)


def test_stats_report_step_rho_and_temperature(x64):
    expected_rho = [reference_rho(k, "linear-temperature", hot=HOT_STEPS) for k in range(24)]
    _, mean_sq = reference_trajectory(lambda k: expected_rho[k])
    tx = coolmomentum(LR, RHO_0, TOTAL_STEPS, schedule="linear-temperature", hot_steps=HOT_STEPS)
    params = jnp.asarray(X0)
    fresh = read_stats(tx.init(params))
    assert fresh == empty_window(RHO_0)

    _, params, state = run(tx, num_steps=10)
    stats = read_stats(state)
    assert stats["step"] == 10
    assert stats["rho"] == pytest.approx(expected_rho[9], rel=1e-13)
    assert stats["temperature"] == pytest.approx(np.mean(mean_sq[:10]), rel=1e-12)
    assert stats["temperature_steps"] == 10

    state = reset_temperature(state)
    assert read_stats(state)["temperature"] is None
    _, _, state = run(tx, num_steps=NUM_STEPS, params=params, state=state, start=10)
    stats = read_stats(state)
    assert stats["temperature"] == pytest.approx(np.mean(mean_sq[10:]), rel=1e-12)
    assert stats["temperature_steps"] == NUM_STEPS - 10
    assert stats["rho"] == 0.0  # cooled: plain SGD for good

    untracked = coolmomentum(LR, RHO_0, TOTAL_STEPS, track_temperature=False)
    _, _, state = run(untracked, num_steps=3)
    assert read_stats(state)["temperature"] is None
    assert read_stats(state)["step"] == 3


@pytest.mark.parametrize("schedule", SCHEDULES[:-1])
def test_rho_is_exactly_zero_once_cooled_under_jit(schedule):
    """After hot_steps + S steps rho is 0, not a rounding error away, in float32 under jit."""
    tx = scale_by_coolmomentum(LR, RHO_0, TOTAL_STEPS, schedule=schedule, hot_steps=HOT_STEPS)
    _, _, state = run(tx)
    assert isinstance(state, CoolMomentumState)
    assert read_stats(state)["rho"] == 0.0


def test_read_stats_needs_exactly_one_state():
    tx = optax.chain(coolmomentum(LR, total_steps=5), coolmomentum(LR, total_steps=5))
    with pytest.raises(ValueError, match="exactly one"):
        read_stats(tx.init(jnp.asarray(X0)))


def test_decoupled_weight_decay_needs_params():
    tx = coolmomentum(LR, total_steps=5, weight_decay=0.1, decoupled_weight_decay=True)
    params = jnp.asarray(X0)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"learning_rate": -0.1, "total_steps": 10}, "learning_rate"),
        ({"learning_rate": "0.1", "total_steps": 10}, "learning_rate"),
        ({"rho_0": 1.0, "total_steps": 10}, "rho_0"),
        ({"total_steps": 0}, "total_steps"),
        ({}, "needs total_steps"),
        ({"total_steps": 10, "alpha": 0.999}, "either total_steps or alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": 0.999, "schedule": "linear-temperature"}, "alpha"),
        ({"total_steps": 10, "schedule": "cosine"}, "schedule"),
        ({"total_steps": 10, "hot_steps": -1}, "hot_steps"),
        ({"total_steps": 10, "hot_steps": 2.5}, "hot_steps"),
        ({"total_steps": 10, "weight_decay": -1.0}, "weight_decay"),
        ({"total_steps": jnp.asarray(10.0)}, "static_args"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    kwargs = {"learning_rate": LR, **kwargs}
    with pytest.raises(ValueError, match=match):
        coolmomentum(**kwargs)
    kwargs.pop("weight_decay", None)
    if "weight_decay" not in match:
        with pytest.raises(ValueError, match=match):
            scale_by_coolmomentum(**kwargs)
