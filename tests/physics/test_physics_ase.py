"""``coolmomentum.physics.ase.CoolMomentum`` with ASE's own Lennard-Jones calculator."""

import numpy as np
import pytest
import torch

ase = pytest.importorskip("ase")
from ase import Atoms  # noqa: E402
from ase.calculators.lj import LennardJones  # noqa: E402
from ase.io import read  # noqa: E402
from ase.io.trajectory import Trajectory  # noqa: E402

from coolmomentum.physics import GLOBAL_MINIMA, LennardJonesCluster, anneal  # noqa: E402
from coolmomentum.physics.ase import CoolMomentum  # noqa: E402
from coolmomentum.physics.lj import lj_energy_and_forces, random_cluster  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def lj_atoms(positions):
    atoms = Atoms(f"Ar{len(positions)}", positions=positions)
    # Reduced units, and a cutoff far beyond the cluster: untruncated, unshifted LJ.
    atoms.calc = LennardJones(epsilon=1.0, sigma=1.0, rc=1000.0, smooth=False)
    return atoms


def random_lj13(seed):
    return random_cluster(1, 13, 2.5, generator=torch.Generator().manual_seed(seed))[0].numpy()


def test_ase_lennard_jones_matches_the_native_energy_and_forces():
    x = random_cluster(3, 13, 2.5, generator=torch.Generator().manual_seed(0))
    energy, forces = lj_energy_and_forces(x)
    for k in range(3):
        atoms = lj_atoms(x[k].numpy())
        assert atoms.get_potential_energy() == pytest.approx(energy[k].item(), abs=1e-9)
        np.testing.assert_allclose(atoms.get_forces(), forces[k].numpy(), atol=1e-8)


def test_annealing_lowers_the_energy_of_a_random_lj13_and_converges(tmp_path):
    atoms = lj_atoms(random_lj13(1))
    start = atoms.get_potential_energy()
    seen = []
    opt = CoolMomentum(
        atoms, lr=1e-3, total_steps=1500, temperature=0.3, seed=0, logfile=None,
        trajectory=str(tmp_path / "anneal.traj"),
    )  # fmt: skip
    opt.attach(lambda: seen.append(atoms.get_potential_energy()), interval=100)
    converged = opt.run(fmax=1e-2, steps=6000)
    assert converged and opt.cooling_done
    final = atoms.get_potential_energy()
    assert final < start - 10
    assert final < -39.0  # a low minimum of LJ13, well below a random quench's typical -39.5
    assert np.abs(atoms.get_forces()).max() < 1e-2
    assert len(seen) == opt.get_number_of_steps() // 100 + 1
    with Trajectory(str(tmp_path / "anneal.traj")) as traj:
        assert len(traj) == opt.get_number_of_steps() + 1
        assert traj[-1].get_potential_energy() == pytest.approx(final)
    assert GLOBAL_MINIMA[13] <= final + 1e-6


def test_same_seed_same_path_and_restart_file_resumes_exactly(tmp_path):
    def run(steps, restart=None, atoms=None):
        atoms = atoms or lj_atoms(random_lj13(2))
        opt = CoolMomentum(atoms, restart=restart, lr=1e-3, total_steps=200, noise_std=2.0,
                           seed=3, logfile=None)  # fmt: skip
        opt.run(fmax=1e-9, steps=steps)
        return atoms

    straight = run(40)
    again = run(40)
    np.testing.assert_array_equal(straight.positions, again.positions)

    restart = str(tmp_path / "restart.json")
    half = run(15, restart=restart)
    resumed = run(25, restart=restart, atoms=half)
    np.testing.assert_allclose(resumed.positions, straight.positions, rtol=0, atol=1e-12)


def test_restart_restores_the_step_as_the_optimizer_keeps_it(tmp_path):
    restart = str(tmp_path / "restart.json")
    first = CoolMomentum(lj_atoms(random_lj13(3)), restart=restart, total_steps=20, noise_std=1.0,
                         seed=0, logfile=None)  # fmt: skip
    first.run(fmax=1e-9, steps=7)
    resumed = CoolMomentum(lj_atoms(random_lj13(3)), restart=restart, total_steps=20,
                           noise_std=1.0, seed=0, logfile=None)  # fmt: skip
    saved, loaded = first._opt.state_dict(), resumed._opt.state_dict()
    for state in (saved, loaded):
        assert state["param_groups"][0]["step"].dtype == torch.int64
    assert int(loaded["param_groups"][0]["step"]) == 7
    # The schedule says when the noise stops: rho reaches 0 after total_steps.
    resumed.run(fmax=1e-9, steps=12)
    assert not resumed.cooling_done
    resumed.run(fmax=1e-9, steps=1)
    assert resumed.cooling_done


def test_native_anneal_and_ase_agree_on_what_they_found(tmp_path):
    result = anneal(LennardJonesCluster(13), replicas=16, steps=800, temperature=0.3, seed=2)
    result.save(tmp_path)
    best = read(str(tmp_path / "best.xyz"))
    best.calc = LennardJones(epsilon=1.0, sigma=1.0, rc=1000.0, smooth=False)
    assert best.get_potential_energy() == pytest.approx(result.best_energy, abs=1e-6)
    assert len(read(str(tmp_path / "replicas.xyz"), index=":")) == 16
