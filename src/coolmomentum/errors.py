"""The errors the command line reports on one line: input that the user can correct, and runs
that stopped for what happened while they ran."""

from __future__ import annotations

__all__ = ["CheckpointWriteError", "Diverged", "Preempted", "RunError", "UsageError"]


class UsageError(Exception):
    """A setting, file or combination that cannot be used, with what to do instead.

    The ``coolmomentum`` command prints it as ``coolmomentum: error: <message>`` and exits
    with status 2; every other exception is a bug and keeps its traceback.
    """


class RunError(Exception):
    """A run that had to stop for what happened while it ran, not for a setting: the message
    says what happened, what was kept and how to go on. The command prints it as
    ``coolmomentum: error: <message>`` and exits with status 2, as for a :class:`UsageError`.
    """


class Diverged(RunError):
    """The training loss stopped being finite: the run ends, its last checkpoint (taken
    before) is kept."""


class CheckpointWriteError(RunError):
    """A checkpoint could not be written (a full disk, a folder gone read-only): the previous
    one is intact."""


class Preempted(Exception):
    """A run stopped by SIGTERM or SIGUSR1 after writing a checkpoint; ``--resume`` continues
    it. The command exits with status 75 (``EX_TEMPFAIL``: try again)."""
