"""``coolmomentum.torch.CoolMomentum`` against the formulas, ``torch.optim.SGD`` and itself."""

import copy
import io

import numpy as np
import pytest
import torch
from _reference import empty_window, reference_rho

from coolmomentum import CoolMomentum
from coolmomentum.schedules import DEFAULT_SCHEDULE, Schedule

SCHEDULE_CASES = [
    ("exponential", 0),
    ("exponential", 4),
    ("exponential-temperature", 0),
    ("exponential-temperature", 3),
    ("linear-temperature", 0),
    ("linear-temperature", 5),
    ("cosine-temperature", 0),
    ("cosine-temperature", 2),
    ("constant", 0),
]


def quadratic_problem(seed=0, sizes=(6, 3, 1)):
    """Float64 tensors and a gradient g = A x + b per tensor (a fixed quadratic)."""
    rng = np.random.default_rng(seed)
    xs, mats, offsets = [], [], []
    for n in sizes:
        m = rng.normal(size=(n, n))
        mats.append(m @ m.T / n + np.eye(n))
        offsets.append(rng.normal(size=n))
        xs.append(rng.normal(size=n))
    return xs, mats, offsets


def run_reference(xs, mats, offsets, steps, lr, rho_0, S, kind, hot, wd=0.0):
    """The recurrence of DESIGN.md, in float64 numpy; ``lr`` a number or a function of k.

    Returns the parameters after every step, the mean of ``v**2`` per step and the final
    momentum buffers ``b = v / lr``.
    """
    xs = [x.copy() for x in xs]
    bs = [np.zeros_like(x) for x in xs]
    trajectory, temperatures = [], []
    for k in range(steps):
        r = reference_rho(k, kind, rho_0, S, hot)
        lr_k = lr(k) if callable(lr) else lr
        sq, n = 0.0, 0
        for i, (a, b) in enumerate(zip(mats, offsets)):
            g = a @ xs[i] + b + wd * xs[i]
            bs[i] = r * bs[i] - (1 + r) / 2 * g
            v = lr_k * bs[i]
            xs[i] = xs[i] + v
            sq += float(v @ v)
            n += v.size
        trajectory.append([x.copy() for x in xs])
        temperatures.append(sq / n)
    return trajectory, temperatures, bs


def run_torch(xs, mats, offsets, steps, **opt_kwargs):
    params = [torch.tensor(x, requires_grad=True) for x in xs]
    a_t = [torch.tensor(a) for a in mats]
    b_t = [torch.tensor(b) for b in offsets]
    opt = CoolMomentum(params, **opt_kwargs)
    trajectory = []
    for _ in range(steps):
        opt.zero_grad()
        loss = sum(0.5 * p @ a @ p + b @ p for p, a, b in zip(params, a_t, b_t))
        loss.backward()
        opt.step()
        trajectory.append([p.detach().numpy().copy() for p in params])
    return trajectory, opt, params


PATHS = {"single": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("kind", "hot"), SCHEDULE_CASES)
def test_matches_float64_recurrence_for_every_schedule(kind, hot, path):
    xs, mats, offsets = quadratic_problem()
    S, steps, lr = 12, 25, 0.05  # runs past hot + S
    ref, ref_temps, ref_b = run_reference(xs, mats, offsets, steps, lr, 0.9, S, kind, hot)
    total = None if kind == "constant" else S
    got, opt, params = run_torch(
        xs,
        mats,
        offsets,
        steps,
        lr=lr,
        rho_0=0.9,
        total_steps=total,
        schedule=kind,
        hot_steps=hot,
        **PATHS[path],
    )
    for k in range(steps):
        for a, b in zip(got[k], ref[k]):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    for p, b in zip(params, ref_b):
        np.testing.assert_allclose(
            opt.state[p]["momentum_buffer"].numpy(), b, rtol=1e-12, atol=1e-13
        )
    (stats,) = opt.stats()
    assert stats["step"] == steps
    assert stats["rho"] == pytest.approx(reference_rho(steps - 1, kind, 0.9, S, hot), abs=1e-15)
    assert stats["temperature"] == pytest.approx(float(np.mean(ref_temps)), rel=1e-12)
    assert stats["temperature_steps"] == steps


def test_first_step_descends_by_lr_times_gradient():
    p = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = CoolMomentum([p], lr=0.1, rho_0=0.99, total_steps=10)
    p.grad = torch.tensor([0.5, 1.0], dtype=torch.float64)
    opt.step()
    # v_0 = -lr (1 + rho_0) / 2 g: neither ascent nor a discarded gradient.
    torch.testing.assert_close(
        p.detach(),
        torch.tensor([1.0, -2.0], dtype=torch.float64)
        - 0.1 * 1.99 / 2 * torch.tensor([0.5, 1.0], dtype=torch.float64),
    )


class SmallNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def train_steps(model, opt, steps, seed=0, closure=False, losses=True):
    """``steps`` steps on random batches; the losses (not read when ``losses`` is off)."""
    gen = torch.Generator().manual_seed(seed)
    seen = []
    for _ in range(steps):
        x = torch.randn(8, 1, 8, 8, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 3, (8,), generator=gen)

        def loss_fn(x=x, y=y):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        if closure:
            loss = opt.step(loss_fn)
        else:
            loss = loss_fn()
            opt.step()
        if losses:
            seen.append(float(loss.detach()))
    return seen


def make_net(seed=0):
    torch.manual_seed(seed)
    return SmallNet().double()


@pytest.mark.parametrize("path", PATHS)
def test_constant_rho_is_torch_sgd_with_momentum(path):
    lr, rho_0 = 0.05, 0.9
    a, b = make_net(), make_net()
    ours = CoolMomentum(a.parameters(), lr=lr, rho_0=rho_0, schedule="constant", **PATHS[path])
    sgd = torch.optim.SGD(b.parameters(), lr=lr * (1 + rho_0) / 2, momentum=rho_0)
    train_steps(a, ours, 20)
    train_steps(b, sgd, 20)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-13)


def test_paper_alpha_gives_the_same_trajectory_as_total_steps():
    S = 15
    a, b = make_net(), make_net()
    alpha = (1 - 0.99) ** (1 / S)
    train_steps(a, CoolMomentum(a.parameters(), lr=0.05, alpha=alpha), 25)
    train_steps(b, CoolMomentum(b.parameters(), lr=0.05, total_steps=S, schedule="exponential"), 25)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-11, atol=1e-12)


def test_with_no_schedule_named_the_groups_cool_along_cosine_temperature_or_eq_20_with_alpha():
    x = torch.zeros(3, requires_grad=True)
    default = CoolMomentum([x], lr=0.1, total_steps=20)
    paper = CoolMomentum([x], lr=0.1, alpha=(1 - 0.99) ** (1 / 20))
    assert default.param_groups[0]["schedule"] == "cosine-temperature"
    assert paper.param_groups[0]["schedule"] == "exponential"
    for _ in range(7):
        x.grad = torch.ones(3)
        default.step()
        paper.step()
    assert default.stats()[0]["rho"] == pytest.approx(
        reference_rho(6, "cosine-temperature", 0.99, 20)
    )
    assert paper.stats()[0]["rho"] == pytest.approx(reference_rho(6, "exponential", 0.99, 20))


def grads_for(params, k):
    gen = torch.Generator().manual_seed(100 + k)
    return [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]


def test_foreach_and_single_tensor_paths_agree_on_awkward_parameter_sets():
    def make():
        torch.manual_seed(3)
        return [
            torch.randn(5, 4, dtype=torch.float64),
            torch.zeros(0, 3, dtype=torch.float64),  # zero-size
            torch.randn(7, dtype=torch.float64),  # stops getting gradients after step 3
            torch.randn(2, 2, dtype=torch.complex128),
            torch.randn(3, dtype=torch.float32),  # second dtype group
        ]

    runs = []
    for foreach in (True, False):
        params = [p.requires_grad_() for p in make()]
        opt = CoolMomentum(
            params, lr=0.1, total_steps=6, hot_steps=1, foreach=foreach, weight_decay=0.01
        )
        temps = []
        for k in range(10):
            opt.zero_grad(set_to_none=True)
            if k != 5:  # step 5: no gradients at all
                for i, (p, g) in enumerate(zip(params, grads_for(params, k))):
                    if i == 2 and k > 3:
                        continue
                    p.grad = g
            opt.step()
            temps.append(opt.stats()[0]["temperature"])
        runs.append((params, opt, temps))
    (p1, o1, t1), (p2, o2, t2) = runs
    for a, b in zip(p1, p2):
        assert torch.equal(a, b)
        if a.numel():
            assert torch.equal(o1.state[a]["momentum_buffer"], o2.state[b]["momentum_buffer"])
    assert t1[5] is None and t2[5] is None  # nothing was updated in step 5
    del t1[5], t2[5]
    assert t1 == pytest.approx(t2, rel=1e-6)
    assert o1.stats()[0]["step"] == 10


def test_parameters_without_gradient_are_untouched_and_have_no_state():
    used = torch.nn.Parameter(torch.ones(3))
    frozen = torch.nn.Parameter(torch.ones(3))
    opt = CoolMomentum([used, frozen], lr=0.1, total_steps=5)
    used.grad = torch.ones(3)
    opt.step()
    assert torch.equal(frozen.detach(), torch.ones(3))
    assert frozen not in opt.state
    assert not torch.equal(used.detach(), torch.ones(3))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("noise_std", [0.0, 0.5])
def test_complex_parameters_update_as_real_pairs(path, noise_std):
    # With noise, each real component gets noise_std and the real twin's stream.
    z = torch.tensor([1 + 2j, -1j], dtype=torch.complex128, requires_grad=True)
    r = torch.view_as_real(z.detach()).clone().requires_grad_()
    oz, orr = (
        CoolMomentum([x], lr=0.1, total_steps=4, noise_std=noise_std, **PATHS[path],
                     generator=torch.Generator().manual_seed(5))
        for x in (z, r)
    )  # fmt: skip
    for k in range(6):
        g = grads_for([r], k)[0]
        z.grad = torch.view_as_complex(g.clone())
        r.grad = g
        oz.step()
        orr.step()
    torch.testing.assert_close(torch.view_as_real(z.detach()), r.detach(), rtol=0, atol=0)


def test_resume_through_torch_save_continues_bit_for_bit(tmp_path):
    total, cut = 30, 13

    def make_opt(model):
        return CoolMomentum(
            model.parameters(), lr=0.05, total_steps=20, hot_steps=3, weight_decay=1e-3
        )

    straight = make_net()
    opt = make_opt(straight)
    train_steps(straight, opt, cut, seed=1)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": straight.state_dict(), "opt": opt.state_dict()}, path)
    train_steps(straight, opt, total - cut, seed=2)
    straight_stats = opt.stats()

    resumed = make_net(seed=99)  # different init: everything must come from the checkpoint
    ckpt = torch.load(path, weights_only=True)
    resumed.load_state_dict(ckpt["model"])
    opt2 = make_opt(resumed)
    opt2.load_state_dict(ckpt["opt"])
    train_steps(resumed, opt2, total - cut, seed=2)
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert opt2.stats() == straight_stats


def test_state_is_one_buffer_per_parameter():
    model = make_net()
    opt = CoolMomentum(model.parameters(), lr=0.01, total_steps=10)
    train_steps(model, opt, 2)
    for p in model.parameters():
        assert list(opt.state[p]) == ["momentum_buffer"]
        assert opt.state[p]["momentum_buffer"].shape == p.shape
    group_tensors = [k for k, v in opt.param_groups[0].items() if isinstance(v, torch.Tensor)]
    assert sorted(group_tensors) == [
        "step", "temperature_count", "temperature_start", "temperature_sum"
    ]
    assert all(opt.param_groups[0][k].numel() == 1 for k in group_tensors)


def test_param_groups_follow_their_own_schedules():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = CoolMomentum(
        [
            {"params": [a]},
            {
                "params": [b],
                "schedule": "linear-temperature",
                "rho_0": 0.5,
                "hot_steps": 2,
                "lr": 0.2,
            },
        ],
        lr=0.1,
        total_steps=8,
    )
    for _ in range(5):
        a.grad, b.grad = torch.ones(2), torch.ones(2)
        opt.step()
    s_a, s_b = opt.stats()
    assert s_a["rho"] == pytest.approx(reference_rho(4, DEFAULT_SCHEDULE, 0.99, 8))
    assert s_b["rho"] == pytest.approx(reference_rho(4, "linear-temperature", 0.5, 8, 2))
    assert (s_a["lr"], s_b["lr"]) == (0.1, 0.2)


def test_a_group_may_use_alpha_where_the_defaults_use_total_steps():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = CoolMomentum([a], lr=0.1, total_steps=8)
    opt.add_param_group({"params": [b], "alpha": 0.5})
    assert opt.param_groups[1]["total_steps"] is None
    with pytest.raises(ValueError, match="either total_steps or alpha"):
        opt.add_param_group(
            {"params": [torch.nn.Parameter(torch.ones(1))], "alpha": 0.5, "total_steps": 3}
        )
    assert len(opt.param_groups) == 2


def test_closure_returns_the_loss_and_matches_the_explicit_loop():
    a, b = make_net(), make_net()
    la = train_steps(a, CoolMomentum(a.parameters(), lr=0.05, total_steps=10), 5, closure=True)
    lb = train_steps(b, CoolMomentum(b.parameters(), lr=0.05, total_steps=10), 5)
    assert la == lb
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_maximize_ascends_what_minimize_descends():
    x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    y = x.detach().clone().requires_grad_()
    ox = CoolMomentum([x], lr=0.1, total_steps=5, maximize=True)
    oy = CoolMomentum([y], lr=0.1, total_steps=5)
    for _ in range(7):
        ox.zero_grad()
        oy.zero_grad()
        (-(x**2).sum()).backward()
        (y**2).sum().backward()
        ox.step()
        oy.step()
    torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("path", PATHS)
def test_l2_weight_decay_adds_to_the_gradient(path):
    xs, mats, offsets = quadratic_problem(seed=4)
    ref, _, _ = run_reference(xs, mats, offsets, 10, 0.05, 0.9, 6, DEFAULT_SCHEDULE, 0, wd=0.3)
    got, _, _ = run_torch(
        xs, mats, offsets, 10, lr=0.05, rho_0=0.9, total_steps=6, weight_decay=0.3, **PATHS[path]
    )
    for a, b in zip(got[-1], ref[-1]):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("path", PATHS)
def test_decoupled_weight_decay_shrinks_the_weights(path):
    lr, wd = 0.05, 0.3
    x = torch.tensor([1.0, -3.0], dtype=torch.float64, requires_grad=True)
    opt = CoolMomentum(
        [x],
        lr=lr,
        rho_0=0.9,
        schedule="constant",
        weight_decay=wd,
        decoupled_weight_decay=True,
        **PATHS[path],
    )
    ref_x, ref_v = x.detach().clone(), torch.zeros(2, dtype=torch.float64)
    for _ in range(5):
        g = torch.tensor([0.5, 0.25], dtype=torch.float64)
        x.grad = g.clone()
        opt.step()
        ref_x *= 1 - lr * wd
        ref_v = 0.9 * ref_v - lr * 1.9 / 2 * g
        ref_x += ref_v
    torch.testing.assert_close(x.detach(), ref_x, rtol=1e-14, atol=0)


ALL_PATHS = {**PATHS, "capturable": {"capturable": True}, "capturable-single": {
    "capturable": True, "foreach": False}}  # fmt: skip


@pytest.mark.parametrize("shape", [(), (1,), (1, 1)])
@pytest.mark.parametrize("path", ALL_PATHS)
def test_lr_as_a_one_element_tensor_matches_lr_as_a_float(path, shape):
    a, b = make_net(), make_net()
    lr = torch.full(shape, 0.05, dtype=torch.float64)
    opt = CoolMomentum(a.parameters(), lr=lr, total_steps=10, weight_decay=0.1,
                       decoupled_weight_decay=True, **ALL_PATHS[path])  # fmt: skip
    train_steps(a, opt, 12)
    train_steps(b, CoolMomentum(b.parameters(), lr=0.05, total_steps=10, weight_decay=0.1,
                                decoupled_weight_decay=True, foreach=False), 12)  # fmt: skip
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-13)
    assert opt.stats()[0]["lr"] == 0.05


@pytest.mark.parametrize("foreach", [True, False])
def test_capturable_step_reads_nothing_back_to_the_host(monkeypatch, foreach):
    """What CUDA graph capture needs, checked on any device: no tensor value reaches Python."""
    a, b = make_net(), make_net()
    oa = CoolMomentum(a.parameters(), lr=0.05, total_steps=10, capturable=True, foreach=foreach)
    ob = CoolMomentum(b.parameters(), lr=0.05, total_steps=10, foreach=foreach)

    def refuse(*args):
        raise AssertionError("a capturable step read a tensor value on the host")

    for k in range(12):
        train_steps(b, ob, 1, seed=k)
        with monkeypatch.context() as patch:
            for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
                patch.setattr(torch.Tensor, name, refuse)
            train_steps(a, oa, 1, seed=k, losses=False)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-13)
    (got,), (want,) = oa.stats(), ob.stats()
    for key in ("temperature", "temperature_sum"):
        want[key] = pytest.approx(want[key], rel=1e-12)
    assert got == want


def test_temperature_tracking_off():
    model = make_net()
    opt = CoolMomentum(model.parameters(), lr=0.05, total_steps=10, track_temperature=False)
    train_steps(model, opt, 3)
    assert opt.stats()[0]["temperature"] is None
    assert opt.param_groups[0]["temperature_sum"].item() == 0


def test_stats_window_resets_only_when_asked():
    x = torch.nn.Parameter(torch.zeros(4))
    opt = CoolMomentum([x], lr=1.0, rho_0=0.5, schedule="constant")
    assert opt.stats()[0] == {**empty_window(0.5), "lr": 1.0}
    x.grad = torch.ones(4)
    opt.step()  # v = -0.75
    x.grad = torch.zeros(4)
    opt.step()  # v = -0.375
    peek = opt.stats(reset=False)[0]
    assert peek["temperature"] == pytest.approx((0.75**2 + 0.375**2) / 2)
    assert opt.stats()[0] == peek
    opt.step()  # v = -0.1875
    assert opt.stats()[0]["temperature"] == pytest.approx(0.1875**2)


def test_callable_schedule_is_not_pickled_and_reloads_with_the_same_callable():
    def my_schedule(k):
        return 0.9 / (1 + k)

    x = torch.nn.Parameter(torch.ones(3))
    opt = CoolMomentum([x], lr=0.1, schedule=my_schedule)
    for _ in range(3):
        x.grad = torch.ones(3)
        opt.step()
    assert opt.stats(reset=False)[0]["rho"] == pytest.approx(0.9 / 3)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    assert saved["param_groups"][0]["schedule"] is None
    with pytest.raises(ValueError, match="saved with a callable schedule"):
        CoolMomentum([torch.nn.Parameter(torch.ones(3))], lr=0.1, total_steps=5).load_state_dict(
            saved
        )
    again = CoolMomentum([torch.nn.Parameter(torch.ones(3))], lr=0.1, schedule=my_schedule)
    again.load_state_dict(saved)
    assert again.param_groups[0]["schedule"] is my_schedule
    assert again.stats()[0]["step"] == 3


def test_sparse_gradients_are_refused_with_a_clear_message():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = CoolMomentum(emb.parameters(), lr=0.1, total_steps=5)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -0.1, "total_steps": 5}, r"lr must be a number >= 0"),
        ({"lr": torch.ones(2), "total_steps": 5}, r"lr as a tensor must hold one element"),
        ({"rho_0": 1.0, "total_steps": 5}, r"rho_0 must be a number in \[0, 1\)"),
        ({"rho_0": -0.5, "total_steps": 5}, r"rho_0 must be a number in \[0, 1\)"),
        ({"total_steps": 0}, r"total_steps must be a number > 0"),
        ({}, r"needs total_steps"),
        ({"total_steps": 5, "alpha": 0.9}, r"either total_steps or alpha"),
        ({"alpha": 1.2}, r"alpha must be in \(0, 1\]"),
        ({"alpha": 0.0}, r"alpha must be in \(0, 1\]"),
        ({"total_steps": 5, "schedule": "cosine"}, r"schedule must be one of"),
        ({"total_steps": 5, "weight_decay": -1}, r"weight_decay must be a number >= 0"),
        ({"total_steps": 5, "noise_std": -1}, r"noise_std must be a number >= 0"),
        ({"total_steps": 5, "hot_steps": -2}, r"hot_steps must be an integer >= 0"),
        ({"total_steps": 5, "state_dtype": torch.int32}, r"state_dtype must be None or a floa"),
        ({"total_steps": 5, "temperature_every": 0}, r"temperature_every must be an integer"),
        ({"total_steps": 5, "fused": True, "foreach": True}, r"fused=True and foreach=True"),
        ({"total_steps": 5, "fused": True, "capturable": True}, r"for a capturable step use"),
        (
            {"total_steps": 5, "fused": True, "state_dtype": torch.float64},
            r"state_dtype=torch.float64 with torch.float32 parameters needs foreach=True",
        ),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CoolMomentum([torch.nn.Parameter(torch.ones(1))], **kwargs)


@pytest.mark.parametrize("fused", [None, True])
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_step_does_not_recompile_as_rho_changes(backend, fused):
    torch._dynamo.reset()
    model = torch.nn.Linear(4, 2)
    opt = CoolMomentum(model.parameters(), lr=0.05, total_steps=6, fused=fused)
    reference = copy.deepcopy(model)
    ref_opt = CoolMomentum(reference.parameters(), lr=0.05, total_steps=6)
    compiled_step = torch.compile(opt.step, backend=backend, fullgraph=True)
    x = torch.randn(3, 4)

    def train(steps):
        for _ in range(steps):
            for m, step in ((model, compiled_step), (reference, ref_opt.step)):
                m.zero_grad()
                m(x).square().sum().backward()
                step()

    train(2)  # the first step creates the momentum buffers: one recompile, as for torch.optim
    with torch._dynamo.config.patch(error_on_recompile=True):
        train(10)  # rho changes every step, then stays 0
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)
    # Under compilation the mirror is the step's rho as a 0-d tensor.
    assert float(opt.param_groups[0]["momentum"]) == ref_opt.param_groups[0]["momentum"] == 0.0
    compiled_stats, eager_stats = opt.stats()[0], ref_opt.stats()[0]
    assert compiled_stats["step"] == eager_stats["step"] == 12
    assert compiled_stats["temperature"] == pytest.approx(eager_stats["temperature"], rel=1e-6)


def test_momentum_mirrors_the_rho_of_every_step_in_each_group():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = CoolMomentum(
        [{"params": [a]}, {"params": [b], "schedule": "linear-temperature", "rho_0": 0.5}],
        lr=0.1,
        total_steps=6,
    )
    assert "momentum" in opt.defaults  # where Lightning's LearningRateMonitor looks
    assert [g["momentum"] for g in opt.param_groups] == [0.99, 0.5]  # rho_0 before a step
    for k in range(9):
        a.grad, b.grad = torch.ones(2), torch.ones(2)
        opt.step()
        assert opt.param_groups[0]["momentum"] == pytest.approx(
            reference_rho(k, DEFAULT_SCHEDULE, 0.99, 6), abs=1e-15
        )
        assert opt.param_groups[1]["momentum"] == pytest.approx(
            reference_rho(k, "linear-temperature", 0.5, 6), abs=1e-15
        )
        assert [g["momentum"] for g in opt.param_groups] == [s["rho"] for s in opt.stats()]


def test_writing_momentum_does_not_steer_the_schedule():
    steered, plain = make_net(), make_net()
    opt = CoolMomentum(steered.parameters(), lr=0.05, total_steps=10)
    ref = CoolMomentum(plain.parameters(), lr=0.05, total_steps=10)
    for k in range(6):
        opt.param_groups[0]["momentum"] = 0.1 * k
        train_steps(steered, opt, 1, seed=k)
        train_steps(plain, ref, 1, seed=k)
        assert opt.param_groups[0]["momentum"] == ref.param_groups[0]["momentum"]
    for p, q in zip(steered.parameters(), plain.parameters()):
        assert torch.equal(p, q)


def test_one_cycle_lr_cycling_the_momentum_changes_nothing_but_the_mirror():
    runs = []
    for cycle_momentum in (True, False):
        model = make_net()
        opt = CoolMomentum(model.parameters(), lr=0.05, total_steps=10)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=0.1, total_steps=8, cycle_momentum=cycle_momentum
        )
        for k in range(8):
            train_steps(model, opt, 1, seed=k)
            sched.step()
        runs.append(list(model.parameters()))
    for p, q in zip(*runs):
        assert torch.equal(p, q)


def test_momentum_round_trips_through_a_weights_only_state_dict():
    model = make_net()
    opt = CoolMomentum(model.parameters(), lr=0.05, total_steps=10, hot_steps=2)
    train_steps(model, opt, 5)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    assert saved["param_groups"][0]["momentum"] == pytest.approx(
        reference_rho(4, DEFAULT_SCHEDULE, 0.99, 10, 2), abs=1e-15
    )
    again = CoolMomentum(make_net().parameters(), lr=0.05, total_steps=10, hot_steps=2)
    assert again.param_groups[0]["momentum"] == 0.99
    again.load_state_dict(saved)
    assert again.param_groups[0]["momentum"] == opt.param_groups[0]["momentum"]


def test_total_stats_weigh_each_group_by_its_elements():
    big, small = torch.nn.Parameter(torch.zeros(6)), torch.nn.Parameter(torch.zeros(2))
    opt = CoolMomentum(
        [{"params": [big]}, {"params": [small], "lr": 0.5}], lr=1.0, rho_0=0.5, schedule="constant"
    )
    for _ in range(2):
        big.grad, small.grad = torch.ones(6), torch.ones(2)
        opt.step()
    per_group = opt.stats(reset=False)
    total = opt.total_stats()
    # v_0 = -lr 0.75, v_1 = lr (0.5 * -0.75 - 0.75): the same per element in each group.
    v2 = [lr**2 * (0.75**2 + 1.125**2) for lr in (1.0, 0.5)]
    assert [s["temperature"] for s in per_group] == pytest.approx([v / 2 for v in v2])
    assert [s["temperature_count"] for s in per_group] == [12, 4]
    assert total["temperature_count"] == 16
    assert total["temperature"] == pytest.approx((6 * v2[0] + 2 * v2[1]) / 16)
    assert total["temperature_sum"] == pytest.approx(6 * v2[0] + 2 * v2[1])
    assert (total["step"], total["rho"], total["temperature_steps"]) == (2, 0.5, 2)
    assert set(total) == {
        "step", "rho", "temperature", "temperature_sum", "temperature_count", "temperature_steps"
    }  # fmt: skip
    assert opt.total_stats()["temperature"] is None  # the previous call reset every window
    opt.param_groups[1]["rho_0"] = 0.25
    big.grad, small.grad = torch.ones(6), torch.ones(2)
    opt.step()
    assert opt.total_stats()["rho"] is None  # the groups' rho differ now


def test_temperature_counts_follow_the_groups_parameters():
    a, b, c = (torch.nn.Parameter(torch.zeros(n)) for n in (3, 5, 7))
    opt = CoolMomentum([a], lr=0.1, total_steps=10)

    def counts(grads):
        for p in (a, b, c):
            p.grad = torch.ones_like(p) if p in grads else None
        opt.step()
        return [s["temperature_count"] for s in opt.stats()]

    assert counts({a}) == [3]
    assert counts({a}) == [3]
    opt.add_param_group({"params": [b]})
    assert counts({a, b}) == [3, 5]
    opt.param_groups[1]["params"].append(c)  # the same list, grown in place
    assert counts({a, b, c}) == [3, 12]
    assert counts({a, c}) == [3, 7]  # b has no gradient: only the others count
    assert counts({a, b, c}) == [3, 12]
    opt.param_groups[0]["params"], opt.param_groups[1]["params"] = [a, b], [c]  # new lists
    assert counts({a, b, c}) == [8, 7]
    opt.load_state_dict(opt.state_dict())
    assert counts({a, b, c}) == [8, 7]
    del opt.param_groups[0]
    opt.add_param_group({"params": [a, b]})
    assert counts({a, b, c}) == [7, 8]


def test_each_group_schedule_is_validated_once_not_at_every_step(monkeypatch):
    created = []
    original = Schedule.create.__func__

    def counting_create(cls, *args, **kwargs):
        created.append(args)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(Schedule, "create", classmethod(counting_create))
    model = make_net()
    opt = CoolMomentum(
        [{"params": [model.conv.weight], "rho_0": 0.9}, {"params": list(model.fc.parameters())}],
        lr=0.05,
        total_steps=10,
    )
    assert len(created) == 2
    train_steps(model, opt, 5)
    opt.stats()
    assert len(created) == 2
    # Edited arguments are validated again, at the next step.
    opt.param_groups[0]["rho_0"] = 1.5
    with pytest.raises(ValueError, match="rho_0 must be a number in"):
        train_steps(model, opt, 1)


@pytest.mark.parametrize("path", ALL_PATHS)
def test_temperature_every_k_steps_is_the_mean_over_the_measured_steps(path):
    every, steps = 3, 10
    xs, mats, offsets = quadratic_problem()
    _, ref_temps, _ = run_reference(xs, mats, offsets, steps, 0.05, 0.9, 12, DEFAULT_SCHEDULE, 0)
    _, opt, _ = run_torch(xs, mats, offsets, steps, lr=0.05, rho_0=0.9, total_steps=12,
                          temperature_every=every, **ALL_PATHS[path])  # fmt: skip
    (stats,) = opt.stats()
    measured = ref_temps[::every]  # steps 0, 3, 6, 9
    assert stats["temperature"] == pytest.approx(float(np.mean(measured)), rel=1e-12)
    assert stats["temperature_count"] == len(measured) * sum(x.size for x in xs)
    assert stats["temperature_steps"] == steps


@pytest.mark.parametrize(
    ("path", "steps_read"),
    [
        ("single", [0, 3, 6, 9]),
        ("foreach", [0, 3, 6, 9]),
        # The step count is a device tensor: knowing whether a step is measured would take a
        # host read, so every step computes the sum and weights it by 0 or 1.
        ("capturable", list(range(10))),
        ("capturable-single", list(range(10))),
    ],
)
def test_temperature_every_k_steps_skips_the_read_of_the_buffers_in_eager_steps(
    path, steps_read, monkeypatch
):
    norm_calls = 0

    def counted(norm):
        def counting_norm(*args, **kwargs):
            nonlocal norm_calls
            norm_calls += 1
            return norm(*args, **kwargs)

        return counting_norm

    # The single-tensor loop and the foreach path read the buffers through these.
    monkeypatch.setattr(torch.linalg, "vector_norm", counted(torch.linalg.vector_norm))
    monkeypatch.setattr(torch, "_foreach_norm", counted(torch._foreach_norm))
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = CoolMomentum([x], lr=0.05, total_steps=12, temperature_every=3, **ALL_PATHS[path])
    read = []
    for k in range(10):
        x.grad = torch.ones(3, dtype=torch.float64)
        before = norm_calls
        opt.step()
        if norm_calls > before:
            read.append(k)
    assert read == steps_read
    assert opt.stats()[0]["temperature_count"] == 4 * 3  # steps 0, 3, 6, 9 in every case
