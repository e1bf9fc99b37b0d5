"""The batched many-particle problems, the FIRE quench, annealing and the ``anneal`` command."""

import argparse
import math
import re

import pytest
import torch

from coolmomentum.physics import (
    GLOBAL_MINIMA,
    MINIMAL_ENERGIES,
    LennardJonesCluster,
    ThomsonProblem,
    anneal,
    fire,
    lj_energy,
    lj_energy_and_forces,
    noise_std_for_temperature,
    temperature_for_noise_std,
    thomson_energy,
    thomson_energy_and_gradient,
)
from coolmomentum.physics.anneal import write_xyz
from coolmomentum.physics.cli import register
from coolmomentum.physics.lj import random_cluster


@pytest.fixture(autouse=True)
def one_thread():
    # The batches here are small: several threads only contend (badly on a shared machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def icosahedron(nearest=1.1):
    """The centred 13-atom icosahedron, centre-to-vertex distance ``nearest``."""
    phi = (1 + 5**0.5) / 2
    vertices = []
    for a in (-1.0, 1.0):
        for b in (-phi, phi):
            vertices += [(0.0, a, b), (a, b, 0.0), (b, 0.0, a)]
    x = torch.tensor([(0.0, 0.0, 0.0), *vertices], dtype=torch.float64)
    return x / x[1].norm() * nearest


def test_lj_pair_energy_and_force_in_reduced_units():
    r_min = 2 ** (1 / 6)
    x = torch.tensor([[[0.0, 0.0, 0.0], [r_min, 0.0, 0.0]], [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]],
                     dtype=torch.float64)  # fmt: skip
    energy, forces = lj_energy_and_forces(x)
    torch.testing.assert_close(energy, torch.tensor([-1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(forces[0], torch.zeros(2, 3, dtype=torch.float64))
    # At r = sigma the pair repels with dU/dr = -24: atom 1 is pushed along +y.
    torch.testing.assert_close(forces[1, 1], torch.tensor([0.0, 24.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("confine_radius", [None, 1.2])
def test_lj_forces_are_minus_the_autograd_gradient(confine_radius):
    x = random_cluster(5, 9, 2.0, generator=seeded(1)).requires_grad_()
    energy, forces = lj_energy_and_forces(x, confine_radius=confine_radius, wall_stiffness=7.0)
    (gradient,) = torch.autograd.grad(energy.sum(), x)
    torch.testing.assert_close(forces, -gradient, rtol=1e-10, atol=1e-10)
    if confine_radius is not None:  # the wall is on (atoms lie outside 1.2) and adds energy
        assert (energy > lj_energy(x.detach())).all()


def test_confinement_is_zero_inside_and_keeps_the_energy_translation_invariant():
    p = LennardJonesCluster(13, confine_radius=1.5)
    x = icosahedron()[None]
    e, _ = p.energy_and_gradient(x)
    torch.testing.assert_close(e, p.energy(x))  # every atom is inside 1.5 of the centre
    shifted = torch.cat([x, x + 10.0])
    stretched = shifted.clone()
    stretched[:, 0] += torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64)
    e, g = p.energy_and_gradient(stretched)
    assert e[0] > p.energy(stretched)[0]
    torch.testing.assert_close(e[0], e[1])
    torch.testing.assert_close(g.sum(1), torch.zeros(2, 3, dtype=torch.float64))  # no net force


def test_lj13_icosahedron_quenches_to_the_published_global_minimum():
    result = fire(LennardJonesCluster(13), icosahedron()[None], fmax=1e-6)
    assert result.converged.all()
    assert result.energies.item() == pytest.approx(GLOBAL_MINIMA[13], abs=1e-6)


def test_random_starts_and_quenches_find_the_tabulated_small_lj_minima_and_nothing_lower():
    for n in range(3, 9):
        p = LennardJonesCluster(n)
        quenched = fire(p, p.random_positions(512, generator=seeded(n)), fmax=1e-5)
        assert quenched.converged.all()
        assert quenched.energies.min().item() == pytest.approx(GLOBAL_MINIMA[n], abs=1e-6)


def test_fire_lowers_every_replica_and_stops_each_at_fmax():
    p = LennardJonesCluster(19)
    x = p.random_positions(16, generator=seeded(2))
    result = fire(p, x, fmax=1e-4)
    assert result.converged.all() and (result.fmax < 1e-4).all()
    assert (result.energies < p.energy(x)).all()
    assert (result.evaluations > 1).all() and result.evaluations.min() < result.evaluations.max()
    _, g = p.energy_and_gradient(result.positions)
    assert g.norm(dim=-1).amax().item() < 1e-4


def test_thomson_gradient_is_autograd_through_the_projection():
    x = torch.randn(4, 11, 3, generator=seeded(3), dtype=torch.float64)
    x /= x.norm(dim=-1, keepdim=True)
    x.requires_grad_()
    energy, gradient = thomson_energy_and_gradient(x)
    u = x / x.norm(dim=-1, keepdim=True)
    i, j = torch.triu_indices(11, 11, offset=1)
    reference = (u[:, i] - u[:, j]).norm(dim=-1).reciprocal().sum(-1)
    (expected,) = torch.autograd.grad(reference.sum(), x)
    torch.testing.assert_close(energy, reference.detach())
    torch.testing.assert_close(gradient, expected, rtol=1e-10, atol=1e-10)


def test_thomson_regular_polyhedra_have_the_tabulated_energies():
    tetrahedron = torch.tensor(
        [[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64
    )
    octahedron = torch.cat([torch.eye(3), -torch.eye(3)]).double()
    assert thomson_energy(tetrahedron[None]).item() == pytest.approx(MINIMAL_ENERGIES[4], abs=1e-8)
    assert thomson_energy(octahedron[None]).item() == pytest.approx(MINIMAL_ENERGIES[6], abs=1e-8)
    p = ThomsonProblem(12)
    quenched = fire(p, p.random_positions(8, generator=seeded(4)), fmax=1e-7)
    assert quenched.energies.min().item() == pytest.approx(MINIMAL_ENERGIES[12], abs=1e-7)
    torch.testing.assert_close(quenched.positions.norm(dim=-1), torch.ones(8, 12).double())


def test_noise_std_and_temperature_are_inverse():
    s = noise_std_for_temperature(0.4, lr=2e-3, rho=0.95)
    assert temperature_for_noise_std(s, lr=2e-3, rho=0.95) == pytest.approx(0.4)


def test_annealing_is_reproducible_cools_and_finds_the_lj13_minimum():
    kwargs = dict(replicas=48, steps=1200, temperature=0.4, seed=5, trace_every=10)
    first = anneal(LennardJonesCluster(13), **kwargs)
    again = anneal(LennardJonesCluster(13), **kwargs)
    assert torch.equal(first.energies, again.energies)
    assert first.trace_steps.tolist() == list(range(9, 1200, 10))
    # Cooling rho from 0.99 to 0 lowers kT about 199-fold; the start is near the asked 0.4.
    assert first.trace_temperature[0] == pytest.approx(0.4, rel=0.3)
    assert first.trace_temperature[-1] < first.trace_temperature[0] / 50
    assert first.successes() >= 1 and first.gap() == pytest.approx(0.0, abs=1e-3)
    assert first.best_energy == first.energies.min()
    assert (first.evaluations >= 1200).all()
    assert first.trace_lowest_energy.shape == first.trace_steps.shape


def test_zero_steps_is_a_plain_quench_of_the_random_starts():
    result = anneal(ThomsonProblem(5), replicas=4, steps=0, noise_std=0.0)
    assert result.trace_steps.numel() == 0
    assert result.best_energy == pytest.approx(MINIMAL_ENERGIES[5], abs=1e-6)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: LennardJonesCluster(1), "atoms"),
        (lambda: ThomsonProblem(0), "charges"),
        (lambda: anneal(LennardJonesCluster(5), replicas=0, noise_std=1.0), "replicas"),
        (lambda: anneal(LennardJonesCluster(5), steps=-1, noise_std=1.0), "steps"),
        (lambda: anneal(LennardJonesCluster(5), steps=10, lr=0.0, noise_std=1.0), "lr"),
        (lambda: anneal(LennardJonesCluster(5), steps=10, noise_std=-1.0), "noise_std"),
        (lambda: anneal(LennardJonesCluster(5), steps=10), "noise_std"),
        (lambda: LennardJonesCluster(5, confine_radius=-1.0), "confine_radius"),
        (lambda: lj_energy(torch.full((1, 3, 3), math.nan)), "positions"),
        (lambda: lj_energy(torch.zeros(2, 1, 3)), "positions"),
        (lambda: lj_energy(torch.zeros(2, 4, 2)), "positions"),
        (lambda: fire(LennardJonesCluster(4), torch.zeros(2, 5, 3)), "positions"),
        (lambda: thomson_energy(torch.tensor([[[1.0, 0, 0], [math.inf, 0, 0]]])), "positions"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_write_xyz_is_atomic_and_readable(tmp_path):
    path = tmp_path / "two.xyz"
    write_xyz(path, icosahedron()[None].repeat(2, 1, 1), [-44.3, -44.2], "Ar", "LJ13")
    lines = path.read_text().splitlines()
    assert lines[0] == "13" and lines[1].startswith("energy=-44.300000000") and len(lines) == 30
    assert lines[2].split()[0] == "Ar"
    assert [p.name for p in tmp_path.iterdir()] == ["two.xyz"]  # no temporary file left


def parser():
    p = argparse.ArgumentParser(prog="coolmomentum")
    register(p.add_subparsers(dest="command", required=True))
    return p


def test_anneal_command_reports_the_gap_and_writes_structure_and_plot(tmp_path, capsys):
    args = parser().parse_args(
        ["anneal", "lj", "--atoms", "7", "--replicas", "8", "--steps", "300", "--seed", "1",
         "--out", str(tmp_path / "run")]
    )  # fmt: skip
    assert args.func(args) == 0
    out, err = capsys.readouterr()
    assert "LJ7: 8 replicas, 300 steps" in out
    assert f"best known minimum {GLOBAL_MINIMA[7]:.6f}" in out and "gap" in out
    assert re.search(r"reached by \d/8 replicas", out)
    assert err == ""  # no progress bar when stdout is not a terminal
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["anneal.png", "best.xyz", "replicas.xyz"]
    assert (run / "anneal.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "best.xyz").read_text().splitlines()[0] == "7"


def test_anneal_command_thomson_with_explicit_noise(tmp_path, capsys):
    args = parser().parse_args(
        ["anneal", "thomson", "--charges", "40", "--replicas", "2", "--steps", "50",
         "--noise-std", "0.5", "--schedule", "linear-temperature", "--out", str(tmp_path)]
    )  # fmt: skip
    args.func(args)
    out = capsys.readouterr().out
    assert "Thomson40" in out and "noise_std 0.5" in out
    assert "no best known minimum is tabulated for Thomson40" in out


def test_anneal_command_rejects_both_noise_and_temperature():
    with pytest.raises(SystemExit):
        parser().parse_args(
            ["anneal", "lj", "--atoms", "5", "--noise-std", "1", "--temperature", "0.3"]
        )
