"""The ``anneal`` command: ``anneal lj --atoms 38 ...`` and ``anneal thomson --charges 32 ...``.

:func:`register` adds it to an ``argparse`` subparsers object; the parsed namespace's ``func``
runs it (``args.func(args)``) and returns the exit code.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from .anneal import anneal
from .lj import LennardJonesCluster
from .minimize import Potential
from .thomson import ThomsonProblem

__all__ = ["register", "run"]

# Per problem: the starting kT (above the LJ clusters' melting, about 0.3; for charges,
# enough to swap neighbours) and the integration step lr = dt**2.
_DEFAULTS = {"lj": {"temperature": 0.5, "lr": 1e-3}, "thomson": {"temperature": 0.1, "lr": 1e-3}}


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``anneal`` subcommand (with ``lj`` and ``thomson``) to ``subparsers``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--replicas", type=int, default=64, help="independent copies (batched)")
    common.add_argument("--steps", type=int, default=5000, help="annealing steps (0: quench only)")
    common.add_argument("--lr", type=float, help="integration step dt**2 (default per problem)")
    common.add_argument("--rho-0", type=float, default=0.99, help="starting momentum coefficient")
    common.add_argument(
        "--schedule",
        default="exponential",
        choices=["exponential", "exponential-temperature", "linear-temperature", "constant"],
    )
    common.add_argument("--hot-steps", type=int, default=0, help="steps held at rho_0 first")
    noise = common.add_mutually_exclusive_group()
    noise.add_argument("--noise-std", type=float, help="random force per coordinate")
    noise.add_argument(
        "--temperature", type=float, help="starting kT, sets --noise-std (default per problem)"
    )
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    common.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    common.add_argument("--fmax", type=float, default=1e-3, help="quench force threshold")
    common.add_argument("--quench-steps", type=int, default=10_000)
    common.add_argument("--tolerance", type=float, default=1e-3, help="gap that counts as a hit")
    common.add_argument("--out", default="anneal-out", help="directory for the XYZ files and plot")

    parser = subparsers.add_parser(
        "anneal",
        help="anneal many-particle potentials (LJ clusters, Thomson problem)",
        description="Anneal random starts with CoolMomentum and Langevin noise, then quench.",
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


def _potential(args: argparse.Namespace) -> Potential:
    if args.problem == "lj":
        if args.confine_radius is None:
            return LennardJonesCluster(args.atoms)
        return LennardJonesCluster(args.atoms, confine_radius=args.confine_radius)
    return ThomsonProblem(args.charges)


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``anneal`` command, print the summary and write the files; returns 0."""
    potential = _potential(args)
    defaults = _DEFAULTS[args.problem]
    lr = defaults["lr"] if args.lr is None else args.lr
    temperature = args.temperature
    if args.noise_std is None and temperature is None:
        temperature = defaults["temperature"]
    result = anneal(
        potential,
        replicas=args.replicas,
        steps=args.steps,
        lr=lr,
        rho_0=args.rho_0,
        schedule=args.schedule,
        hot_steps=args.hot_steps,
        noise_std=args.noise_std,
        temperature=temperature,
        seed=args.seed,
        device=args.device,
        dtype=getattr(torch, args.dtype),
        fmax=args.fmax,
        quench_steps=args.quench_steps,
        progress=sys.stdout.isatty(),
    )
    paths = result.save(args.out)
    s = result.settings
    print(
        f"{result.label}: {s['replicas']} replicas, {s['steps']} steps, schedule {s['schedule']}, "
        f"lr {s['lr']:g}, rho_0 {s['rho_0']:g}, noise_std {s['noise_std']:.4g} "
        f"(start kT {s['start_temperature']:.4g}), {result.seconds:.1f} s"
    )
    lowest = result.energies.sort().values[:5].tolist()
    print("lowest energies: " + "  ".join(f"{e:.6f}" for e in lowest))
    if result.known_minimum is not None:
        hits = result.successes(args.tolerance)
        print(
            f"best known minimum {result.known_minimum:.6f}: gap {result.gap():.6f}; "
            f"reached by {hits}/{len(result.energies)} replicas "
            f"({100 * (hits or 0) / len(result.energies):.1f}%, tolerance {args.tolerance:g})"
        )
    else:
        print(f"no best known minimum is tabulated for {result.label}")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
