"""The ``coolmomentum`` command (also ``python -m coolmomentum``).

Two clients of the library register their commands side by side: the experiment harness
(``compare``, ``train``, ``report``) and the physics front (``anneal``). Every handler returns
an exit code; a :class:`~coolmomentum.errors.UsageError` (a bad setting) or a
:class:`~coolmomentum.errors.RunError` (a run that diverged or could not write its checkpoint)
becomes one ``coolmomentum: error:`` line and status 2, a
:class:`~coolmomentum.errors.Preempted` run status 75.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .errors import Preempted, RunError, UsageError

__all__ = ["build_parser", "check_extra", "main"]

EXIT_USAGE = 2
EXIT_PREEMPTED = 75  # sysexits' EX_TEMPFAIL: stopped with a checkpoint, resumable
EXIT_INTERRUPTED = 130

# The import names of the packages of the [experiments] extra (pyproject.toml), which the
# harness's commands use for plots, progress bars, images and baselines. The core install
# lacks them.
EXPERIMENTS_EXTRA = ("matplotlib", "tqdm", "PIL", "schedulefree")
EXTRAS = {"experiments": EXPERIMENTS_EXTRA}


def check_extra(command: str, extra: str | None) -> None:
    """Raise a UsageError naming ``extra`` if one of its packages is not installed
    (``None``: the command needs only the core install)."""
    if extra is None:
        return
    missing = [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(
            f"coolmomentum {command} needs the [{extra}] extra ({', '.join(missing)} "
            f'missing): pip install "coolmomentum[{extra}]"'
        )


def build_parser() -> argparse.ArgumentParser:
    from .experiments.cli import register as register_experiments
    from .physics.cli import register as register_physics

    parser = argparse.ArgumentParser(
        prog="coolmomentum",
        description="CoolMomentum experiments: train networks and anneal potentials.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _register(commands, register_experiments, extra="experiments")
    _register(commands, register_physics, extra=None)
    return parser


def _register(commands: Any, register: Callable[[Any], object], extra: str | None) -> None:
    """Add a client's commands, each marked with the extra it needs (``None``: none)."""
    known = set(commands.choices)
    register(commands)
    for name in commands.choices.keys() - known:
        commands.choices[name].set_defaults(needs_extra=extra)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_extra(args.command, args.needs_extra)
        status: int = args.func(args)
        return status
    except (UsageError, RunError) as e:
        print(f"coolmomentum: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Preempted as e:
        print(f"coolmomentum: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        print("coolmomentum: interrupted; rerun with --resume to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
