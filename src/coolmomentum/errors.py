"""The error the command line reports on one line: input that the user can correct."""

from __future__ import annotations

__all__ = ["Preempted", "UsageError"]


class UsageError(Exception):
    """A setting, file or combination that cannot be used, with what to do instead.

    The ``coolmomentum`` command prints it as ``coolmomentum: error: <message>`` and exits
    with status 2; every other exception is a bug and keeps its traceback.
    """


class Preempted(Exception):
    """A run stopped by SIGTERM or SIGUSR1 after writing a checkpoint; ``--resume`` continues
    it. The command exits with status 75 (``EX_TEMPFAIL``: try again)."""
