"""The batched many-particle problems, the FIRE quench, annealing and the ``anneal`` command."""

import math
import re
import subprocess
import sys

import pytest
import torch

from coolmomentum.cli import EXPERIMENTS_EXTRA, main
from coolmomentum.physics import (
    GLOBAL_MINIMA,
    MINIMAL_ENERGIES,
    AnnealSettings,
    HoppingSettings,
    LennardJonesCluster,
    ThomsonProblem,
    anneal,
    annealed_hopping,
    fire,
    lbfgs,
    lj_energy,
    lj_energy_and_forces,
    noise_std_for_temperature,
    temperature_for_noise_std,
    thomson_energy,
    thomson_energy_and_gradient,
)
from coolmomentum.physics.lj import random_cluster
from coolmomentum.physics.minimize import lbfgs_direction
from coolmomentum.physics.results import write_xyz


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
    # Cooling rho from 0.99 to 0 lowers kT about 199-fold; the hot start is near the asked
    # 0.4 (plus the heat of condensing from the dilute random start).
    peak = first.trace_temperature.max()
    assert peak == pytest.approx(0.4, rel=0.4)
    assert first.trace_temperature[-1] < peak / 50
    low, high = first.trace_temperature_band.unbind(-1)
    assert (low <= first.trace_temperature).all() and (first.trace_temperature <= high).all()
    assert not first.diverged.any()
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


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: AnnealSettings(temperature=0.3, rho_0=1.0), r"rho_0 must be a number in \[0, 1\)"),
        (lambda: AnnealSettings(temperature=0.3, schedule="cosine"), "schedule must be one of"),
        (lambda: AnnealSettings(temperature=0.3, hot_steps=-1), "hot_steps must be an integer"),
        (lambda: AnnealSettings(temperature=0.3, steps=10, hot_steps=10),
         "hot_steps must be < steps to leave steps to cool, .*schedule='constant'"),
        (lambda: AnnealSettings(temperature=0.3, noise_std=1.0), "exactly one of noise_std"),
        (lambda: AnnealSettings(temperature=0.3, quench_steps=-1), "quench_steps must be"),
        (lambda: AnnealSettings(temperature=0.3, max_force=0.0), "max_force must be a finite"),
        (lambda: HoppingSettings(budget=0), "budget must be an integer >= 1, got 0"),
        (lambda: HoppingSettings(rho_0=-0.5), r"rho_0 must be a number in \[0, 1\)"),
        (lambda: HoppingSettings(anneal_steps=-1), "anneal_steps must be an integer >= 0"),
        (lambda: HoppingSettings(acceptance_temperature=0), "acceptance_temperature must be"),
        (lambda: HoppingSettings(seed=-1), "seed must be an integer >= 0"),
    ],
)  # fmt: skip
def test_bad_settings_are_rejected_when_made_naming_the_setting_and_its_range(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_runs_without_annealing_steps_are_valid_settings():
    assert AnnealSettings(steps=0, hot_steps=5, noise_std=0.0).steps == 0  # a plain quench
    assert HoppingSettings(anneal_steps=0).noise_std > 0  # plain basin hopping


def test_a_settings_object_and_keywords_give_the_same_run():
    lj7 = LennardJonesCluster(7)
    settings = AnnealSettings(replicas=3, steps=40, temperature=0.3, seed=2)
    by_object = anneal(lj7, settings)
    by_keywords = anneal(lj7, replicas=3, steps=40, temperature=0.3, seed=2)
    assert by_object.settings == by_keywords.settings == settings
    assert torch.equal(by_object.energies, by_keywords.energies)
    reseeded = anneal(lj7, settings, seed=3)  # keywords change the object's fields
    assert reseeded.settings == AnnealSettings(replicas=3, steps=40, temperature=0.3, seed=3)
    assert not torch.equal(reseeded.positions, by_object.positions)
    walk = HoppingSettings(replicas=2, budget=400, stop_at_minimum=False, seed=1)
    hops = annealed_hopping(lj7, walk)
    assert hops.settings == walk
    again = annealed_hopping(lj7, replicas=2, budget=400, stop_at_minimum=False, seed=1)
    assert torch.equal(hops.energies, again.energies) and hops.hops == again.hops


def test_write_xyz_is_atomic_and_readable(tmp_path):
    path = tmp_path / "two.xyz"
    write_xyz(path, icosahedron()[None].repeat(2, 1, 1), [-44.3, -44.2], "Ar", "LJ13")
    lines = path.read_text().splitlines()
    assert lines[0] == "13" and lines[1].startswith("energy=-44.300000000") and len(lines) == 30
    assert lines[2].split()[0] == "Ar"
    assert [p.name for p in tmp_path.iterdir()] == ["two.xyz"]  # no temporary file left


def test_the_force_cap_keeps_every_replica_of_a_large_batch_bounded():
    """Without the cap, a step that is too long for close collisions throws replicas out by
    many orders of magnitude (detected over the whole run); with it, none diverges."""
    lj13 = LennardJonesCluster(13)
    defaults = anneal(lj13, replicas=1024, steps=400, temperature=0.5, seed=3, quench_steps=0)
    assert not defaults.diverged.any()
    assert defaults.peak_temperature.max() < 10 * 0.5
    kwargs = dict(replicas=256, steps=400, lr=2e-3, temperature=0.5, seed=3, quench_steps=0)
    uncapped = anneal(lj13, max_force=None, **kwargs)
    thrown = uncapped.diverged
    assert 0 < int(thrown.sum()) < 256
    assert torch.equal(
        thrown, (uncapped.peak_temperature > 20 * 0.5) | (uncapped.peak_radius > lj13.escape_radius)
    )
    assert uncapped.peak_temperature.max() > 1e10  # runaways, not warm replicas
    # The plotted temperature is robust: the median ignores the runaways, a mean would not.
    assert uncapped.trace_temperature.max() < 1.0 < uncapped.peak_temperature.mean()
    capped = anneal(lj13, **kwargs)
    assert not capped.diverged.any()
    assert capped.peak_radius.max() < lj13.escape_radius


def test_lbfgs_direction_is_the_two_loop_recursion():
    def two_loop(g, s, y, scale):  # Nocedal and Wright, Algorithm 7.4, one row at a time
        out = []
        for gb, sb, yb, h0 in zip(g, s, y, scale):
            pairs = [(si, yi) for si, yi in zip(sb, yb) if si.any()]
            q, alphas = gb.clone(), []
            for si, yi in reversed(pairs):
                alphas.append(si.dot(q) / si.dot(yi))
                q -= alphas[-1] * yi
            r = h0 * q
            for (si, yi), alpha in zip(pairs, reversed(alphas)):
                r += si * (alpha - yi.dot(r) / si.dot(yi))
            out.append(-r)
        return torch.stack(out)

    gen = seeded(7)
    a = torch.randn(4, 9, 9, generator=gen, dtype=torch.float64)
    hessians = a @ a.transpose(1, 2) + 9 * torch.eye(9, dtype=torch.float64)
    s = torch.randn(4, 5, 9, generator=gen, dtype=torch.float64)
    y = torch.einsum("bij,bmj->bmi", hessians, s)
    s[1, :2] = y[1, :2] = 0  # two empty slots
    s[2] = y[2] = 0  # no history: steepest descent scaled by H_0
    g = torch.randn(4, 9, generator=gen, dtype=torch.float64)
    scale = torch.rand(4, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(lbfgs_direction(g, s, y, scale), two_loop(g, s, y, scale))
    torch.testing.assert_close(lbfgs_direction(g, s, y, scale)[2], -scale[2] * g[2])


def test_lbfgs_reaches_the_same_minima_as_fire_in_fewer_evaluations():
    lj13 = LennardJonesCluster(13)
    shake = torch.randn(8, 13, 3, generator=seeded(8), dtype=torch.float64)
    near = icosahedron()[None] + 0.05 * shake
    quick, slow = lbfgs(lj13, near, fmax=1e-6), fire(lj13, near, fmax=1e-6)
    assert quick.converged.all() and (quick.fmax < 1e-6).all()
    torch.testing.assert_close(quick.energies, torch.full((8,), GLOBAL_MINIMA[13]).double(),
                               atol=1e-6, rtol=0)  # fmt: skip
    torch.testing.assert_close(quick.energies, slow.energies, atol=1e-8, rtol=0)
    assert quick.evaluations.sum() < slow.evaluations.sum() / 2
    thomson = ThomsonProblem(12)
    charges = lbfgs(thomson, thomson.random_positions(8, generator=seeded(4)), fmax=1e-7,
                    max_displacement=0.05)  # fmt: skip
    assert charges.energies.min().item() == pytest.approx(MINIMAL_ENERGIES[12], abs=1e-7)
    torch.testing.assert_close(charges.positions.norm(dim=-1), torch.ones(8, 12).double())


class Counted:
    """A potential that counts the replicas it evaluates, wrapped around another."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def energy_and_gradient(self, positions):
        self.calls += positions.shape[0]
        return self.inner.energy_and_gradient(positions)


def test_every_evaluation_is_counted():
    start = LennardJonesCluster(19).random_positions(6, generator=seeded(9))
    for quench in (fire, lbfgs):
        counted = Counted(LennardJonesCluster(19))
        assert int(quench(counted, start, fmax=1e-3).evaluations.sum()) == counted.calls
    counted = Counted(LennardJonesCluster(13))
    result = anneal(counted, replicas=5, steps=60, temperature=0.3, fmax=1e-3)
    assert int(result.evaluations.sum()) == counted.calls
    counted = Counted(LennardJonesCluster(13))
    hopping = annealed_hopping(counted, replicas=3, budget=1500, stop_at_minimum=False, seed=1)
    assert hopping.total_evaluations == counted.calls == hopping.trace_evaluations[-1]
    assert hopping.total_evaluations >= 1500 > hopping.trace_evaluations[-2]
    assert hopping.hops == len(hopping.trace_evaluations) - 1


@pytest.mark.parametrize("atoms", [7, 10, 13])
def test_annealed_hopping_finds_the_tabulated_minimum_and_stops_there(atoms):
    result = annealed_hopping(LennardJonesCluster(atoms), replicas=4, budget=20_000, seed=0)
    assert result.first_hit_evaluations is not None
    assert result.best_energy == pytest.approx(GLOBAL_MINIMA[atoms], abs=1e-3)
    assert result.first_hit_evaluations == result.total_evaluations  # stopped at the hit
    walker = result.first_hit_by_replica[result.best_index]
    assert 0 < walker <= result.evaluations[result.best_index]
    assert not result.diverged.any()
    again = annealed_hopping(LennardJonesCluster(atoms), replicas=4, budget=20_000, seed=0)
    assert torch.equal(again.energies, result.energies)


def hide_the_experiments_extra(monkeypatch):
    for name in EXPERIMENTS_EXTRA:
        monkeypatch.setitem(sys.modules, name, None)  # import machinery: "not installed"


def test_saving_without_matplotlib_writes_the_structures(tmp_path, monkeypatch):
    hide_the_experiments_extra(monkeypatch)
    result = anneal(LennardJonesCluster(5), replicas=3, steps=20, temperature=0.3)
    paths = result.save(tmp_path)
    assert sorted(p.name for p in paths) == ["best.xyz", "replicas.xyz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.xyz", "replicas.xyz"]


def test_the_physics_library_does_not_import_matplotlib():
    # matplotlib comes with the [experiments] extra; the library works with torch and numpy.
    code = "import sys, coolmomentum.physics.cli; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_anneal_command_reports_the_gap_and_writes_structure_and_plot(tmp_path, capsys):
    argv = ["anneal", "lj", "--atoms", "7", "--replicas", "8", "--steps", "300", "--seed", "1",
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "LJ7: 8 replicas, 300 steps" in out
    assert f"best known minimum {GLOBAL_MINIMA[7]:.6f}" in out and "gap" in out
    assert re.search(r"reached by \d/8 replicas", out)
    assert "diverged replicas: none (kT above 10 or a particle farther than" in out
    assert err == ""  # no progress bar when stdout is not a terminal
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["anneal.png", "best.xyz", "replicas.xyz"]
    assert (run / "anneal.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "best.xyz").read_text().splitlines()[0] == "7"


def test_anneal_command_runs_the_librarys_defaults_with_the_problems_start_kt(tmp_path, capsys):
    argv = ["anneal", "lj", "--atoms", "7", "--replicas", "4", "--steps", "50", "--seed", "1",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    result = anneal(LennardJonesCluster(7), replicas=4, steps=50, seed=1, temperature=0.5)
    lowest = "  ".join(f"{e:.6f}" for e in result.energies.sort().values.tolist())
    assert f"lowest energies: {lowest}\n" in out
    assert f"noise_std {result.settings.random_force_std:.4g} (start kT 0.5)" in out


def test_anneal_command_needs_no_extra_and_says_the_plot_is_skipped(tmp_path, monkeypatch, capsys):
    hide_the_experiments_extra(monkeypatch)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # a terminal asks for progress
    argv = ["anneal", "lj", "--atoms", "5", "--replicas", "2", "--steps", "20",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "LJ5: 2 replicas, 20 steps" in out
    assert "no plot: matplotlib is not installed" in out
    assert err == ""  # no progress bar without tqdm
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.xyz", "replicas.xyz"]


def test_progress_bar_where_tqdm_is_installed(capsys):
    pytest.importorskip("tqdm")
    anneal(LennardJonesCluster(5), replicas=2, steps=20, temperature=0.3, progress=True)
    assert "lowest energy" in capsys.readouterr().err


def test_anneal_command_thomson_with_explicit_noise(tmp_path, capsys):
    argv = ["anneal", "thomson", "--charges", "40", "--replicas", "2", "--steps", "50",
            "--noise-std", "0.5", "--schedule", "linear-temperature", "--out", str(tmp_path)]
    assert main(argv) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "Thomson40" in out and "noise_std 0.5" in out
    assert "no best known minimum is tabulated for Thomson40" in out


def test_hopping_command_reports_the_first_hit(tmp_path, capsys):
    argv = ["anneal", "lj", "--atoms", "9", "--method", "hopping", "--replicas", "2",
            "--budget", "20000", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "LJ9: annealed hopping, 2 replicas" in out
    assert re.search(r"first reached the best known minimum after [\d,]+ evaluations", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.xyz", "hopping.png", "replicas.xyz"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["lj", "--atoms", "1"], "--atoms must be an integer >= 2, got 1"),
        (["thomson", "--charges", "1"], "--charges must be an integer >= 2"),
        (["lj", "--atoms", "5", "--replicas", "0"], "--replicas must be an integer >= 1"),
        (["lj", "--atoms", "5", "--steps", "-1"], "--steps must be an integer >= 0"),
        (["lj", "--atoms", "5", "--lr", "0"], "--lr must be a finite number > 0"),
        (["lj", "--atoms", "5", "--temperature", "-1"], "--temperature must be a finite number"),
        (["lj", "--atoms", "5", "--rho-0", "1"], "--rho-0 must be a number in [0, 1)"),
        (["lj", "--atoms", "5", "--max-force", "-5"], "--max-force must be a finite number"),
        (["lj", "--atoms", "5", "--fmax", "nan"], "--fmax must be a finite number > 0"),
        (["lj", "--atoms", "5", "--confine-radius", "0"], "--confine-radius must be"),
        (["lj", "--atoms", "5", "--steps", "10", "--hot-steps", "10"], "--hot-steps must be <"),
        (["lj", "--atoms", "5", "--budget", "100"], "--budget does not apply to --method anneal"),
        (["lj", "--atoms", "5", "--method", "hopping", "--budget", "0"], "--budget must be"),
        (["lj", "--atoms", "5", "--method", "hopping", "--hot-steps", "3"], "--hot-steps does"),
        (["lj", "--atoms", "5", "--method", "hopping", "--step", "-1"], "--step must be"),
    ],
)
def test_bad_anneal_arguments_are_one_error_line_and_exit_code_2(argv, message, capsys):
    assert main(["anneal", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"coolmomentum: error: {message}") and err.count("\n") == 1


def test_anneal_command_rejects_both_noise_and_temperature():
    with pytest.raises(SystemExit):
        main(["anneal", "lj", "--atoms", "5", "--noise-std", "1", "--temperature", "0.3"])
