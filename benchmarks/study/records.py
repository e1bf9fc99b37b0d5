"""What a finished trial leaves: :class:`TrialResult`, stored as ``done/<trial id>.json`` in
the plan's folder (the format earlier versions of the study wrote, so their folders resume
and ``--reuse`` finds their trials), and the statistics the tables print."""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Archive",
    "TrialResult",
    "load_results",
    "mean_std",
    "std",
    "write_json",
]


@dataclass(frozen=True)
class TrialResult:
    """A finished trial: its final accuracy and loss on the split it was evaluated on (None
    when it diverged), the accuracy at each evaluation, the loss over the whole training set
    in evaluation mode at the end (final runs), and its seconds of training."""

    id: str
    trial: dict[str, Any]  # the trial's fields (:class:`.plan.Trial`)
    final_acc: float | None
    final_loss: float | None
    acc_per_epoch: list[float]  # per evaluation (a tuning trial has one)
    train_loss: float | None
    running_train_loss: float | None
    seconds: float
    wall_seconds_this_session: float
    diverged: str | None = None  # the error, where the loss stopped being finite
    reused_from: str | None = None  # the plan folder it was taken from (``--reuse``)

    def to_json(self) -> dict[str, Any]:
        optional = ("diverged", "reused_from")  # left out when None
        out = {k: v for k, v in dataclasses.asdict(self).items()
               if k != "trial" and not (k in optional and v is None)}  # fmt: skip
        return {"id": out.pop("id"), "run": self.trial, **out}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrialResult:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(trial=data["run"], **{k: v for k, v in data.items() if k in fields})

    def reused(self, source: str) -> TrialResult:
        return dataclasses.replace(self, reused_from=source)


def write_json(path: Path, data: Any) -> None:
    from coolmomentum._io import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(data, indent=1))


def load_results(work: Path) -> dict[str, TrialResult]:
    """The finished trials of a plan folder, by id."""
    done = work / "done"
    if not done.is_dir():
        return {}
    return {p.stem: TrialResult.from_json(json.loads(p.read_text()))
            for p in sorted(done.glob("*.json"))}  # fmt: skip


class Archive:
    """The record of a study that survives a new machine: every finished trial, its settings
    and results (no checkpoints), and the wall time of all the invocations so far, in one
    file small enough to commit. A study reads it first, so that it continues with an empty
    folder of runs, and rewrites it as each trial ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        data = json.loads(path.read_text()) if path.is_file() else {}
        self.results = {t["id"]: TrialResult.from_json(t) for t in data.get("trials", [])}
        self.earlier_seconds = float(data.get("wall_seconds", 0.0))
        self.started = time.time()

    def wall_seconds(self) -> float:
        """The wall time of the earlier invocations and of this one so far."""
        return self.earlier_seconds + time.time() - self.started

    def save(self, results: dict[str, TrialResult]) -> None:
        trials = [results[i].to_json() for i in sorted(results)]
        write_json(self.path, {"wall_seconds": self.wall_seconds(), "trials": trials})


def std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def mean_std(values: list[float | None], digits: int = 4) -> str:
    """Mean ± std of the values that exist; the missing ones (diverged runs) are counted."""
    done = [v for v in values if v is not None]
    diverged = f" ({len(values) - len(done)} diverged)" if len(done) < len(values) else ""
    if not done:
        return "diverged"
    return f"{statistics.mean(done):.{digits}f} ± {std(done):.{digits}f}{diverged}"
