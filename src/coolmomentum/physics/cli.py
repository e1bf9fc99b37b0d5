"""The ``anneal`` command: ``anneal lj --atoms 38 ...`` and ``anneal thomson --charges 32 ...``.

:func:`register` adds it to an ``argparse`` subparsers object; the parsed namespace's ``func``
runs it (``args.func(args)``) and returns the exit code. The flags make the method's settings,
:class:`.anneal.AnnealSettings` or :class:`.hopping.HoppingSettings`, which check themselves; a
flag left out takes the settings' default, or the problem's where that differs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

import torch

from .. import _plot
from ..errors import UsageError
from ..schedules import SCHEDULES
from ._batch import check_positive
from .anneal import AnnealResult, AnnealSettings, anneal
from .hopping import HoppingResult, HoppingSettings, annealed_hopping
from .lj import LennardJonesCluster
from .minimize import Potential
from .thomson import ThomsonProblem

__all__ = ["register", "run"]

METHODS = ("anneal", "hopping")

# Where a problem's settings differ from the library's defaults. Annealing: the starting kT is
# above the LJ clusters' melting (about 0.3) or, for charges, enough to swap neighbours.
# Hopping among the charges' minima: steps, temperatures and force threshold at their energy
# scale. The command quenches for up to 10,000 steps with either method.
_PROBLEM_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("anneal", "lj"): dict(temperature=0.5),
    ("anneal", "thomson"): dict(temperature=0.1),
    ("hopping", "lj"): dict(quench_steps=10_000),
    ("hopping", "thomson"): dict(
        temperature=0.01, fmax=1e-4, step=0.1, acceptance_temperature=0.05, quench_steps=10_000
    ),
}

# The flags that set a field of the method's settings, named as the field is.
_SETTING_FLAGS = (
    "replicas", "steps", "lr", "rho_0", "schedule", "hot_steps", "noise_std", "temperature",
    "max_force", "budget", "step", "acceptance_temperature", "seed", "fmax", "quench_steps",
)  # fmt: skip
# The one flag named otherwise: --steps is the length of each hop's anneal for hopping.
_HOPPING_FIELDS = {"steps": "anneal_steps"}
# The arguments of the potentials, which are flags too.
_PROBLEM_FLAGS = ("atoms", "charges", "confine_radius")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``anneal`` subcommand (with ``lj`` and ``thomson``) to ``subparsers``."""
    common = _common_flags()
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


def _common_flags() -> argparse.ArgumentParser:
    """The flags of both problems. A setting's flag defaults to ``None``: left out."""
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
    common.add_argument("--hot-steps", type=int, help="steps held at rho_0 first (0)")
    noise = common.add_mutually_exclusive_group()
    noise.add_argument("--noise-std", type=float, help="random force per coordinate")
    noise.add_argument(
        "--temperature", type=float, help="starting kT, sets --noise-std (default per problem)"
    )
    common.add_argument(
        "--max-force", type=float,
        help="cap on each particle's force during the dynamics (100; 0: no cap)",
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
    common.add_argument("--seed", type=int, help="seeds every random stream of the run (0)")
    common.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    common.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    common.add_argument("--fmax", type=float, help="quench force threshold (1e-3; 1e-2)")
    common.add_argument("--quench-steps", type=int, help="most steps per quench (10000)")
    common.add_argument("--tolerance", type=float, default=1e-3, help="gap that counts as a hit")
    common.add_argument("--out", default="anneal-out", help="directory for the XYZ files and plot")
    return common


def _settings(args: argparse.Namespace) -> AnnealSettings | HoppingSettings:
    """The method's settings: the flags given over the problem's defaults."""
    hopping = args.method == "hopping"
    kind = HoppingSettings if hopping else AnnealSettings
    fields = {f.name for f in dataclasses.fields(kind)}
    values = dict(_PROBLEM_DEFAULTS[args.method, args.problem])
    if args.noise_std is not None:
        values.pop("temperature", None)  # the noise is given instead of the starting kT
    for flag in _SETTING_FLAGS:
        value = getattr(args, flag)
        field = _HOPPING_FIELDS.get(flag, flag) if hopping else flag
        if value is not None and field not in fields:
            raise UsageError(f"{_flag(flag)} does not apply to --method {args.method}")
        if value is not None:
            values[field] = value
    if values.get("max_force") == 0:
        values["max_force"] = None
    if hopping:
        values["tolerance"] = args.tolerance
    else:  # an anneal's tolerance only decides which replicas the summary counts as hits
        check_positive(args.tolerance, "tolerance")
    return kind(**values)


def _potential(args: argparse.Namespace) -> Potential:
    if args.problem == "lj":
        if args.confine_radius is None:
            return LennardJonesCluster(args.atoms)
        return LennardJonesCluster(args.atoms, confine_radius=args.confine_radius)
    return ThomsonProblem(args.charges)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _usage_error(error: ValueError) -> UsageError:
    """The library's message names the bad argument first ("lr must be ..."): the command's
    names the flag that set it instead."""
    name, _, rest = str(error).partition(" ")
    flags = {field: flag for flag, field in _HOPPING_FIELDS.items()}
    flags.update((flag, flag) for flag in (*_SETTING_FLAGS, *_PROBLEM_FLAGS, "tolerance"))
    if name not in flags:
        return UsageError(str(error))
    return UsageError(f"{_flag(flags[name])} {rest}")


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``anneal`` command, print the summary and write the files; returns 0."""
    try:
        potential = _potential(args)
        settings = _settings(args)
    except ValueError as e:
        raise _usage_error(e) from None
    dtype = getattr(torch, args.dtype)
    result: AnnealResult | HoppingResult
    if isinstance(settings, HoppingSettings):
        result = annealed_hopping(potential, settings, device=args.device, dtype=dtype)
        _print_hopping(result)
    else:
        result = anneal(
            potential, settings, device=args.device, dtype=dtype, progress=sys.stdout.isatty()
        )
        _print_anneal(result, args.tolerance)
    paths = result.save(args.out)
    print("wrote " + ", ".join(str(p) for p in paths))
    if not _plot.available():
        print("no plot: matplotlib is not installed (pip install 'coolmomentum[experiments]')")
    return 0


def _print_anneal(result: AnnealResult, tolerance: float) -> None:
    s = result.settings
    print(
        f"{result.label}: {s.replicas} replicas, {s.steps} steps, schedule {s.schedule}, "
        f"lr {s.lr:g}, rho_0 {s.rho_0:g}, noise_std {s.random_force_std:.4g} "
        f"(start kT {s.start_temperature:.4g}), {result.seconds:.1f} s"
    )
    _print_energies(result.energies, result.known_minimum, result.label, tolerance)
    _print_diverged(result.diverged, s.temperature_bound, result.radius_bound)


def _print_hopping(result: HoppingResult) -> None:
    s = result.settings
    spent = result.total_evaluations
    print(
        f"{result.label}: annealed hopping, {s.replicas} replicas, {result.hops} hops of "
        f"{s.anneal_steps} annealing steps (start kT {s.temperature:.4g}, rho_0 "
        f"{s.rho_0:g}, {s.schedule}) and an L-BFGS quench, Metropolis T "
        f"{s.acceptance_temperature:g}, acceptance {result.acceptance:.2f}; {spent:,} of "
        f"{s.budget:,} evaluations in {result.seconds:.1f} s "
        f"({spent / max(result.seconds, 1e-9):,.0f}/s)"
    )
    _print_energies(result.energies, result.known_minimum, result.label, s.tolerance)
    if result.known_minimum is not None:
        hit = result.first_hit_evaluations
        print(
            "never reached the best known minimum"
            if hit is None
            else f"first reached the best known minimum after {hit:,} evaluations "
            "(summed over replicas)"
        )
    _print_diverged(result.diverged, s.temperature_bound, result.radius_bound)


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


def _print_diverged(diverged: torch.Tensor, temperature_bound: float, radius_bound: float) -> None:
    count = int(diverged.sum())
    bounds = (
        f"kT above {temperature_bound:.4g} or a particle farther than "
        f"{radius_bound:.4g} from its replica's centre at some step"
    )
    if count:
        shown = ", ".join(str(i) for i in diverged.nonzero().flatten()[:10].tolist())
        print(f"diverged replicas: {count} ({shown}{', ...' if count > 10 else ''}): {bounds}")
    else:
        print(f"diverged replicas: none ({bounds})")
