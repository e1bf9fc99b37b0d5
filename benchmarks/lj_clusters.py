"""LJ clusters: CoolMomentum's annealed basin hopping against basin hopping as physicists run it.

Every method searches for the putative global minimum of an N-atom Lennard-Jones cluster
(Cambridge Cluster Database) from random starts, all drawn from one distribution (atoms
uniform in a sphere of number density 0.2, no two nearer than 0.9 sigma), and every
energy-and-gradient evaluation is counted:

* ``coolmomentum-hopping``: :func:`coolmomentum.physics.annealed_hopping`, R replicas as one
  batch (displace, a short CoolMomentum anneal, batched L-BFGS quench, Metropolis);
* ``scipy-basinhopping``: ``scipy.optimize.basinhopping`` with GMIN-like settings: L-BFGS-B
  with the analytic gradient, the same Metropolis temperature, a random step of 0.4 adapted
  toward 50 % acceptance (scipy's own adaptation), atoms outside the container sphere put back
  on it after each step as GMIN does, and a stop at the target energy through the callback;
* ``ase-basinhopping``: ``ase.optimize.basin.BasinHopping`` with ASE's ``LennardJones``
  calculator, set so that its energies are the database's (see ``ase_trial``);
* ``coolmomentum-anneal``: plain annealing restarts (:func:`coolmomentum.physics.anneal`,
  the linear-temperature schedule from kT 0.5, ``150 N`` steps, then a FIRE quench),
  repeated until the budget is spent.

Definitions. A *trial* is one independent run of a method from its own random start(s), with
a budget of evaluations summed over all its replicas. A *hit* is a quenched energy within
1e-3 of the database value. A trial's *evaluations to hit* are the evaluations it spent, over
all its replicas, up to the end of the quench (for the batched methods: of the hop or anneal,
in which every replica took part) that first hit; a trial that spends its budget without a
hit is *censored*, kept as ``null`` and counted as longer than any hit.

Each finished (method, size, trial) is saved at once (atomically) to
``benchmarks/results/lj_clusters.json``, so an interrupted run continues where it stopped
when the same command is run again; ``lj_clusters.md`` is rewritten from it. Threads are
pinned to one (torch and the BLAS under scipy). Run from the repository root:

    nohup python benchmarks/lj_clusters.py > lj_clusters.log 2>&1 &
    python benchmarks/lj_clusters.py --rates      # evaluations per second, on a quiet machine
    python benchmarks/lj_clusters.py --variants   # what each hop should do, on LJ26

``--variants`` measures the choice of the hop itself: 128 walkers of ``annealed_hopping``
(``stop_at_minimum=False``) per variant, each walker an independent run; the evaluations per
walker hit are the walkers' evaluations up to their first hit (or all, for those that never
hit) summed, divided by the walkers that hit.
"""

# One thread everywhere, set before numpy is imported: an unpinned BLAS under load was
# measured up to 40 times slower here, and wall-clock numbers must be comparable.
import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import fcntl  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from coolmomentum._io import atomic_write  # noqa: E402
from coolmomentum.physics import LennardJonesCluster, anneal, annealed_hopping  # noqa: E402

TOLERANCE = 1e-3
METROPOLIS_TEMPERATURE = 0.8  # Wales and Doye's value for LJ clusters (J. Phys. Chem. A 1997)
FMAX = 1e-2  # every quench: largest per-atom force (scipy: largest gradient component)
BUDGETS = {13: 10_000, 19: 30_000, 26: 200_000, 38: 1_000_000, 55: 200_000}
HOPPING_REPLICAS = {13: 4, 19: 8, 26: 16, 38: 64, 55: 64}
# ASE's FIRE quenches in pure Python (about 1 ms per evaluation); LJ38's 30 trials would take
# a day. Plain annealing has no hit on LJ38 within thousands of evaluations per replica, and
# 30 trials of 10**6 evaluations each would take the time of every other run together.
SIZES = {
    "coolmomentum-hopping": (13, 19, 26, 38, 55),
    "scipy-basinhopping": (13, 19, 26, 38, 55),
    "ase-basinhopping": (13, 19, 26),
    "coolmomentum-anneal": (13, 19, 26),
}
RESULTS = Path(__file__).parent / "results"
TRIALS = 30

# The Wales group's GMIN basin hopping on LJ38 from random starts, as published in their
# tutorial repository wales-group/examples, LJ38/02_Calculating_MFET (README and
# expected_output/noSYM/hits): T = 1.0, step 0.4 adapted toward 50 % acceptance, 100 runs.
GMIN_LJ38 = {
    "runs": 100,
    "hits": 100,
    "mean_quenches": 2825,
    "mean_evaluations": 387_785,
    "median_evaluations": 237_214,
    "quartile_evaluations": (85_444, 524_285),
    "mean_evaluations_symmetry_moves": 59_632,
}


def derived_seed(*keys: int) -> int:
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint32)[0])


def trial_seed(atoms: int, trial: int) -> int:
    """The seed of a trial: the same start distribution for every method, independent trials."""
    return derived_seed(atoms, trial)


def random_start(atoms: int, seed: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    return LennardJonesCluster(atoms).random_positions(1, generator=generator)[0].numpy()


def lj_energy_and_gradient(atoms: int) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """The untruncated LJ energy and gradient of a flat coordinate vector, in numpy (what a
    scipy user writes; faster than a torch call on one small cluster)."""
    i, j = np.triu_indices(atoms, 1)

    def energy_and_gradient(flat: np.ndarray) -> tuple[float, np.ndarray]:
        x = flat.reshape(atoms, 3)
        diff = x[i] - x[j]
        inv_r2 = 1.0 / np.einsum("pk,pk->p", diff, diff)
        inv_r6 = inv_r2**3
        pair = (24.0 * inv_r6 * (2.0 * inv_r6 - 1.0) * inv_r2)[:, None] * diff
        gradient = np.zeros((atoms, 3))
        np.add.at(gradient, i, -pair)
        np.add.at(gradient, j, pair)
        return float(4.0 * np.sum(inv_r6 * (inv_r6 - 1.0))), gradient.ravel()

    return energy_and_gradient


class _Stop(Exception):
    """Ends an ASE run from inside: at a hit or when the budget is spent."""


class Trial:
    """Bookkeeping of one trial that quenches one minimum at a time: counts evaluations,
    notes the first hit, and says when to stop."""

    def __init__(self, atoms: int, budget: int) -> None:
        self.target = LennardJonesCluster(atoms).known_minimum
        self.budget = budget
        self.evaluations = 0
        self.evals_to_hit: int | None = None
        self.best = math.inf

    def quenched(self, energy: float) -> bool:
        """Record a quenched energy; ``True`` when the trial is over."""
        self.best = min(self.best, energy)
        assert self.target is not None
        if self.evals_to_hit is None and abs(energy - self.target) <= TOLERANCE:
            self.evals_to_hit = self.evaluations
        return self.evals_to_hit is not None or self.evaluations >= self.budget


def scipy_trial(atoms: int, budget: int, seed: int) -> dict[str, Any]:
    from scipy.optimize import basinhopping

    trial = Trial(atoms, budget)
    energy_and_gradient = lj_energy_and_gradient(atoms)
    radius = LennardJonesCluster(atoms).confine_radius
    assert radius is not None
    rng = np.random.default_rng(seed)

    def counted(flat: np.ndarray) -> tuple[float, np.ndarray]:
        trial.evaluations += 1
        return energy_and_gradient(flat)

    class ContainerStep:
        """A uniform random step; atoms beyond the container radius from the centre are put
        back on the sphere (GMIN's container). ``stepsize`` is adapted by scipy."""

        stepsize = 0.4

        def __call__(self, flat: np.ndarray) -> np.ndarray:
            x = flat.reshape(atoms, 3) + rng.uniform(-self.stepsize, self.stepsize, (atoms, 3))
            centre = x.mean(0)
            distance = np.linalg.norm(x - centre, axis=1)
            outside = distance > radius
            x[outside] = centre + (x[outside] - centre) * (radius / distance[outside])[:, None]
            return x.ravel()

    def callback(x: np.ndarray, energy: float, accepted: bool) -> bool:
        # Called for every quenched minimum, the first one included (whose answer scipy
        # ignores: the next call stops the run).
        return trial.quenched(energy)

    basinhopping(
        counted,
        random_start(atoms, seed).ravel(),
        niter=10**9,
        T=METROPOLIS_TEMPERATURE,
        take_step=ContainerStep(),
        minimizer_kwargs=dict(method="L-BFGS-B", jac=True, options=dict(gtol=FMAX)),
        callback=callback,
        target_accept_rate=0.5,
        rng=rng,
    )
    return dict(evals_to_hit=trial.evals_to_hit, evaluations=trial.evaluations, best=trial.best)


def ase_trial(atoms: int, budget: int, seed: int) -> dict[str, Any]:
    """ASE's basin hopping, with every default that would miss the database changed: the LJ
    cutoff (3 sigma by default, which shifts and truncates the energy) is beyond the cluster,
    ``fmax`` (0.1 by default, far too loose for a 1e-3 hit) is the shared ``FMAX``, and the
    temperature (100 K in eV, about 0.009 epsilon: effectively zero) is the shared one. What
    cannot be matched: the step ``dr = 0.4`` is never adapted, there is no container (ASE
    only re-centres the centre of mass), and the quench is ASE's FIRE."""
    from ase import Atoms
    from ase.calculators.lj import LennardJones
    from ase.optimize.basin import BasinHopping

    trial = Trial(atoms, budget)

    class CountingLJ(LennardJones):
        def calculate(self, *args: Any, **kwargs: Any) -> None:
            trial.evaluations += 1
            super().calculate(*args, **kwargs)

    class StoppingBasinHopping(BasinHopping):
        def get_energy(self, positions: np.ndarray) -> float:
            energy = float(super().get_energy(positions))
            if trial.quenched(energy):
                raise _Stop
            return energy

    cluster = Atoms(f"Ar{atoms}", positions=random_start(atoms, seed))
    cluster.calc = CountingLJ(sigma=1.0, epsilon=1.0, rc=1e3, smooth=False)
    np.random.seed(seed % 2**32)  # ASE's moves and acceptance draw from numpy's global state
    try:
        hopping = StoppingBasinHopping(
            cluster, temperature=METROPOLIS_TEMPERATURE, fmax=FMAX, dr=0.4, logfile=None,
            trajectory=None, optimizer_logfile=None, local_minima_trajectory=None,
        )  # fmt: skip
        hopping.run(10**9)
    except _Stop:
        pass
    return dict(evals_to_hit=trial.evals_to_hit, evaluations=trial.evaluations, best=trial.best)


def hopping_trial(atoms: int, budget: int, seed: int) -> dict[str, Any]:
    result = annealed_hopping(
        LennardJonesCluster(atoms),
        replicas=HOPPING_REPLICAS[atoms],
        budget=budget,
        acceptance_temperature=METROPOLIS_TEMPERATURE,
        fmax=FMAX,
        tolerance=TOLERANCE,
        seed=seed,
    )
    hit = result.first_hit_evaluations
    return dict(
        evals_to_hit=hit if hit is not None and hit <= budget else None,
        evaluations=result.total_evaluations,
        best=result.best_energy,
        diverged=int(result.diverged.sum()),
    )


def anneal_trial(atoms: int, budget: int, seed: int) -> dict[str, Any]:
    """Annealing restarts of ``HOPPING_REPLICAS`` replicas until the budget is spent."""
    potential = LennardJonesCluster(atoms)
    trial = Trial(atoms, budget)
    restart = 0
    while True:
        result = anneal(
            potential, replicas=HOPPING_REPLICAS[atoms], steps=150 * atoms,
            schedule="linear-temperature", temperature=0.5, fmax=FMAX, trace_every=150 * atoms,
            seed=derived_seed(seed, restart),
        )  # fmt: skip
        restart += 1
        trial.evaluations += int(result.evaluations.sum())
        if trial.quenched(result.best_energy):
            break
    hit = trial.evals_to_hit
    return dict(
        evals_to_hit=hit if hit is not None and hit <= budget else None,
        evaluations=trial.evaluations,
        best=trial.best,
    )


METHODS: dict[str, Callable[[int, int, int], dict[str, Any]]] = {
    "coolmomentum-hopping": hopping_trial,
    "scipy-basinhopping": scipy_trial,
    "ase-basinhopping": ase_trial,
    "coolmomentum-anneal": anneal_trial,
}


def replicas_of(method: str, atoms: int) -> int:
    return HOPPING_REPLICAS[atoms] if method.startswith("coolmomentum") else 1


def load(path: Path) -> dict[str, Any]:
    if path.exists():
        saved: dict[str, Any] = json.loads(path.read_text())
        return saved
    return {"records": []}


@contextlib.contextmanager
def updating(path: Path) -> Iterator[dict[str, Any]]:
    """The results file, read under a lock (on its folder: the file itself is replaced by
    each write) and written back atomically when the block ends, so that runs of different
    methods can share one file, each changing only its own part."""
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        results = load(path)
        yield results
        atomic_write(path, json.dumps(results, indent=1) + "\n")
    finally:
        os.close(folder)


def record_of(results: dict[str, Any], method: str, atoms: int) -> dict[str, Any]:
    for record in results["records"]:
        if record["method"] == method and record["atoms"] == atoms:
            return record
    record = dict(
        method=method, atoms=atoms, replicas=replicas_of(method, atoms), budget=BUDGETS[atoms],
        trials=0, hits=0, evals_to_hit=[], evaluations=[], seconds=[], best_energy=[],
    )  # fmt: skip
    results["records"].append(record)
    return record


def run_trials(args: argparse.Namespace) -> None:
    with updating(args.json) as results:
        results["settings"] = settings()
    for atoms in args.sizes:
        for trial in range(args.trials):
            for method in args.methods:
                if atoms not in SIZES[method]:
                    continue
                with updating(args.json) as results:
                    done = record_of(results, method, atoms)["trials"] > trial
                if done:
                    continue  # finished in an earlier run
                started = time.perf_counter()
                outcome = METHODS[method](atoms, BUDGETS[atoms], trial_seed(atoms, trial))
                seconds = time.perf_counter() - started
                with updating(args.json) as results:
                    record = record_of(results, method, atoms)
                    record["trials"] += 1
                    record["hits"] += outcome["evals_to_hit"] is not None
                    record["evals_to_hit"].append(outcome["evals_to_hit"])
                    record["evaluations"].append(outcome["evaluations"])
                    record["seconds"].append(round(seconds, 3))
                    record["best_energy"].append(outcome["best"])
                    if "diverged" in outcome:
                        record["diverged"] = record.get("diverged", 0) + outcome["diverged"]
                print(
                    f"LJ{atoms} {method:<22} trial {trial:>2}: hit after "
                    f"{outcome['evals_to_hit']} of {outcome['evaluations']} evaluations, "
                    f"best {outcome['best']:.6f}, {seconds:.1f} s",
                    flush=True,
                )
    write_report(load(args.json), args.md)


def measure_rates(args: argparse.Namespace) -> None:
    """Evaluations per second of each method and size over trials of about
    ``--rate-seconds``: run when the machine is otherwise idle."""
    load_average = os.getloadavg()[0]
    rates: dict[str, Any] = {}
    for atoms in args.sizes:
        for method in args.methods:
            if atoms not in SIZES[method]:
                continue
            spent, seconds, trial = 0, 0.0, 0
            while seconds < args.rate_seconds:  # whole trials, each ending at a hit or its budget
                started = time.perf_counter()
                outcome = METHODS[method](atoms, BUDGETS[atoms], trial_seed(atoms, 1000 + trial))
                seconds += time.perf_counter() - started
                spent += outcome["evaluations"]
                trial += 1
            rates[f"{method} LJ{atoms}"] = dict(
                evaluations_per_second=spent / seconds, evaluations=spent, seconds=seconds,
                load_average=load_average,
            )  # fmt: skip
            print(f"LJ{atoms} {method:<22} {spent / seconds:8.0f} evaluations/s", flush=True)
    with updating(args.json) as results:
        results.setdefault("rates", {}).update(rates)
        results["rates_measured"] = dict(
            load_average_at_start=load_average, load_average_at_end=os.getloadavg()[0],
            time=time.ctime(),
        )  # fmt: skip
    write_report(results, args.md)


# (label, displacement half-width, annealing steps per hop, starting kT, rho_0)
VARIANTS = (
    ("displace, quench (plain basin hopping)", 0.4, 0, 0.1, 0.5),
    ("displace, anneal 10 steps from kT 0.1 at rho_0 0.5, quench (the default)", 0.4, 10, 0.1, 0.5),
    ("displace, anneal 10 steps from kT 0.1 at rho_0 0.9, quench", 0.4, 10, 0.1, 0.9),
    ("displace, anneal 20 steps from kT 0.1 at rho_0 0.5, quench", 0.4, 20, 0.1, 0.5),
    ("displace, anneal 10 steps from kT 0.3 at rho_0 0.5, quench", 0.4, 10, 0.3, 0.5),
    ("displace, anneal 30 steps from kT 0.3 at rho_0 0.9, quench", 0.4, 30, 0.3, 0.9),
    ("reheat to kT 0.3 and cool over 100 steps at rho_0 0.9, quench (no displacement)",
     0.0, 100, 0.3, 0.9),
)  # fmt: skip
WALKERS = 128


def measure_variants(args: argparse.Namespace) -> None:
    for atoms in args.sizes:
        for label, step, anneal_steps, temperature, rho_0 in VARIANTS:
            key = f"LJ{atoms}: {label}"
            if key in load(args.json).get("variants", {}):
                continue
            started = time.perf_counter()
            result = annealed_hopping(
                LennardJonesCluster(atoms), replicas=WALKERS, budget=WALKERS * args.walker_budget,
                step=step, anneal_steps=anneal_steps, temperature=temperature, rho_0=rho_0,
                acceptance_temperature=METROPOLIS_TEMPERATURE, fmax=FMAX, tolerance=TOLERANCE,
                stop_at_minimum=False, seed=derived_seed(atoms, 999),
            )  # fmt: skip
            hits = result.first_hit_by_replica >= 0
            exposure = torch.where(hits, result.first_hit_by_replica, result.evaluations)
            variant = dict(
                atoms=atoms, step=step, anneal_steps=anneal_steps, temperature=temperature,
                rho_0=rho_0, walkers=WALKERS, walker_budget=args.walker_budget,
                walkers_hit=int(hits.sum()),
                evaluations_per_walker_hit=float(exposure.sum()) / max(int(hits.sum()), 1),
                evaluations_per_hop=result.total_evaluations / WALKERS / max(result.hops, 1),
                seconds=time.perf_counter() - started,
            )  # fmt: skip
            with updating(args.json) as results:
                results.setdefault("variants", {})[key] = variant
            print(f"{key}: {variant}", flush=True)
    write_report(load(args.json), args.md)


def settings() -> dict[str, Any]:
    return dict(
        tolerance=TOLERANCE, metropolis_temperature=METROPOLIS_TEMPERATURE, fmax=FMAX,
        budgets=BUDGETS, hopping_replicas=HOPPING_REPLICAS, threads=torch.get_num_threads(),
        omp_num_threads=os.environ["OMP_NUM_THREADS"], torch=torch.__version__,
        python=platform.python_version(), machine=platform.machine(),
    )  # fmt: skip


def censored_quantile(record: dict[str, Any], q: float) -> float:
    """The ``q`` quantile of evaluations to hit over all trials, censored ones counted as
    ``inf`` (longer than any hit): the order statistic at rank ``ceil(q * trials)``."""
    values = sorted(math.inf if v is None else v for v in record["evals_to_hit"])
    return values[max(math.ceil(q * len(values)) - 1, 0)]


def _evals(value: float, budget: int) -> str:
    return f"> {budget:,}" if math.isinf(value) else f"{value:,.0f}"


def _not_run(results: dict[str, Any]) -> list[str]:
    """A line naming the methods and sizes of the plan without a finished trial."""
    started = {(r["method"], r["atoms"]) for r in results["records"] if r["trials"]}
    missing = [f"{method} LJ{atoms}" for method, sizes in SIZES.items() for atoms in sizes
               if atoms in (13, 19, 26, 38) and (method, atoms) not in started]  # fmt: skip
    return [f"Not run (no trial finished): {', '.join(missing)}.", ""] if missing else []


def write_report(results: dict[str, Any], path: Path) -> None:
    rates = results.get("rates", {})
    rows = []
    for record in sorted(results["records"], key=lambda r: (r["atoms"], r["method"])):
        if not record["trials"]:
            continue
        budget = record["budget"]
        quartiles = [censored_quantile(record, q) for q in (0.25, 0.5, 0.75)]
        spent = sum(record["evaluations"])
        seconds = sum(record["seconds"])
        hits = record["hits"]
        trials = record["trials"]
        partial = f" (partial: {trials} of {TRIALS} trials)" if trials < TRIALS else ""
        rate = rates.get(f"{record['method']} LJ{record['atoms']}")
        quiet = "" if rate is None else f"{spent / hits / rate['evaluations_per_second']:.2f}"
        rows.append(
            f"| {record['atoms']} | {record['method']} | {record['replicas']} | {budget:,} | "
            f"{hits}/{record['trials']}{partial} | {_evals(quartiles[1], budget)} | "
            f"{_evals(quartiles[0], budget)} to {_evals(quartiles[2], budget)} | "
            f"{spent / max(hits, 1):,.0f}{'' if hits else ' (no hit)'} | "
            f"{spent / seconds:,.0f} | {seconds / max(hits, 1):.2f} | {quiet} |"
        )
    lines = [
        "# LJ clusters: annealed basin hopping against basin hopping",
        "",
        "Trials from random starts (atoms uniform in a sphere of number density 0.2, at least "
        "0.9 apart); a hit is a quenched energy within 1e-3 of the Cambridge Cluster Database "
        "value. Evaluations to hit: energy-and-gradient evaluations summed over the trial's "
        "replicas up to the first hit, median and quartiles over all trials with the censored "
        "ones (no hit within the budget) counted as longer than any hit (`> budget`). "
        "Evaluations per hit: all evaluations the trials spent, censored ones included, per "
        "hit. Seconds are wall-clock on the shared 2-core machine (one thread per process): "
        "*measured* during the run, under whatever else ran; *quiet* from the evaluations per "
        "second of `--rates` on an otherwise idle machine (blank where not measured).",
        "",
        "| N | method | replicas | budget | hits | evals to hit, median | quartiles | "
        "evals per hit | evals/s (measured) | s per hit (measured) | s per hit (quiet) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        f"| 38 | GMIN (published) | 1 | none | {GMIN_LJ38['hits']}/{GMIN_LJ38['runs']} | "
        f"{GMIN_LJ38['median_evaluations']:,} | {GMIN_LJ38['quartile_evaluations'][0]:,} to "
        f"{GMIN_LJ38['quartile_evaluations'][1]:,} | {GMIN_LJ38['mean_evaluations']:,} (mean) "
        "| | | |",
        "",
        "GMIN row: the Wales group's figures for LJ38 from random starts, T = 1.0, step 0.4 "
        "adapted toward 50 % acceptance (tutorial repository `wales-group/examples`, "
        "`LJ38/02_Calculating_MFET`: README and `expected_output/noSYM/hits`): 100 of 100 runs "
        f"hit, mean first encounter {GMIN_LJ38['mean_quenches']:,} quenches = "
        f"{GMIN_LJ38['mean_evaluations']:,} energy+gradient calls, "
        f"{GMIN_LJ38['mean_evaluations_symmetry_moves']:,} with symmetry-adapted moves. "
        "Published, not rerun here.",
        "",
        *_not_run(results),
        "## Settings",
        "",
        "```json",
        json.dumps(results.get("settings", {}), indent=1),
        "```",
        "",
    ]
    if results.get("variants"):
        lines += [
            "## What a hop should do (`--variants`)",
            "",
            f"{WALKERS} independent walkers per variant, each with the budget below, Metropolis T "
            f"{METROPOLIS_TEMPERATURE}, L-BFGS quenches to fmax {FMAX}. Evaluations per walker "
            "hit: the walkers' evaluations up to their first hit (all of them for walkers "
            "that never hit), summed, per walker that hit (an estimate of the mean first "
            "encounter time of one walker).",
            "",
            "| N | hop | walker budget | walkers hit | evals per walker hit | evals per hop |",
            "|---|---|---|---|---|---|",
            *(
                f"| {v['atoms']} | {key.split(': ', 1)[1]} | {v['walker_budget']:,} | "
                f"{v['walkers_hit']}/{v['walkers']} | "
                f"{v['evaluations_per_walker_hit']:,.0f}{'' if v['walkers_hit'] else ' (none)'}"
                f" | {v['evaluations_per_hop']:.0f} |"
                for key, v in results["variants"].items()
            ),
            "",
        ]
    if "rates_measured" in results:
        lines += [
            f"Rates (`--rates`) measured {results['rates_measured']['time']} at load average "
            f"{results['rates_measured']['load_average_at_start']:.2f}.",
            "",
        ]
    atomic_write(path, "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[13, 19, 26, 38])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--trials", type=int, default=TRIALS)
    parser.add_argument("--rates", action="store_true", help="measure evaluations per second")
    parser.add_argument("--rate-seconds", type=float, default=20.0)
    parser.add_argument("--variants", action="store_true", help="compare hop variants")
    parser.add_argument("--walker-budget", type=int, default=6000, help="--variants: per walker")
    parser.add_argument("--json", type=Path, default=RESULTS / "lj_clusters.json")
    parser.add_argument("--md", type=Path, default=RESULTS / "lj_clusters.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    if args.rates:
        measure_rates(args)
    elif args.variants:
        measure_variants(args)
    else:
        run_trials(args)


if __name__ == "__main__":
    main()
