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
from collections.abc import Sequence

from .errors import Preempted, RunError, UsageError

__all__ = ["build_parser", "check_experiments_extra", "main"]

EXIT_USAGE = 2
EXIT_PREEMPTED = 75  # sysexits' EX_TEMPFAIL: stopped with a checkpoint, resumable
EXIT_INTERRUPTED = 130

# The import names of the packages of the [experiments] extra (pyproject.toml), which the
# commands use for plots, progress bars, images and baselines. The core install lacks them.
EXPERIMENTS_EXTRA = ("matplotlib", "tqdm", "PIL", "schedulefree")


def check_experiments_extra() -> None:
    """Raise a UsageError naming the extra if one of its packages is not installed."""
    missing = [name for name in EXPERIMENTS_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(
            f"the coolmomentum command needs the [experiments] extra ({', '.join(missing)} "
            f'missing): pip install "coolmomentum[experiments]"'
        )


def build_parser() -> argparse.ArgumentParser:
    from .experiments.cli import register as register_experiments
    from .physics.cli import register as register_physics

    parser = argparse.ArgumentParser(
        prog="coolmomentum",
        description="CoolMomentum experiments: train networks and anneal potentials.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    register_experiments(commands)
    register_physics(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_experiments_extra()
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
