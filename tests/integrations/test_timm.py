"""CoolMomentum in timm's optimizer factory, as ``create_optimizer_v2`` and ``train.py`` use it."""

import argparse
import subprocess
import sys

import pytest
import torch
from _installed import require

require("timm", "timm")

import timm.optim  # noqa: E402
import timm.scheduler  # noqa: E402
import timm.utils  # noqa: E402

import coolmomentum.integrations.timm  # noqa: E402, F401  (registers "coolmomentum")
from coolmomentum import CoolMomentum, param_groups  # noqa: E402

STEPS = 6


def tiny_model():
    torch.manual_seed(0)
    return timm.create_model("test_convnext", pretrained=False, num_classes=3)


def train(model, opt, steps=STEPS):
    data = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(4, 3, 32, 32, generator=data)
        y = torch.randint(0, 3, (4,), generator=data)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_factory_builds_coolmomentum_with_timms_weight_decay_groups():
    model = tiny_model()
    opt = timm.optim.create_optimizer_v2(
        model, opt="coolmomentum", lr=0.01, weight_decay=5e-4, rho_0=0.9, total_steps=STEPS
    )
    assert isinstance(opt, CoolMomentum)
    assert "coolmomentum" in timm.optim.list_optimizers()
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    ours = {g["weight_decay"]: {id(p) for p in g["params"]} for g in param_groups(model, 5e-4)}
    assert by_decay == ours  # timm's grouping and coolmomentum.param_groups agree
    assert all(g["rho_0"] == 0.9 and g["total_steps"] == STEPS for g in opt.param_groups)

    # ... and trains exactly as CoolMomentum built by hand on those groups.
    got = train(model, opt)
    model = tiny_model()
    by_hand = CoolMomentum(param_groups(model, 5e-4), lr=0.01, rho_0=0.9, total_steps=STEPS)
    want = train(model, by_hand)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert [s["step"] for s in opt.stats()] == [STEPS, STEPS]


def test_train_py_arguments():
    """train.py calls create_optimizer_v2(model, **optimizer_kwargs(cfg=args), **args.opt_kwargs)
    after importing every --device-modules entry, and then create_scheduler_v2; timm's
    momentum default must not leak in, and the recipe's schedule keeps the LR constant."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--opt", default="sgd")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--weight-decay", type=float, default=2e-5)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--opt-kwargs", nargs="*", default={}, action=timm.utils.ParseKwargs)
    parser.add_argument("--sched", default="cosine")
    parser.add_argument("--decay-rate", type=float, default=0.1)
    parser.add_argument("--warmup-epochs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=300)
    args = parser.parse_args(
        "--opt coolmomentum --lr 0.05 --opt-kwargs rho_0=0.99 total_steps=500 "
        "--sched step --decay-rate 1 --warmup-epochs 0 --epochs 5".split()
    )
    opt = timm.optim.create_optimizer_v2(
        tiny_model(), **timm.optim.optimizer_kwargs(cfg=args), **args.opt_kwargs
    )
    assert isinstance(opt, CoolMomentum)
    settings = {(g["lr"], g["rho_0"], g["total_steps"]) for g in opt.param_groups}
    assert settings == {(0.05, 0.99, 500)}
    sched, _ = timm.scheduler.create_scheduler_v2(opt, **timm.scheduler.scheduler_kwargs(args))
    for epoch in range(1, args.epochs + 1):
        sched.step(epoch)
        assert {g["lr"] for g in opt.param_groups} == {0.05}


def test_registration_happens_on_import_in_a_fresh_process():
    code = (
        "import importlib, timm.optim\n"
        "try:\n"
        "    timm.optim.get_optimizer_info('coolmomentum')\n"
        "    raise SystemExit('registered before the import')\n"
        "except ValueError:\n"
        "    pass\n"
        "importlib.import_module('coolmomentum.integrations.timm')  # what --device-modules does\n"
        "print(timm.optim.get_optimizer_class('coolmomentum').__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "CoolMomentum"


def test_missing_total_steps_is_a_clear_error():
    with pytest.raises(ValueError, match="needs total_steps"):
        timm.optim.create_optimizer_v2(tiny_model(), opt="coolmomentum", lr=0.01)
