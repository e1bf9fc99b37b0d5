"""CoolMomentum with bfloat16 parameters: coefficients in float32, and float32 momentum buffers."""

import io

import numpy as np
import pytest
import torch

from coolmomentum import CoolMomentum

RHO, LR, DECAY_STEPS = 0.99, 0.5, 30

MODES = {
    "eager-foreach": ({"foreach": True}, False),
    "eager-single": ({"foreach": False}, False),
    "capturable-foreach": ({"capturable": True, "foreach": True}, False),
    "capturable-single": ({"capturable": True, "foreach": False}, False),
    "compiled": ({"foreach": True}, True),
}


def decay_run(mode, state_dtype):
    """One gradient, then zero gradients; the momentum buffer at the end."""
    kwargs, compiled = MODES[mode]
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(64, generator=gen).bfloat16().requires_grad_()
    g = torch.randn(64, generator=gen).bfloat16()
    # Held hot: rho = rho_0 throughout, computed by the schedule (a tensor when capturable
    # or compiled; the "constant" schedule would hand back the Python float).
    opt = CoolMomentum([p], lr=LR, rho_0=RHO, total_steps=10, hot_steps=10**6,
                       state_dtype=state_dtype, **kwargs)  # fmt: skip
    step = torch.compile(opt.step, backend="aot_eager", fullgraph=True) if compiled else opt.step
    for k in range(DECAY_STEPS + 1):
        p.grad = g if k == 0 else torch.zeros_like(g)
        step()
    return opt.state[p]["momentum_buffer"], g


@pytest.mark.parametrize("state_dtype", [None, torch.float32])
@pytest.mark.parametrize("mode", MODES)
def test_rho_keeps_float32_precision_next_to_bfloat16_parameters(mode, state_dtype):
    # b_k = rho**k b_0: with rho cast to bfloat16 (0.98828), b_30 would be 5% short.
    buf, g = decay_run(mode, state_dtype)
    assert buf.dtype == (state_dtype or torch.bfloat16)
    # Every mode rounds as the eager loop does, whose Python-float rho is exact to float32.
    eager, _ = decay_run("eager-single", state_dtype)
    assert torch.equal(buf, eager)
    if state_dtype == torch.float32:
        expected = RHO**DECAY_STEPS * -(1 + RHO) / 2 * g.double()
        np.testing.assert_allclose(buf.double().numpy(), expected.numpy(), rtol=2e-6)


def bf16_run(steps, opt_kwargs, start=None):
    """``steps`` steps on bfloat16 parameters with a constant gradient; params and optimizer."""
    p = torch.linspace(-1, 1, 16).bfloat16().requires_grad_()
    opt = CoolMomentum([p], lr=1e-3, rho_0=0.999, schedule="constant", **opt_kwargs)
    if start is not None:
        p.data.copy_(start["param"])
        opt.load_state_dict(start["opt"])
    for _ in range(steps):
        p.grad = torch.ones_like(p)
        opt.step()
    return p, opt


@pytest.mark.parametrize("path", [{}, {"foreach": True}, {"foreach": False}])
def test_float32_buffers_keep_the_small_updates_a_bfloat16_buffer_rounds_away(path):
    steps, rho = 200, 0.999
    b = 0.0
    for _ in range(steps):  # the float64 recurrence, fed the same (exact) gradient
        b = rho * b - (1 + rho) / 2 * 1.0
    _, wide = bf16_run(steps, {"state_dtype": torch.float32, **path})
    _, narrow = bf16_run(steps, path)
    (p,) = wide.state
    assert wide.state[p]["momentum_buffer"].dtype == torch.float32
    # float32 rounding over 200 steps: within 200 * 6e-8.
    np.testing.assert_allclose(wide.state[p]["momentum_buffer"].numpy(), b, rtol=1.2e-5)
    # In bfloat16 the increments (1e-3 of the buffer) are partly lost.
    (q,) = narrow.state
    assert abs(narrow.state[q]["momentum_buffer"][0].item() / b - 1) > 1e-3


def test_float32_buffers_survive_a_checkpoint_of_bfloat16_parameters():
    # torch.optim would cast every floating state tensor to its parameter's dtype on loading.
    straight, _ = bf16_run(30, {"state_dtype": torch.float32})
    p, opt = bf16_run(12, {"state_dtype": torch.float32})
    buf = io.BytesIO()
    torch.save({"param": p.detach(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed, opt2 = bf16_run(18, {"state_dtype": torch.float32}, start=saved)
    assert opt2.state[resumed]["momentum_buffer"].dtype == torch.float32
    assert torch.equal(resumed, straight)


# (weight_decay, decoupled_weight_decay, maximize)
FLOAT32_REFERENCE_OPTIONS = [(0.0, False, False), (0.05, False, True), (0.05, True, False)]


def float32_reference(x0, grads, rhos, lr, dtypes, weight_decay, decoupled, maximize):
    """The step in float32 (NumPy), the parameter and the buffer rounded to their ``dtypes``
    when stored: the rule of the optax and Keras ports. Every product is rounded to float32
    on its own."""
    f32 = np.float32

    def stored(a, dtype):
        return torch.from_numpy(a).to(dtype).float().numpy()

    x, b = x0.numpy(), np.zeros(x0.shape, f32)
    for g, rho in zip(grads, rhos, strict=True):
        g = -g.numpy() if maximize else g.numpy()
        if weight_decay and not decoupled:
            g = g + f32(weight_decay) * x
        b = stored(f32(rho) * b - f32((1 + rho) / 2) * g, dtypes[1])
        velocity = f32(lr) * b
        shrink = f32(1 - lr * weight_decay) if decoupled else f32(1)
        x = stored(x * shrink + velocity, dtypes[0])
    return x, b


@pytest.mark.parametrize("state_dtype", [None, torch.float32])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("weight_decay", "decoupled", "maximize"), FLOAT32_REFERENCE_OPTIONS)
@pytest.mark.parametrize(
    "path", [{}, {"foreach": True}, {"foreach": False}, {"capturable": True, "foreach": True}]
)
def test_low_precision_steps_match_the_float32_reference_bit_for_bit(
    path, weight_decay, decoupled, maximize, dtype, state_dtype
):
    # A changing rho, an lr that no 16-bit float holds, and new gradients at every step, so
    # that every product rounds. One element, a vector's tail (7) and whole vectors (40).
    rho_0, lr, total_steps, steps = 0.99, 0.1, 8, 12
    gen = torch.Generator().manual_seed(5)
    x0s = [torch.randn(n, generator=gen).to(dtype) for n in (1, 7, 40)]
    grads = [[torch.randn(x.shape, generator=gen).to(dtype) for _ in range(steps)] for x in x0s]
    params = [x.clone().requires_grad_() for x in x0s]
    opt = CoolMomentum(params, lr=lr, rho_0=rho_0, total_steps=total_steps,
                       weight_decay=weight_decay, decoupled_weight_decay=decoupled,
                       maximize=maximize, state_dtype=state_dtype, **path)  # fmt: skip
    rhos = []
    for k in range(steps):
        for p, gs in zip(params, grads, strict=True):
            p.grad = gs[k]
        opt.step()
        rhos.append(opt.param_groups[0]["momentum"])
    dtypes = (dtype, state_dtype or dtype)
    for p, x0, gs in zip(params, x0s, grads, strict=True):
        x, b = float32_reference(x0.float(), [g.float() for g in gs], [float(r) for r in rhos],
                                 lr, dtypes, weight_decay, decoupled, maximize)  # fmt: skip
        assert (p.dtype, opt.state[p]["momentum_buffer"].dtype) == dtypes
        np.testing.assert_array_equal(opt.state[p]["momentum_buffer"].float().numpy(), b)
        np.testing.assert_array_equal(p.detach().float().numpy(), x)
