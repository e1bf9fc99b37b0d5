"""A run's directory: its configuration, its metrics and the checkpoint it resumes from.

::

    config.json      the resolved configuration (and the world size)
    metrics.jsonl    one line per evaluation
    checkpoint.pt    model, optimizer, weight average and metrics at the last evaluation

Every file is written to a temporary name and renamed, so a run killed at any moment leaves
the last complete evaluation behind. The checkpoint loads with ``torch.load(...,
weights_only=True)``; one written by another configuration is refused with the settings
that differ.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from coolmomentum._io import atomic_write

from .config import NOT_IDENTITY, ConfigError

__all__ = ["CHECKPOINT", "CONFIG", "METRICS", "load_metrics", "open_run_dir", "save"]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
CONFIG = "config.json"


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    """The settings a resumed run must share with the run it continues."""
    return {k: v for k, v in config.items() if k not in NOT_IDENTITY}


def open_run_dir(run_dir: Path, config: dict[str, Any], resume: bool) -> dict[str, Any] | None:
    """Create ``run_dir`` and record ``config``; returns the checkpoint to resume from, if any.

    A checkpoint already there needs ``resume`` and the same configuration (but for where
    things are: data, device, output folder, workers).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CHECKPOINT
    checkpoint = None
    if path.exists():
        if not resume:
            raise ConfigError(
                f"{path} exists: pass --resume to continue that run, or choose another --out "
                f"directory"
            )
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        saved, now = _identity(checkpoint["config"]), _identity(config)
        if saved != now:
            diffs = [
                f"{k}: {saved.get(k)!r} in the checkpoint, {now.get(k)!r} now"
                for k in sorted(set(saved) | set(now))
                if saved.get(k) != now.get(k)
            ]
            raise ConfigError(
                f"{path} was written by another configuration ({'; '.join(diffs)}): rerun with "
                f"the same settings to resume, or choose another --out"
            )
    atomic_write(run_dir / CONFIG, json.dumps(config, indent=2))
    return checkpoint


def save(run_dir: Path, state: dict[str, Any]) -> None:
    """Write the checkpoint, then the metrics it holds (``state["metrics"]``)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(run_dir / CHECKPOINT, buffer.getvalue())
    atomic_write(run_dir / METRICS, "".join(json.dumps(m) + "\n" for m in state["metrics"]))


def load_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The metrics of the run in ``run_dir``, one dict per evaluation ([] when none yet)."""
    path = run_dir / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
