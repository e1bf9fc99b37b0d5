"""A run's directory: its configuration, its metrics and the checkpoints it resumes from.

::

    config.json          the resolved configuration (and the world size)
    metrics.jsonl        one line per evaluation
    checkpoint.pt        the latest state: model, optimizer, weight average, metrics, and
                         the training stretch in progress when it was written mid-way
    checkpoint.prev.pt   the state before it

Every file is written to a temporary name, synced and renamed (and the folder synced), so a
run killed at any moment leaves complete files behind. A checkpoint loads with
``torch.load(..., weights_only=True)`` and carries a SHA-256 checksum of its contents, so
that damage inside tensor data (which would load silently) is found. :func:`open_run_dir`
falls back to the previous checkpoint when the latest cannot be read, says so, and refuses
a checkpoint written by another configuration with the settings that differ.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from coolmomentum._io import atomic_write, leftovers
from coolmomentum.errors import CheckpointWriteError

from .config import NOT_IDENTITY, ConfigError
from .optimizers import canonical_settings

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "METRICS",
    "PREVIOUS",
    "checksum",
    "load_metrics",
    "open_run_dir",
    "save",
]

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
CHECKSUM = "sha256"


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    """The settings a resumed run must share with the run it continues (its optimizer's as
    this version records them, whichever version wrote the checkpoint)."""
    identity = {k: v for k, v in config.items() if k not in NOT_IDENTITY}
    identity["runs"] = [canonical_settings(run) for run in identity.get("runs", [])]
    return identity


def checksum(state: Any) -> str:
    """SHA-256 over every value of a checkpoint (tensors by dtype, shape and bytes)."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(f"tensor {t.dtype} {tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            digest.update(f"dict {len(value)}".encode())
            for key in sorted(value, key=repr):
                feed(key)
                feed(value[key])
        elif isinstance(value, list | tuple):
            digest.update(f"{type(value).__name__} {len(value)}".encode())
            for item in value:
                feed(item)
        else:
            digest.update(f"{type(value).__name__} {value!r}".encode())

    feed(state)
    return digest.hexdigest()


def save(run_dir: Path, state: dict[str, Any]) -> None:
    """Write the checkpoint (the latest one becomes the previous), then its metrics."""
    buffer = io.BytesIO()
    torch.save({**state, CHECKSUM: checksum(state)}, buffer)
    try:
        atomic_write(run_dir / CHECKPOINT, buffer.getvalue(), previous=run_dir / PREVIOUS)
        atomic_write(run_dir / METRICS, "".join(json.dumps(m) + "\n" for m in state["metrics"]))
    except OSError as e:
        raise CheckpointWriteError(
            f"cannot write the checkpoint in {run_dir} ({e.strerror or e}); the previous one is "
            f"intact: free space or fix the folder, then rerun with --resume"
        ) from None


def _read(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``, or a ValueError saying why it cannot be used."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"it is cut short or not a checkpoint ({reason})") from None
    except Exception as e:  # unpickling refused what the file holds
        raise ValueError(f"it holds data that is not a checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or CHECKSUM not in state:
        raise ValueError("it has no checksum (not written by this version, or damaged)")
    stored = state.pop(CHECKSUM)
    if checksum(state) != stored:
        raise ValueError("its contents do not match their checksum: bytes were changed")
    return state


def open_run_dir(
    run_dir: Path, config: dict[str, Any], resume: bool, log: Callable[[str], None] = print
) -> dict[str, Any] | None:
    """Create ``run_dir`` and record ``config``; returns the checkpoint to resume from, if any.

    A checkpoint already there needs ``resume`` and the same configuration (but for where
    things are: data, device, output folder, workers). If the latest checkpoint cannot be
    read, the previous one is used, and ``log`` says so; if neither can, a
    :class:`ConfigError` names them and the ways out. Temporary files that a killed write
    left behind are removed (``log`` says how many).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    stale = [p for name in (CHECKPOINT, METRICS, CONFIG) for p in leftovers(run_dir / name)]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log(f"removed {len(stale)} temporary file(s) that a write interrupted in {run_dir} left")
    paths = [p for p in (run_dir / CHECKPOINT, run_dir / PREVIOUS) if p.exists()]
    checkpoint = None
    if paths and not resume:
        raise ConfigError(
            f"{paths[0]} exists: pass --resume to continue that run, or choose another --out "
            f"directory"
        )
    if resume and not paths:
        log(f"no checkpoint in {run_dir}: starting a new run")
    problems = []
    for path in paths:
        try:
            checkpoint = _read(path)
        except ValueError as e:
            problems.append(f"{path}: {e}")
            log(f"cannot resume from {path}: {e}")
            continue
        if problems:
            log(f"resuming from the previous checkpoint, {path}")
        break
    if paths and checkpoint is None:
        raise ConfigError(
            f"no checkpoint of {run_dir} can be read ({'; '.join(problems)}): restore a copy "
            f"of {CHECKPOINT}, or remove {' and '.join(p.name for p in paths)} to start the run "
            f"afresh"
        )
    if checkpoint is not None:
        saved, now = _identity(checkpoint["config"]), _identity(config)
        if saved != now:
            diffs = [
                f"{k}: {saved.get(k)!r} in the checkpoint, {now.get(k)!r} now"
                for k in sorted(set(saved) | set(now))
                if saved.get(k) != now.get(k)
            ]
            raise ConfigError(
                f"{run_dir / CHECKPOINT} was written by another configuration "
                f"({'; '.join(diffs)}): rerun with the same settings to resume, or choose "
                f"another --out"
            )
    atomic_write(run_dir / CONFIG, json.dumps(config, indent=2))
    return checkpoint


def load_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The metrics of the run in ``run_dir``, one dict per evaluation ([] when none yet)."""
    path = run_dir / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
