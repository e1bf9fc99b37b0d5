"""Keras tests for one backend; ``tests/ports/test_keras.py`` runs this file with KERAS_BACKEND set.

Keras fixes its backend when it is first imported, so each backend needs its own process.
"""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from _reference import (  # noqa: E402
    LR,
    NUM_STEPS,
    RHO_0,
    SCHEDULES,
    TOTAL_STEPS,
    X0,
    callable_rho,
    empty_window,
    gradient,
    reference_rho,
    reference_trajectory,
    schedule_case,
    torch_trajectory,
)

from coolmomentum.keras import CoolMomentum  # noqa: E402
from coolmomentum.schedules import DEFAULT_SCHEDULE  # noqa: E402

# float32 against float64 over NUM_STEPS steps: the largest difference seen is 2.5e-7.
TOL = {"rtol": 1e-6, "atol": 1e-6}

# Keras's own array conversions warn under NumPy 2; nothing here can change that.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def run(opt, num_steps=NUM_STEPS, variable=None, start=0):
    """Optimize the shared test problem in float32; parameters after every step."""
    variable = keras.Variable(X0.astype("float32")) if variable is None else variable
    xs = []
    for k in range(start, num_steps):
        g = gradient(to_numpy(variable).astype(np.float64), k).astype(np.float32)
        opt.apply([keras.ops.convert_to_tensor(g)], [variable])
        xs.append(to_numpy(variable))
    return np.array(xs), variable


@pytest.mark.parametrize("schedule", [*SCHEDULES, "callable"])
def test_trajectory_matches_formulas_and_torch(schedule):
    kwargs, rho = schedule_case(schedule)

    xs, _ = run(CoolMomentum(LR, **kwargs))
    assert xs.dtype == np.float32
    expected, _ = reference_trajectory(rho)
    np.testing.assert_allclose(xs, expected, **TOL)
    np.testing.assert_allclose(xs, torch_trajectory(**kwargs), **TOL)


def test_a_learning_rate_schedule_rescales_the_velocity_as_in_torch():
    warm_up = keras.optimizers.schedules.PolynomialDecay(LR / 8, NUM_STEPS, LR, power=1.0)

    def lr(k):
        return LR / 8 + (LR - LR / 8) * k / NUM_STEPS

    kwargs, rho = schedule_case("linear-temperature")
    xs, _ = run(CoolMomentum(warm_up, **kwargs))
    expected, _ = reference_trajectory(rho, lr=lr)
    np.testing.assert_allclose(xs, expected, **TOL)
    np.testing.assert_allclose(xs, torch_trajectory(lr=lr, **kwargs), **TOL)


def test_alpha_is_the_papers_cooling_rate():
    alpha = (1 - RHO_0) ** (1 / TOTAL_STEPS)
    xs, _ = run(CoolMomentum(LR, RHO_0, alpha=alpha))
    expected, _ = reference_trajectory(lambda k: reference_rho(k, "exponential"))
    np.testing.assert_allclose(xs, expected, **TOL)


def test_keras_weight_decay_is_the_decoupled_form():
    kwargs = {"rho_0": RHO_0, "total_steps": TOTAL_STEPS}
    xs, _ = run(CoolMomentum(LR, **kwargs, weight_decay=0.25))
    expected, _ = reference_trajectory(
        lambda k: reference_rho(k, DEFAULT_SCHEDULE), weight_decay=0.25, decoupled=True
    )
    np.testing.assert_allclose(xs, expected, **TOL)
    torch_xs = torch_trajectory(**kwargs, weight_decay=0.25, decoupled_weight_decay=True)
    np.testing.assert_allclose(xs, torch_xs, **TOL)


def test_clipnorm_applies_before_the_step():
    opt = CoolMomentum(LR, RHO_0, TOTAL_STEPS, clipnorm=1.0)
    variable = keras.Variable(np.zeros(4, "float32"))
    g = np.array([30.0, 40.0, 0.0, 0.0], "float32")  # norm 50, clipped to 1
    opt.apply([keras.ops.convert_to_tensor(g)], [variable])
    expected = -LR * (1 + RHO_0) / 2 * g / 50.0
    np.testing.assert_allclose(to_numpy(variable), expected, rtol=1e-6)


def test_gradient_accumulation_counts_real_steps():
    """With gradient_accumulation_steps the schedule advances once per real update."""
    every_k, num_steps = 2, 6
    micro = [gradient(X0, i).astype(np.float32) for i in range(every_k * num_steps)]
    acc = CoolMomentum(LR, RHO_0, 3, gradient_accumulation_steps=every_k)
    plain = CoolMomentum(LR, RHO_0, 3)
    a, b = keras.Variable(X0.astype("float32")), keras.Variable(X0.astype("float32"))
    for g in micro:
        acc.apply([keras.ops.convert_to_tensor(g)], [a])
    for i in range(num_steps):
        g = np.mean(micro[i * every_k : (i + 1) * every_k], axis=0)
        plain.apply([keras.ops.convert_to_tensor(g)], [b])
    np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-6, atol=1e-6)
    assert acc.stats()["step"] == num_steps
    assert acc.stats()["rho"] == 0.0


def test_stats_report_step_rho_and_temperature():
    expected_rho = [reference_rho(k, "linear-temperature") for k in range(NUM_STEPS)]
    _, mean_sq = reference_trajectory(lambda k: expected_rho[k])
    opt = CoolMomentum(LR, RHO_0, TOTAL_STEPS, schedule="linear-temperature")
    assert opt.stats() == empty_window(RHO_0)
    _, variable = run(opt, num_steps=10)
    stats = opt.stats()
    assert stats["step"] == 10
    assert stats["rho"] == pytest.approx(expected_rho[9], rel=1e-12)
    assert stats["temperature"] == pytest.approx(np.mean(mean_sq[:10]), rel=1e-5)
    assert stats["temperature_steps"] == 10
    assert opt.stats()["temperature"] is None  # the previous call reset the window
    run(opt, variable=variable, start=10)
    stats = opt.stats(reset=False)
    assert stats["temperature"] == pytest.approx(np.mean(mean_sq[10:]), rel=1e-5)
    assert stats["rho"] == 0.0


def test_bfloat16_variables_keep_rho_and_lr_in_float32():
    import ml_dtypes  # a dependency of Keras
    import torch

    from coolmomentum.torch import CoolMomentum as TorchCoolMomentum

    # One gradient, then zeros: b_k = rho**k b_0, which rho = 0.99 cast to bfloat16 (0.98828)
    # would leave 5 % short after 30 steps. lr has 11 significant bits: it is no bfloat16
    # number (that would be 0.10010), and lr * b is exact in float32.
    rho, lr, steps = 0.99, 1638 / 16384, 30
    rng = np.random.default_rng(0)
    x0, g = rng.normal(size=(2, 64)).astype(ml_dtypes.bfloat16).astype("float32")
    grads = [g if k == 0 else np.zeros_like(g) for k in range(steps)]

    variable = keras.Variable(x0, dtype="bfloat16")
    opt = CoolMomentum(lr, rho, schedule="constant")  # rho is float32(0.99) on every backend
    for grad in grads:
        opt.apply([keras.ops.cast(grad, "bfloat16")], [variable])
    (momentum,) = [v for v in opt.variables if v.path.endswith("_momentum")]

    # The recurrence with the coefficients in float32 and b and x rounded to bfloat16 when
    # stored. Exact on every backend: each stored value comes from the same float32
    # operations, rounded to bfloat16 once; lr * b is exact in float32, so a fused
    # multiply-add gives x + lr * b as separate ones do.
    def to_bfloat16(a):
        return a.astype(ml_dtypes.bfloat16).astype("float32")

    b, x = np.zeros_like(x0), x0
    for grad in grads:
        b = to_bfloat16(np.float32(rho) * b - np.float32((1 + rho) / 2) * grad)
        x = to_bfloat16(x + np.float32(lr) * b)
    np.testing.assert_array_equal(to_numpy(momentum).astype("float32"), b)
    np.testing.assert_array_equal(to_numpy(variable).astype("float32"), x)

    # The torch port computes the same buffer and variable.
    p = torch.tensor(x0, dtype=torch.bfloat16, requires_grad=True)
    torch_opt = TorchCoolMomentum([p], lr=lr, rho_0=rho, schedule="constant")
    for grad in grads:
        p.grad = torch.tensor(grad, dtype=torch.bfloat16)
        torch_opt.step()
    np.testing.assert_array_equal(torch_opt.state[p]["momentum_buffer"].float().numpy(), b)
    np.testing.assert_array_equal(p.detach().float().numpy(), x)
    # Sums of float32 squares in different orders (in float32 on JAX).
    torch_temperature = torch_opt.total_stats()["temperature"]
    assert opt.stats()["temperature"] == pytest.approx(torch_temperature, rel=1e-5)


def make_model(seed=0):
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, kernel_initializer=keras.initializers.GlorotUniform(seed)),
            keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(seed + 1)),
        ]
    )
    optimizer = CoolMomentum(0.05, RHO_0, total_steps=12, hot_steps=2, weight_decay=1e-3)
    model.compile(optimizer=optimizer, loss="mse")
    return model


def make_data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0], "float32"))[:, None]
    return x, y


def test_compile_and_fit_with_stats_logged_every_epoch():
    model = make_model()
    x, y = make_data()
    logged = []
    log = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: logged.append(model.optimizer.stats())
    )
    history = model.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0, callbacks=[log])
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0]
    assert [s["step"] for s in logged] == [4, 8, 12, 16]
    assert [s["temperature_steps"] for s in logged] == [4, 4, 4, 4]
    assert all(s["temperature"] > 0 for s in logged)
    assert logged[-1]["rho"] == 0.0  # past hot_steps + total_steps


def test_saved_model_continues_with_schedule_position_and_momentum(tmp_path):
    x, y = make_data()
    fit = {"batch_size": 16, "shuffle": False, "verbose": 0}
    uninterrupted = make_model()
    uninterrupted.fit(x, y, epochs=2, **fit)

    model = make_model()
    model.fit(x, y, epochs=1, **fit)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, CoolMomentum)
    assert int(to_numpy(loaded.optimizer.iterations)) == 4
    loaded.fit(x, y, epochs=1, **fit)

    assert int(to_numpy(loaded.optimizer.iterations)) == 8
    for got, want in zip(loaded.get_weights(), uninterrupted.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    momentums = [v for v in loaded.optimizer.variables if v.path.endswith("_momentum")]
    expected = [v for v in uninterrupted.optimizer.variables if v.path.endswith("_momentum")]
    assert len(momentums) == 4
    for got, want in zip(momentums, expected, strict=True):
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), rtol=1e-6, atol=1e-7)


def test_get_config_round_trip():
    opt = CoolMomentum(
        learning_rate=0.03,
        rho_0=0.95,
        alpha=0.999,
        hot_steps=5,
        track_temperature=False,
        global_clipnorm=2.0,
        weight_decay=1e-4,
        use_ema=True,
    )
    config = opt.get_config()
    assert config["rho_0"] == 0.95 and config["alpha"] == 0.999 and config["hot_steps"] == 5
    clone = CoolMomentum.from_config(config)
    assert clone.get_config() == config
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(restored, CoolMomentum)
    assert restored.get_config() == config
    a, _ = run(CoolMomentum.from_config(config))
    b, _ = run(CoolMomentum(**config))
    np.testing.assert_array_equal(a, b)


def test_callable_schedule_refuses_to_serialize():
    opt = CoolMomentum(LR, schedule=callable_rho)
    with pytest.raises(ValueError, match="callable schedule cannot be serialized"):
        opt.get_config()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"learning_rate": -0.1, "total_steps": 10}, "learning_rate"),
        ({"rho_0": 1.0, "total_steps": 10}, "rho_0"),
        ({"total_steps": -5}, "total_steps"),
        ({}, "needs total_steps"),
        ({"total_steps": 10, "alpha": 0.999}, "either total_steps or alpha"),
        ({"total_steps": 10, "schedule": "cosine"}, "schedule"),
        ({"total_steps": 10, "hot_steps": -1}, "hot_steps"),
        ({"schedule": callable_rho, "hot_steps": 3}, "hot_steps"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CoolMomentum(**kwargs)
