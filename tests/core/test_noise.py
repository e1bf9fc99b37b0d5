"""CoolMomentum's ``noise_std``: the temperature it sets, and its reproducibility."""

import copy
import pickle

import numpy as np
import pytest
import torch

from coolmomentum import CoolMomentum


def stationary_v2(k, lr, rho, noise_std):
    """E[v**2] of the recurrence on U = k x**2 / 2 with gradient noise, in the stationary state.

    With c = lr (1 + rho) / 2 and g = k x + xi, the state z = (x, v) follows
    z' = A z + b xi, A = [[1 - c k, rho], [-c k, rho]], b = (-c, -c); its covariance solves the
    discrete Lyapunov equation P = A P A^T + noise_std**2 b b^T, i.e.
    (I - A (x) A) vec(P) = noise_std**2 vec(b b^T).
    """
    c = lr * (1 + rho) / 2
    a = np.array([[1 - c * k, rho], [-c * k, rho]])
    b = np.array([-c, -c])
    assert np.abs(np.linalg.eigvals(a)).max() < 1, "the recurrence must be stable"
    vec_p = np.linalg.solve(np.eye(4) - np.kron(a, a), noise_std**2 * np.outer(b, b).ravel())
    return vec_p.reshape(2, 2)[1, 1]


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_temperature_of_a_harmonic_potential_matches_the_lyapunov_solution(rho):
    # Tolerance: the window average of the per-step means of v**2 over N independent Gaussian
    # coordinates has variance at most that of one step's mean (averaging correlated samples
    # never increases the variance), 2 E[v**2]**2 / N: a relative standard deviation of
    # sqrt(2 / N) = 1% for N = 20_000. 5% is five standard deviations. The burn-in of 400 steps
    # leaves a transient of order |eigenvalue|**800 <= 0.9**400 < 1e-18.
    n, k, lr, noise_std = 20_000, 1.0, 0.1, 1.0
    x = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    opt = CoolMomentum(
        [x], lr=lr, rho_0=rho, schedule="constant", noise_std=noise_std,
        generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    for step in range(800):
        if step == 400:
            opt.stats()  # start the measured window after the burn-in
        x.grad = k * x.detach()
        opt.step()
    measured = opt.stats()[0]["temperature"]
    expected = stationary_v2(k, lr, rho, noise_std)
    assert measured == pytest.approx(expected, rel=0.05)


def test_lyapunov_solution_has_the_free_particle_limit():
    # For k -> 0 the velocity alone is an AR(1) process: E[v**2] = c**2 s**2 / (1 - rho**2).
    lr, rho, s = 0.1, 0.9, 2.0
    c = lr * (1 + rho) / 2
    assert stationary_v2(1e-9, lr, rho, s) == pytest.approx(c**2 * s**2 / (1 - rho**2), rel=1e-6)


def make_params():
    return [torch.zeros(5, 3, dtype=torch.float64), torch.zeros(7, dtype=torch.float64)]


def run(params, opt, steps):
    for _ in range(steps):
        for p in params:
            p.grad = 0.1 * p.detach()
        opt.step()
    return [p.clone() for p in params]


def make_opt(params, seed, **kw):
    return CoolMomentum(
        params, lr=0.05, rho_0=0.9, total_steps=30, noise_std=0.5,
        generator=torch.Generator().manual_seed(seed), **kw,
    )  # fmt: skip


def test_a_seeded_generator_reproduces_the_noise_and_another_seed_does_not():
    first = make_params()
    second = make_params()
    other = make_params()
    a = run(first, make_opt(first, 3), 10)
    b = run(second, make_opt(second, 3), 10)
    c = run(other, make_opt(other, 4), 10)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.allclose(a[0], c[0])


def test_resume_through_state_dict_continues_the_noise_bit_for_bit(tmp_path):
    straight = make_params()
    expected = run(straight, make_opt(straight, 7), 20)

    params = make_params()
    opt = make_opt(params, 7)
    run(params, opt, 8)
    path = tmp_path / "opt.pt"
    torch.save({"params": [p.clone() for p in params], "opt": opt.state_dict()}, path)

    saved = torch.load(path, weights_only=True)
    resumed = [p.clone() for p in saved["params"]]
    opt2 = make_opt(resumed, 999)  # a different seed: the loaded state must win
    opt2.load_state_dict(saved["opt"])
    got = run(resumed, opt2, 12)
    assert all(torch.equal(x, y) for x, y in zip(expected, got))


def test_foreach_and_single_tensor_paths_draw_the_same_noise():
    fast = make_params()
    slow = make_params()
    a = run(fast, make_opt(fast, 11, foreach=True), 15)
    b = run(slow, make_opt(slow, 11, foreach=False), 15)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-15)


def test_noise_is_what_moves_parameters_at_a_minimum():
    # At x = 0 the gradient vanishes: any motion is the noise, whose standard deviation after
    # one step is lr (1 + rho_0) / 2 * noise_std (3% is 10 standard errors for 50_000 samples).
    x = torch.zeros(50_000, dtype=torch.float64)
    opt = CoolMomentum([x], lr=0.1, rho_0=0.0, schedule="constant", noise_std=2.0,
                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    x.grad = torch.zeros_like(x)
    opt.step()
    assert x.std().item() == pytest.approx(0.1 / 2 * 2.0, rel=0.03)


@pytest.mark.parametrize("copy_of", [copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o))],
                         ids=["deepcopy", "pickle"])  # fmt: skip
def test_a_copied_optimizer_continues_like_the_original(copy_of):
    # copy.deepcopy and pickle copy the parameters with the optimizer; the copy's steps, noise
    # included, must match the original's, and stepping one must not move the other's noise.
    params = make_params()
    opt = make_opt(params, 5)
    run(params, opt, 6)
    copied = copy_of({"params": params, "opt": opt})
    expected = run(params, opt, 9)
    got = run(copied["params"], copied["opt"], 9)
    assert all(torch.equal(x, y) for x, y in zip(expected, got))
    assert copied["opt"].state_dict()["param_groups"][0]["step"] == 15


def test_loading_a_state_without_generators_keeps_the_callers_generator():
    # A state_dict without noise generators (DCP's, or one saved before any noise was drawn)
    # leaves the generator passed to the optimizer in use: a caller restores it themselves.
    params = make_params()
    generator = torch.Generator().manual_seed(3)
    opt = CoolMomentum(params, lr=0.05, rho_0=0.9, total_steps=30, noise_std=0.5,
                       generator=generator)  # fmt: skip
    run(params, opt, 2)
    saved = opt.state_dict()
    del saved["noise_generators"]
    opt.load_state_dict(saved)
    before = generator.get_state()
    run(params, opt, 1)
    assert not torch.equal(generator.get_state(), before)
