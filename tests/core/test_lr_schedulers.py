"""CoolMomentum under learning-rate schedulers and under ``torch.amp.GradScaler``.

A scheduler's ``lr`` enters as SGD's does: the momentum buffer is ``b = v / lr``, so a change
of ``lr`` rescales the velocity by ``lr_new / lr_old``. At a constant ``rho`` CoolMomentum is
then ``SGD(lr * (1 + rho) / 2, momentum=rho)`` under any schedule, and with the ``lr`` driven
to 0 the parameters stop.
"""

import numpy as np
import pytest
import torch
from _reference import reference_rho, reference_trajectory, schedule_case, torch_trajectory
from torch.optim import lr_scheduler

from coolmomentum import CoolMomentum
from coolmomentum.schedules import DEFAULT_SCHEDULE

PATHS = {
    "single": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
    "capturable": {"capturable": True},
}

SCHEDULERS = {
    "warm-up": lambda opt: lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=6),
    "warm-up-from-zero": lambda opt: lr_scheduler.LambdaLR(opt, lambda k: min(1.0, k / 5)),
    "step": lambda opt: lr_scheduler.StepLR(opt, step_size=4, gamma=0.5),
    "cosine": lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=12),
    "polynomial-to-zero": lambda opt: lr_scheduler.PolynomialLR(opt, total_iters=8, power=0.9),
    "one-cycle": lambda opt: lr_scheduler.OneCycleLR(
        opt, max_lr=10 * opt.param_groups[0]["lr"], total_steps=20, cycle_momentum=False
    ),
}


def quadratic(seed=0):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(10, 5, generator=gen, dtype=torch.float64)
    bias = torch.randn(10, generator=gen, dtype=torch.float64)
    inputs = torch.randn(20, 5, generator=gen, dtype=torch.float64)
    return weight, bias, inputs


def run(make_opt, make_scheduler, steps=20):
    weight, bias, inputs = (t.clone() for t in quadratic())
    params = [weight.requires_grad_(), bias.requires_grad_()]
    opt = make_opt(params)
    sched = make_scheduler(opt)
    trajectory = []
    for k in range(steps):
        opt.zero_grad()
        (weight @ inputs[k] + bias).pow(2).sum().backward()
        opt.step()
        sched.step()
        trajectory.append([p.detach().clone() for p in params])
    return trajectory


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("path", PATHS)
def test_constant_rho_is_sgd_with_momentum_under_every_lr_scheduler(path, scheduler):
    lr, rho = 0.02, 0.9
    ours = run(
        lambda ps: CoolMomentum(ps, lr=lr, rho_0=rho, schedule="constant", **PATHS[path]),
        SCHEDULERS[scheduler],
    )
    sgd = run(
        lambda ps: torch.optim.SGD(ps, lr=lr * (1 + rho) / 2, momentum=rho),
        SCHEDULERS[scheduler],
    )
    for got, want in zip(ours, sgd, strict=True):
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("schedule", ["exponential", "linear-temperature"])
def test_cooling_under_a_warm_up_and_decay_matches_the_float64_recurrence(path, schedule):
    def lr(k):  # linear warm-up over 5 steps, then a decay
        return 0.125 * min(1.0, (k + 1) / 5) * 0.9 ** max(0, k - 5)

    kwargs, rho = schedule_case(schedule)
    expected, _ = reference_trajectory(rho, lr=lr)
    got = torch_trajectory(lr=lr, **kwargs, **PATHS[path])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("rho_0", [0.9, 0.99])
def test_forloop_goes_right_direction_with_lr_schedulers(scheduler, rho_0):
    """PyTorch's generic optimizer check: 20 steps on a quadratic lower the loss."""
    weight, bias, inputs = quadratic(seed=1)
    x = inputs[0].float()
    w, b = weight.float().requires_grad_(), bias.float().requires_grad_()
    # Eq. 20 cools fast enough for 20 steps to settle; at rho_0 0.99 the temperature shapes
    # keep rho near 0.99 over most of so short a run, and the loss still oscillates at its end.
    opt = CoolMomentum(
        [w, b], lr=1e-2, rho_0=rho_0, total_steps=20, schedule="exponential", foreach=False
    )
    sched = SCHEDULERS[scheduler](opt)

    def loss():
        return (w @ x + b).pow(2).sum()

    initial = loss().item()
    for _ in range(20):
        opt.zero_grad()
        loss().backward()
        opt.step()
        sched.step()
    assert loss().item() < initial


@pytest.mark.parametrize("path", PATHS)
def test_parameters_stop_where_the_lr_is_zero_and_the_schedule_goes_on(path):
    weight = quadratic()[0][:2].clone().requires_grad_()
    opt = CoolMomentum([weight], lr=0.05, rho_0=0.99, total_steps=10, **PATHS[path])
    sched = lr_scheduler.LambdaLR(opt, lambda k: 1.0 if k < 3 else 0.0)
    for k in range(8):
        before = weight.detach().clone()
        weight.grad = torch.ones_like(weight)
        opt.step()
        sched.step()
        if k >= 3:  # no coasting on the velocity built up before
            assert torch.equal(weight.detach(), before)
    # The schedule counted every step, and the buffer kept integrating the gradients.
    assert opt.stats()[0]["step"] == 8
    b = 0.0
    for k in range(8):
        rho = reference_rho(k, DEFAULT_SCHEDULE, 0.99, 10)
        b = rho * b - (1 + rho) / 2
    torch.testing.assert_close(
        opt.state[weight]["momentum_buffer"], torch.full_like(weight, b), rtol=1e-12, atol=0
    )


def amp_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def test_grad_scaler_skips_overflowing_steps_without_advancing_the_schedule():
    """fp16 autocast with a GradScaler: a skipped step leaves parameters and schedule alone."""
    model, twin = amp_model(), amp_model()
    opt = CoolMomentum(model.parameters(), lr=0.05, rho_0=0.9, total_steps=10)
    ref = CoolMomentum(twin.parameters(), lr=0.05, rho_0=0.9, total_steps=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20)  # overflows fp16 at first
    gen = torch.Generator().manual_seed(1)
    applied = 0
    for _ in range(12):
        x, y = torch.randn(32, 8, generator=gen), torch.randn(32, 1, generator=gen)
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = torch.nn.functional.mse_loss(model(x).float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        finite = all(torch.isfinite(p.grad).all() for p in model.parameters())
        if finite:  # the same unscaled gradients, stepped without a scaler
            for p, q in zip(model.parameters(), twin.parameters(), strict=True):
                q.grad = p.grad.clone()
            ref.step()
            applied += 1
        scaler.step(opt)
        scaler.update()
        assert opt.stats(reset=False)[0]["step"] == applied
        assert opt.param_groups[0]["momentum"] == ref.param_groups[0]["momentum"]
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            assert torch.equal(p, q)
    assert 0 < applied < 12  # some steps overflowed and were skipped, the others ran
