"""The cooling schedules against the paper's formulas (tests/_reference.py writes them out)."""

import itertools
import math
import re
import subprocess
import sys
from decimal import Decimal, getcontext

import pytest
from _reference import reference_rho

from coolmomentum.schedules import (
    DEFAULT_SCHEDULE,
    SCHEDULES,
    Schedule,
    alpha_from_total_steps,
    coolmomentum_to_sgd,
    resolve_schedule,
    rho,
    sgd_to_coolmomentum,
    temperature_ratio,
    total_steps_from_alpha,
)


@pytest.mark.parametrize("kind", SCHEDULES)
@pytest.mark.parametrize("hot", [0, 7])
def test_every_schedule_follows_the_paper_formula(kind, hot):
    S = 50
    for k in range(0, hot + S + 20):
        got = rho(k, rho_0=0.99, total_steps=S, schedule=kind, hot_steps=hot)
        assert got == pytest.approx(reference_rho(k, kind, 0.99, S, hot), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("kind", SCHEDULES[:-1])
def test_cooling_starts_at_rho_0_decreases_and_ends_at_zero_for_good(kind):
    S, hot = 40, 5
    values = [rho(k, rho_0=0.95, total_steps=S, schedule=kind, hot_steps=hot) for k in range(80)]
    assert values[: hot + 1] == pytest.approx([0.95] * (hot + 1), abs=1e-15)
    assert all(a > b for a, b in zip(values[hot : hot + S], values[hot + 1 : hot + S + 1]))
    assert values[hot + S :] == [0.0] * (80 - hot - S)


def test_temperature_schedules_cool_the_temperature_as_named():
    S = 20
    ratio = [
        temperature_ratio(rho(k, total_steps=S, schedule="exponential-temperature"))
        for k in range(S + 1)
    ]
    factors = [a / b for a, b in itertools.pairwise(ratio)]
    assert factors == pytest.approx([factors[0]] * S, rel=1e-9)  # geometric
    linear = [
        temperature_ratio(rho(k, total_steps=S, schedule="linear-temperature"))
        for k in range(S + 1)
    ]
    steps = [a - b for a, b in itertools.pairwise(linear)]
    assert steps == pytest.approx([steps[0]] * S, rel=1e-9)  # linear
    cosine = [
        temperature_ratio(rho(k, total_steps=S, schedule="cosine-temperature"))
        for k in range(S + 1)
    ]
    half_cosine = [1 + 198 * (1 + math.cos(math.pi * k / S)) / 2 for k in range(S + 1)]
    assert cosine == pytest.approx(half_cosine, rel=1e-9)  # T_0 = 199 T(0) down to T(0)


def test_alpha_and_total_steps_describe_the_same_schedule():
    S = 1234
    alpha = alpha_from_total_steps(S, 0.99)
    assert alpha == pytest.approx((1 - 0.99) ** (1 / S), rel=1e-15)
    assert total_steps_from_alpha(alpha, 0.99) == pytest.approx(S, rel=1e-12)
    for k in (0, 1, 100, 1000, 1233, 1234, 5000):
        exponential = rho(k, total_steps=S, schedule="exponential")
        assert rho(k, alpha=alpha) == pytest.approx(exponential, abs=1e-13)


def test_the_default_schedule_is_cosine_temperature_and_alpha_means_the_papers_eq_20():
    S = 40
    for k in (0, 1, 10, 20, 39, 40, 41):
        assert rho(k, total_steps=S) == pytest.approx(
            reference_rho(k, "cosine-temperature", 0.99, S), rel=1e-12, abs=1e-15
        )
        assert rho(k, alpha=alpha_from_total_steps(S, 0.99)) == pytest.approx(
            reference_rho(k, "exponential", 0.99, S), abs=1e-13
        )
    assert DEFAULT_SCHEDULE == "cosine-temperature"
    assert resolve_schedule(None, None) == "cosine-temperature"
    assert resolve_schedule(None, 0.999) == "exponential"
    assert resolve_schedule("linear-temperature", None) == "linear-temperature"
    with pytest.raises(ValueError, match="alpha is the cooling rate of the 'exponential'"):
        Schedule.create(alpha=0.999, schedule="cosine-temperature")


def test_alpha_one_means_no_cooling():
    assert total_steps_from_alpha(1.0, 0.99) == math.inf
    assert [rho(k, alpha=1.0) for k in (0, 10, 10**9)] == [0.99, 0.99, 0.99]


def test_exponential_schedule_stays_exact_over_ten_million_steps():
    getcontext().prec = 50
    alpha = 0.9999998
    for k in (10**6, 10**7, 2 * 10**7):
        exact = 1 - (1 - Decimal("0.99")) / Decimal(alpha) ** k
        assert rho(k, alpha=alpha) == pytest.approx(float(exact), rel=1e-14)


def test_rho_0_zero_is_plain_sgd_everywhere():
    for kind in SCHEDULES:
        assert rho(3, rho_0=0.0, total_steps=10, schedule=kind) == 0.0
    assert rho(3, rho_0=0.0, alpha=0.5) == 0.0


def test_callable_schedule_gets_the_raw_step():
    assert rho(7, schedule=lambda k: 0.5 / (1 + k)) == 0.5 / 8


def test_sgd_conversion_round_trips():
    cm = sgd_to_coolmomentum(0.1, 0.9)
    assert cm == pytest.approx({"lr": 0.2 / 1.9, "rho_0": 0.9})
    assert coolmomentum_to_sgd(cm["lr"], cm["rho_0"]) == pytest.approx({"lr": 0.1, "momentum": 0.9})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rho_0": 1.0, "total_steps": 10}, r"rho_0 must be a number in \[0, 1\)"),
        ({"rho_0": -0.1, "total_steps": 10}, r"rho_0 must be a number in \[0, 1\)"),
        ({"total_steps": 0}, r"total_steps must be a number > 0"),
        ({"total_steps": -5}, r"total_steps must be a number > 0"),
        ({}, r"needs total_steps"),
        ({"schedule": "linear-temperature"}, r"needs total_steps"),
        ({"total_steps": 10, "alpha": 0.9}, r"either total_steps or alpha"),
        ({"alpha": 0.0}, r"alpha must be in \(0, 1\]"),
        ({"alpha": 1.5}, r"alpha must be in \(0, 1\]"),
        ({"alpha": 0.9, "schedule": "linear-temperature"}, r"give total_steps"),
        ({"total_steps": 10, "schedule": "cosine"}, r"schedule must be one of"),
        ({"total_steps": 10, "hot_steps": -1}, r"hot_steps must be an integer >= 0"),
        ({"total_steps": 10, "hot_steps": 1.5}, r"hot_steps must be an integer >= 0"),
        ({"schedule": lambda k: 0.5, "hot_steps": 3}, r"hot_steps cannot be combined"),
    ],
)
def test_bad_arguments_name_the_argument_and_the_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Schedule.create(**kwargs)


def test_constant_schedule_needs_no_total_steps():
    assert rho(10**6, rho_0=0.9, schedule="constant") == 0.9


def test_bad_helper_arguments_are_rejected():
    with pytest.raises(ValueError, match="step must be a number >= 0"):
        rho(-1, total_steps=10)
    with pytest.raises(ValueError, match="lr must be a number >= 0"):
        sgd_to_coolmomentum(-0.1, 0.9)


@pytest.mark.parametrize(
    ("convert", "args", "name"),
    [
        (sgd_to_coolmomentum, (0.1, 1.0), "momentum"),
        (sgd_to_coolmomentum, (0.1, -0.5), "momentum"),
        (coolmomentum_to_sgd, (0.1, 1.5), "rho"),
        (coolmomentum_to_sgd, (0.1, "0.9"), "rho"),
        (temperature_ratio, (1.0,), "rho"),
    ],
)
def test_a_bad_momentum_is_named_as_the_caller_passed_it(convert, args, name):
    # Each helper names its own argument (never rho_0), its range and the value it got.
    message = rf"^{name} must be a number in \[0, 1\), got {re.escape(repr(args[-1]))}$"
    with pytest.raises(ValueError, match=message):
        convert(*args)


def test_importing_the_package_imports_no_framework():
    code = (
        "import sys, coolmomentum; coolmomentum.rho(1, total_steps=5);"
        "print(sorted(m for m in ('torch', 'jax', 'optax', 'keras', 'tensorflow')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
