"""The fused step: the C kernel on the CPU, PyTorch's fused SGD kernel where it is not built."""

import io
import os
import shutil

import pytest
import torch

import coolmomentum._torch_step as cm_step
from coolmomentum import CoolMomentum, _fused_cpu

# (weight_decay, decoupled_weight_decay, maximize, noise_std)
OPTIONS = [(0.0, False, False, 0.0), (0.05, False, True, 0.0), (0.05, True, False, 0.3)]
TOLERANCE = {
    torch.float64: dict(rtol=1e-12, atol=1e-14),
    torch.complex128: dict(rtol=1e-12, atol=1e-14),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
}


needs_compiler = pytest.mark.skipif(
    shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler to build the kernel"
)


def awkward_params():
    gen = torch.Generator().manual_seed(3)
    return [
        torch.randn(5, 4, generator=gen, dtype=torch.float64),
        torch.zeros(0, 3, dtype=torch.float64),  # zero-size
        torch.randn(7, generator=gen, dtype=torch.float64),  # loses its gradient after step 3
        torch.randn(2, 2, generator=gen, dtype=torch.complex128),
        torch.randn(3, 70_000, generator=gen),  # float32, big enough for both threads
        torch.randn(6, 4, generator=gen).t(),  # not contiguous: PyTorch's kernel takes it
        # bfloat16: the foreach path steps it in float32 (neither fused kernel does).
        torch.randn(40, generator=gen).bfloat16(),
    ]


def run(steps=12, **kwargs):
    """Steps (past the cooling, where rho = 0) on fixed random gradients."""
    params = [p.clone().requires_grad_() for p in awkward_params()]
    opt = CoolMomentum(params, lr=0.1, total_steps=6, hot_steps=1,
                       generator=torch.Generator().manual_seed(7), **kwargs)  # fmt: skip
    temps = []
    for k in range(steps):
        gen = torch.Generator().manual_seed(100 + k)
        for i, p in enumerate(params):
            p.grad = None if i == 2 and k > 3 else torch.randn(p.shape, generator=gen).to(p)
        opt.step()
        temps.append(opt.stats()[0]["temperature"])
    return params, opt, temps


def assert_same_run(got, want):
    (p1, o1, t1), (p2, o2, t2) = got, want
    for a, b in zip(p1, p2, strict=True):
        torch.testing.assert_close(a, b, **TOLERANCE[a.dtype])
        if a.numel():
            torch.testing.assert_close(
                o1.state[a]["momentum_buffer"], o2.state[b]["momentum_buffer"], **TOLERANCE[a.dtype]
            )
    # Float32 sums of 210,000 squares (the loop) against the C kernel's (float lanes, each
    # within 3.9e-6 of its exact sum, added in double).
    assert t1 == pytest.approx(t2, rel=1e-5)


@pytest.mark.parametrize(("weight_decay", "decoupled", "maximize", "noise_std"), OPTIONS)
def test_fused_step_matches_the_single_tensor_loop(weight_decay, decoupled, maximize, noise_std):
    options = dict(weight_decay=weight_decay, decoupled_weight_decay=decoupled,
                   maximize=maximize, noise_std=noise_std)  # fmt: skip
    assert_same_run(run(fused=True, **options), run(foreach=False, **options))


@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    """A C compiler that fails: the kernel cannot be built."""
    monkeypatch.setenv("CC", "false")
    monkeypatch.setenv("COOLMOMENTUM_CACHE_DIR", str(tmp_path))
    _fused_cpu._load.cache_clear()
    yield
    _fused_cpu._load.cache_clear()


def test_without_a_compiler_pytorchs_fused_kernel_runs_the_step(no_compiler, monkeypatch):
    with pytest.warns(RuntimeWarning, match="fused CPU kernel is not available"):
        assert _fused_cpu.library() is None
    assert "failed" in _fused_cpu.build_error()
    calls = []
    original = cm_step._fused_sgd_update

    def spy(*args, **kwargs):
        calls.append(len(args[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(cm_step, "_fused_sgd_update", spy)
    options = dict(weight_decay=0.05, decoupled_weight_decay=True, noise_std=0.3)
    assert_same_run(run(fused=True, **options), run(foreach=False, **options))
    # While rho > 0, every float32 and float64 tensor with a gradient and one layout.
    assert calls and max(calls) == 5


def test_fused_step_resumes_bit_for_bit():
    straight, _, _ = run(steps=12, fused=True, weight_decay=0.01)
    params, opt, _ = run(steps=5, fused=True, weight_decay=0.01)
    buf = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed = [p.clone().requires_grad_() for p in saved["params"]]
    opt2 = CoolMomentum(resumed, lr=0.1, total_steps=6, hot_steps=1, fused=True,
                        weight_decay=0.01)  # fmt: skip
    opt2.load_state_dict(saved["opt"])
    for k in range(5, 12):
        gen = torch.Generator().manual_seed(100 + k)
        for i, p in enumerate(resumed):
            p.grad = None if i == 2 and k > 3 else torch.randn(p.shape, generator=gen).to(p)
        opt2.step()
    for a, b in zip(resumed, straight, strict=True):
        assert torch.equal(a, b)


def test_tracking_the_temperature_changes_no_update():
    tracked, _, temps = run(fused=True)
    untracked, _, none = run(fused=True, track_temperature=False)
    assert all(torch.equal(a, b) for a, b in zip(tracked, untracked, strict=True))
    assert all(t > 0 for t in temps) and none == [None] * len(none)


@needs_compiler
def test_the_kernel_is_built_once_and_a_changing_rho_rebuilds_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("COOLMOMENTUM_CACHE_DIR", str(tmp_path))
    builds = []
    original = _fused_cpu._build
    monkeypatch.setattr(_fused_cpu, "_build", lambda *a: builds.append(a) or original(*a))
    _fused_cpu._load.cache_clear()
    try:
        run(steps=12, fused=True)  # rho changes every step, then is 0
        assert len(builds) == 1
        assert len(list(tmp_path.glob("fused_cpu-*.so"))) == 1
        _fused_cpu._load.cache_clear()  # a new process: the cached build is loaded
        run(steps=2, fused=True)
        assert len(builds) == 1
    finally:
        _fused_cpu._load.cache_clear()


def test_the_temperature_does_not_depend_on_the_number_of_threads():
    threads = torch.get_num_threads()
    try:
        sums = []
        for n in (1, 2):
            torch.set_num_threads(n)
            _, _, temps = run(steps=3, fused=True)
            sums.append(temps)
    finally:
        torch.set_num_threads(threads)
    assert sums[0] == sums[1]


@needs_compiler
@pytest.mark.parametrize("fill", ["random", "constant"])
@pytest.mark.parametrize(("dtype", "bound"), [(torch.float32, 3.9e-6), (torch.float64, 1e-12)])
def test_the_kernels_sum_of_squares_is_within_its_error_bound(fill, dtype, bound):
    """The C kernel's sum(b**2) against a float64 sum of the new buffers, within the bound that
    _fused_cpu.c derives for its float32 lanes. Constant buffers are the hard case for float
    sums, whose rounding errors then add up instead of cancelling: one float accumulator per
    chunk errs by 4.5e-5 here."""
    gen = torch.Generator().manual_seed(11)
    # Around the vectors (4 to 16 lanes), the blocks, the chunk (16384), and several chunks.
    sizes = [1, 31, 33, 2053, 16384, 16417, 100_003]

    def tensors(value):
        if fill == "constant":
            return [torch.full((n,), value, dtype=dtype) for n in sizes]
        return [torch.randn(n, generator=gen, dtype=dtype) for n in sizes]

    params, grads, bufs = tensors(0.5), tensors(-0.3), tensors(1.0)
    total = _fused_cpu.step(params, grads, bufs, rho=0.9, lr=0.1, weight_decay=0.0,
                            decoupled_weight_decay=False, maximize=False,
                            track_temperature=True)  # fmt: skip
    assert total is not None
    exact = sum(b.double().square().sum() for b in bufs)
    assert total.item() == pytest.approx(exact.item(), rel=bound)
