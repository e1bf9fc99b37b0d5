"""The ``anneal`` command: ``anneal lj --atoms 38 ...`` and ``anneal thomson --charges 32 ...``.

:func:`register` adds it to an ``argparse`` subparsers object; the parsed namespace's ``func``
runs it (``args.func(args)``) and returns the exit code.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from ..errors import UsageError
from ..schedules import SCHEDULES
from ._batch import check_count, check_positive
from .anneal import AnnealResult, anneal, can_plot
from .hopping import HoppingResult, annealed_hopping
from .lj import LennardJonesCluster
from .minimize import Potential
from .thomson import ThomsonProblem

__all__ = ["register", "run"]

METHODS = ("anneal", "hopping")

# Per method and problem, the settings a flag left out takes. Annealing: the starting kT is
# above the LJ clusters' melting (about 0.3) or, for charges, enough to swap neighbours.
# Hopping: the settings measured in benchmarks/lj_clusters.py (a short, cool anneal per hop).
_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("anneal", "lj"): dict(
        replicas=64, steps=5000, temperature=0.5, lr=1e-3, rho_0=0.99,
        schedule="exponential", fmax=1e-3,
    ),
    ("anneal", "thomson"): dict(
        replicas=64, steps=5000, temperature=0.1, lr=1e-3, rho_0=0.99,
        schedule="exponential", fmax=1e-3,
    ),
    ("hopping", "lj"): dict(
        replicas=16, steps=10, temperature=0.1, lr=1e-3, rho_0=0.5,
        schedule="linear-temperature", fmax=1e-2, budget=100_000, step=0.4,
        acceptance_temperature=0.8,
    ),
    ("hopping", "thomson"): dict(
        replicas=16, steps=10, temperature=0.01, lr=1e-3, rho_0=0.5,
        schedule="linear-temperature", fmax=1e-4, budget=100_000, step=0.1,
        acceptance_temperature=0.05,
    ),
}  # fmt: skip
_HOPPING_ONLY = ("budget", "step", "acceptance_temperature")
_ANNEAL_ONLY = ("hot_steps", "noise_std")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``anneal`` subcommand (with ``lj`` and ``thomson``) to ``subparsers``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--method", choices=METHODS, default="anneal",
        help="anneal: anneal random starts once, then quench; hopping: annealed basin "
        "hopping (a global optimizer) until --budget evaluations are spent",
    )  # fmt: skip
    common.add_argument("--replicas", type=int, help="independent copies, batched (64; 16)")
    common.add_argument(
        "--steps", type=int,
        help="annealing steps: of the run (5000; 0: quench only), or per hop (10)",
    )  # fmt: skip
    common.add_argument("--lr", type=float, help="integration step dt**2 (1e-3)")
    common.add_argument("--rho-0", type=float, help="starting momentum coefficient (0.99; 0.5)")
    common.add_argument("--schedule", choices=SCHEDULES, help="cooling schedule")
    common.add_argument("--hot-steps", type=int, default=0, help="steps held at rho_0 first")
    noise = common.add_mutually_exclusive_group()
    noise.add_argument("--noise-std", type=float, help="random force per coordinate")
    noise.add_argument(
        "--temperature", type=float, help="starting kT, sets --noise-std (default per problem)"
    )
    common.add_argument(
        "--max-force", type=float, default=100.0,
        help="cap on each particle's force during the dynamics (0: no cap)",
    )  # fmt: skip
    common.add_argument(
        "--budget", type=int, help="hopping: evaluations summed over replicas (100000)"
    )
    common.add_argument(
        "--step", type=float, help="hopping: first displacement half-width (0.4; 0: none)"
    )
    common.add_argument(
        "--acceptance-temperature", type=float, help="hopping: Metropolis temperature (0.8)"
    )
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    common.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    common.add_argument("--fmax", type=float, help="quench force threshold (1e-3; 1e-2)")
    common.add_argument("--quench-steps", type=int, default=10_000)
    common.add_argument("--tolerance", type=float, default=1e-3, help="gap that counts as a hit")
    common.add_argument("--out", default="anneal-out", help="directory for the XYZ files and plot")

    parser = subparsers.add_parser(
        "anneal",
        help="anneal many-particle potentials (LJ clusters, Thomson problem)",
        description="Anneal random starts with CoolMomentum and Langevin noise, then quench; "
        "or search for the global minimum by annealed basin hopping (--method hopping).",
    )
    problems = parser.add_subparsers(dest="problem", required=True, metavar="PROBLEM")
    lj = problems.add_parser("lj", parents=[common], help="Lennard-Jones cluster")
    lj.add_argument("--atoms", type=int, required=True)
    lj.add_argument(
        "--confine-radius", type=float, help="confining sphere radius (default: density 0.2)"
    )
    lj.set_defaults(func=run)
    thomson = problems.add_parser("thomson", parents=[common], help="charges on a sphere")
    thomson.add_argument("--charges", type=int, required=True)
    thomson.set_defaults(func=run)
    return parser


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings: the flags given over the method's defaults, each checked here so
    that a bad one is a :class:`UsageError` naming the flag."""
    defaults = _DEFAULTS[args.method, args.problem]
    given = {key: getattr(args, key) for key in (*defaults, *_HOPPING_ONLY, *_ANNEAL_ONLY)}
    misplaced = _ANNEAL_ONLY if args.method == "hopping" else _HOPPING_ONLY
    for key in misplaced:
        if given[key]:
            raise UsageError(f"{_flag(key)} does not apply to --method {args.method}")
    settings: dict[str, Any] = {
        key: defaults.get(key) if value is None else value for key, value in given.items()
    }
    if args.noise_std is not None:
        settings["temperature"] = None
    try:
        if args.problem == "lj":
            check_count(args.atoms, "--atoms", 2)
            if args.confine_radius is not None:
                check_positive(args.confine_radius, "--confine-radius")
        else:
            check_count(args.charges, "--charges", 2)
        check_count(settings["replicas"], "--replicas", 1)
        check_count(settings["steps"], "--steps", 0)
        check_count(args.quench_steps, "--quench-steps", 1)
        for key in ("lr", "fmax"):
            check_positive(settings[key], _flag(key))
        check_positive(args.tolerance, "--tolerance")
        check_positive(args.max_force, "--max-force", allow_zero=True)
        if args.noise_std is not None:
            check_positive(args.noise_std, "--noise-std", allow_zero=True)
        else:
            check_positive(settings["temperature"], "--temperature", allow_zero=True)
        if not 0.0 <= settings["rho_0"] < 1.0:
            raise ValueError(f"--rho-0 must be in [0, 1), got {settings['rho_0']!r}")
        if args.method == "hopping":
            check_count(settings["budget"], "--budget", 1)
            check_positive(settings["step"], "--step", allow_zero=True)
            check_positive(settings["acceptance_temperature"], "--acceptance-temperature")
        else:
            hot, steps = check_count(settings["hot_steps"], "--hot-steps", 0), settings["steps"]
            if settings["schedule"] != "constant" and 0 < steps <= hot:
                raise ValueError(
                    f"--hot-steps must be < --steps to leave steps to cool, got {hot} of {steps}"
                )
    except ValueError as e:
        raise UsageError(str(e)) from None
    return settings


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _potential(args: argparse.Namespace) -> Potential:
    if args.problem == "lj":
        if args.confine_radius is None:
            return LennardJonesCluster(args.atoms)
        return LennardJonesCluster(args.atoms, confine_radius=args.confine_radius)
    return ThomsonProblem(args.charges)


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``anneal`` command, print the summary and write the files; returns 0."""
    settings = _settings(args)
    potential = _potential(args)
    dynamics = dict(
        lr=settings["lr"], rho_0=settings["rho_0"], schedule=settings["schedule"],
        temperature=settings["temperature"], max_force=args.max_force or None,
        fmax=settings["fmax"], seed=args.seed, device=args.device,
        dtype=getattr(torch, args.dtype),
    )  # fmt: skip
    if args.method == "hopping":
        hopping = annealed_hopping(
            potential, replicas=settings["replicas"], budget=settings["budget"],
            step=settings["step"], anneal_steps=settings["steps"],
            acceptance_temperature=settings["acceptance_temperature"],
            quench_steps=args.quench_steps, tolerance=args.tolerance, **dynamics,
        )  # fmt: skip
        _print_hopping(hopping, args.tolerance)
        result: AnnealResult | HoppingResult = hopping
    else:
        annealed = anneal(
            potential, replicas=settings["replicas"], steps=settings["steps"],
            hot_steps=settings["hot_steps"], noise_std=args.noise_std,
            quench_steps=args.quench_steps, progress=sys.stdout.isatty(), **dynamics,
        )  # fmt: skip
        _print_anneal(annealed, args.tolerance)
        result = annealed
    paths = result.save(args.out)
    print("wrote " + ", ".join(str(p) for p in paths))
    if not can_plot():
        print("no plot: matplotlib is not installed (pip install 'coolmomentum[experiments]')")
    return 0


def _print_anneal(result: AnnealResult, tolerance: float) -> None:
    s = result.settings
    print(
        f"{result.label}: {s['replicas']} replicas, {s['steps']} steps, schedule {s['schedule']}, "
        f"lr {s['lr']:g}, rho_0 {s['rho_0']:g}, noise_std {s['noise_std']:.4g} "
        f"(start kT {s['start_temperature']:.4g}), {result.seconds:.1f} s"
    )
    _print_energies(result.energies, result.known_minimum, result.label, tolerance)
    _print_diverged(result.diverged, s)


def _print_hopping(result: HoppingResult, tolerance: float) -> None:
    s = result.settings
    spent = result.total_evaluations
    print(
        f"{result.label}: annealed hopping, {s['replicas']} replicas, {result.hops} hops of "
        f"{s['anneal_steps']} annealing steps (start kT {s['temperature']:.4g}, rho_0 "
        f"{s['rho_0']:g}, {s['schedule']}) and an L-BFGS quench, Metropolis T "
        f"{s['acceptance_temperature']:g}, acceptance {result.acceptance:.2f}; {spent:,} of "
        f"{s['budget']:,} evaluations in {result.seconds:.1f} s "
        f"({spent / max(result.seconds, 1e-9):,.0f}/s)"
    )
    _print_energies(result.energies, result.known_minimum, result.label, tolerance)
    if result.known_minimum is not None:
        hit = result.first_hit_evaluations
        print(
            "never reached the best known minimum"
            if hit is None
            else f"first reached the best known minimum after {hit:,} evaluations "
            "(summed over replicas)"
        )
    _print_diverged(result.diverged, s)


def _print_energies(
    energies: torch.Tensor, known: float | None, label: str, tolerance: float
) -> None:
    lowest = energies.sort().values[:5].tolist()
    print("lowest energies: " + "  ".join(f"{e:.6f}" for e in lowest))
    if known is None:
        print(f"no best known minimum is tabulated for {label}")
        return
    hits = int(((energies - known).abs() <= tolerance).sum())
    print(
        f"best known minimum {known:.6f}: gap {float(energies.min()) - known:.6f}; "
        f"reached by {hits}/{len(energies)} replicas "
        f"({100 * hits / len(energies):.1f}%, tolerance {tolerance:g})"
    )


def _print_diverged(diverged: torch.Tensor, settings: dict[str, Any]) -> None:
    count = int(diverged.sum())
    bounds = (
        f"kT above {settings['temperature_bound']:.4g} or a particle farther than "
        f"{settings['radius_bound']:.4g} from its replica's centre at some step"
    )
    if count:
        shown = ", ".join(str(i) for i in diverged.nonzero().flatten()[:10].tolist())
        print(f"diverged replicas: {count} ({shown}{', ...' if count > 10 else ''}): {bounds}")
    else:
        print(f"diverged replicas: none ({bounds})")
