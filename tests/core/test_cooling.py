"""``coolmomentum.MomentumCooling``: SGD's momentum and Adam's beta1 along the closed form."""

import io

import numpy as np
import pytest
import torch
from _reference import reference_rho

from coolmomentum import CoolMomentum, MomentumCooling, Schedule
from coolmomentum.schedules import DEFAULT_SCHEDULE

S, HOT, STEPS, LR = 12, 3, 20, 0.05  # STEPS runs past the end of the cooling


def demon(k, beta_init, total):
    """The Demon momentum decay (Chen et al., 2022), in its own parameterization."""
    left = 1 - min(k, total) / total
    return beta_init * left / ((1 - beta_init) + beta_init * left)


def quadratic(seed=0, n=5):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(n, n))
    return m @ m.T / n + np.eye(n), rng.normal(size=n), rng.normal(size=n)


def sgd_reference(mu, steps):
    """``torch.optim.SGD``'s documented rule in float64: b_0 = g_0, b_k = mu_k b_{k-1} + g_k."""
    a, b, x = quadratic()
    buf = None
    for k in range(steps):
        g = a @ x + b
        buf = g.copy() if buf is None else mu(k) * buf + g
        x = x - LR * buf
    return x


def run_sgd(steps, cooling_kwargs, resume_at=None, **sgd_kwargs):
    """SGD + MomentumCooling on the quadratic; optionally saved and resumed at a step."""
    a, b, x0 = (torch.tensor(t) for t in quadratic())
    x = x0.clone().requires_grad_()

    def build():
        opt = torch.optim.SGD([x], lr=LR, **sgd_kwargs)
        return opt, MomentumCooling(opt, **cooling_kwargs)

    opt, sched = build()
    seen = []
    for k in range(steps):
        if k == resume_at:
            buffer = io.BytesIO()
            torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
            buffer.seek(0)
            saved = torch.load(buffer, weights_only=True)
            opt, sched = build()
            opt.load_state_dict(saved["opt"])
            sched.load_state_dict(saved["sched"])
        seen.append(opt.param_groups[0]["momentum"])
        opt.zero_grad()
        (0.5 * x @ a @ x + b @ x).backward()
        opt.step()
        sched.step()
    return x.detach().numpy(), seen


@pytest.mark.parametrize("kind", ["exponential", "exponential-temperature", "linear-temperature"])
def test_sgd_momentum_follows_the_closed_form_and_the_trajectory_matches(kind):
    got, seen = run_sgd(STEPS, dict(total_steps=S, schedule=kind, hot_steps=HOT), momentum=0.9)
    expected = [reference_rho(k, kind, 0.9, S, HOT) for k in range(STEPS)]
    np.testing.assert_allclose(seen, expected, rtol=0, atol=1e-15)
    assert seen[-1] == 0.0
    want = sgd_reference(lambda k: reference_rho(k, kind, 0.9, S, HOT), STEPS)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_linear_temperature_is_the_demon_decay():
    _, seen = run_sgd(STEPS, dict(total_steps=S, schedule="linear-temperature"), momentum=0.95)
    np.testing.assert_allclose(seen, [demon(k, 0.95, S) for k in range(STEPS)], atol=1e-15)


def test_rho_0_defaults_to_each_groups_momentum_and_can_be_given():
    p, q = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([{"params": [p], "momentum": 0.8}, {"params": [q]}], 0.1, momentum=0.9)
    assert MomentumCooling(opt, S).get_last_momentum() == [0.8, 0.9]
    opt = torch.optim.SGD([p], 0.1, momentum=0.9)
    assert MomentumCooling(opt, S, rho_0=0.99).get_last_momentum() == [0.99]
    assert opt.param_groups[0]["momentum"] == 0.99


@pytest.mark.parametrize("optimizer", [torch.optim.Adam, torch.optim.AdamW, torch.optim.NAdam])
def test_adam_beta1_is_cooled_and_beta2_kept(optimizer):
    w = torch.nn.Parameter(torch.ones(4))
    opt = optimizer([w], lr=1e-2, betas=(0.9, 0.98))
    sched = MomentumCooling(opt, total_steps=S, schedule="linear-temperature")
    for k in range(STEPS):
        beta1, beta2 = opt.param_groups[0]["betas"]
        assert beta1 == pytest.approx(demon(k, 0.9, S), abs=1e-15) and beta2 == 0.98
        w.grad = torch.full_like(w, float(k % 3 - 1))
        opt.step()
        sched.step()


def test_tensor_betas_are_updated_in_place():
    w = torch.nn.Parameter(torch.ones(4))
    betas = (torch.tensor(0.9), torch.tensor(0.999))
    opt = torch.optim.Adam([w], lr=torch.tensor(1e-2), betas=betas)
    sched = MomentumCooling(opt, total_steps=4)
    w.grad = torch.ones_like(w)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["betas"][0] is betas[0]
    assert betas[0].item() == pytest.approx(reference_rho(1, DEFAULT_SCHEDULE, 0.9, 4), abs=1e-7)


def test_resume_from_state_dict_continues_exactly():
    kwargs = dict(total_steps=S, schedule="exponential", hot_steps=HOT)
    whole, seen_whole = run_sgd(STEPS, kwargs, momentum=0.9)
    resumed, seen_resumed = run_sgd(STEPS, kwargs, resume_at=7, momentum=0.9)
    assert seen_resumed == seen_whole
    np.testing.assert_array_equal(resumed, whole)


def test_resume_restores_the_saved_schedule():
    """A scheduler built after loading the cooled optimizer still gets the saved rho_0."""
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    sched = MomentumCooling(opt, total_steps=S)
    for _ in range(5):
        opt.step()
        sched.step()
    opt2 = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    opt2.load_state_dict(opt.state_dict())
    sched2 = MomentumCooling(opt2, total_steps=S)  # reads the cooled momentum as rho_0 ...
    sched2.load_state_dict(sched.state_dict())  # ... which the saved schedule replaces
    assert sched2.schedules[0].rho_0 == 0.9
    assert opt2.param_groups[0]["momentum"] == sched.get_last_momentum()[0]


def test_callable_schedule_and_schedule_object():
    fn = lambda k: 0.5 * 0.5**k  # noqa: E731
    _, seen = run_sgd(6, dict(schedule=fn), momentum=0.9)
    assert seen == [fn(k) for k in range(6)]
    cooling = Schedule.create(rho_0=0.9, total_steps=S, schedule="exponential-temperature")
    _, seen = run_sgd(6, dict(schedule=cooling), momentum=0.1)
    assert seen == [cooling(k) for k in range(6)]


def test_callable_schedule_must_be_given_again_to_load():
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    state = MomentumCooling(opt, schedule=lambda k: 0.5).state_dict()
    with pytest.raises(ValueError, match="callable schedule"):
        MomentumCooling(opt, total_steps=S).load_state_dict(state)


def test_learning_rate_is_left_to_other_schedulers():
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=1.0, momentum=0.9)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5**k)
    cooling = MomentumCooling(opt, total_steps=S)
    for k in range(1, 5):
        w.grad = torch.ones_like(w)
        opt.step()
        lr_sched.step()
        cooling.step()
        assert opt.param_groups[0]["lr"] == 0.5**k
        assert opt.param_groups[0]["momentum"] == pytest.approx(
            reference_rho(k, DEFAULT_SCHEDULE, 0.9, S), abs=1e-15
        )


def test_clear_errors():
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(TypeError, match="cools its own rho"):
        MomentumCooling(CoolMomentum([w], total_steps=S), total_steps=S)
    with pytest.raises(TypeError, match="neither 'momentum' nor 'betas'"):
        MomentumCooling(torch.optim.Adagrad([w]), total_steps=S)
    with pytest.raises(ValueError, match="needs total_steps"):
        MomentumCooling(torch.optim.SGD([w], lr=0.1, momentum=0.9))
    with pytest.raises(ValueError, match="already fixes total_steps"):
        MomentumCooling(
            torch.optim.SGD([w], lr=0.1, momentum=0.9),
            total_steps=S,
            schedule=Schedule.create(total_steps=S),
        )
    with pytest.raises(ValueError, match="param group 0 has momentum 0, so there is nothing"):
        MomentumCooling(torch.optim.SGD([w], lr=0.1), total_steps=S)
    with pytest.raises(ValueError, match="rho_0 must be"):
        MomentumCooling(torch.optim.SGD([w], lr=0.1, momentum=0.9), S, rho_0=1.0)
