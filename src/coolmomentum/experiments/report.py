"""The report of a comparison: a Markdown table and plots of every run on the same axes.

A run's metrics are one record per evaluation (:mod:`.loop`); each record's ``samples`` hold
``lr``, ``rho`` and the temperature every few dozen steps, so those curves show the cooling
within epochs. The evaluation set is the test set, or the validation split (keys ``val_*``).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from coolmomentum import _plot
from coolmomentum._io import atomic_write

__all__ = ["PLOTS", "table", "write_report"]

Runs = dict[str, list[dict[str, Any]]]

# (file name, metric key or "<eval>_acc" for the evaluation set's, y label, log scale,
# drawn from the per-step samples)
PLOTS = (
    ("train_loss.png", "train_loss", "training loss (running mean)", True, False),
    ("accuracy.png", "<eval>_acc", "{eval} accuracy", False, False),
    ("lr.png", "lr", "learning rate", True, True),
    ("rho.png", "rho", "momentum coefficient rho", False, True),
    ("temperature.png", "temperature", "temperature (mean v^2)", True, True),
)
REPORT = "report.md"
_SET_NAMES = {"test": "test", "val": "validation"}


def eval_set(runs: Runs) -> str:
    """``"val"`` when the runs were evaluated on a validation split, else ``"test"``."""
    return "val" if any(m and "val_acc" in m[0] for m in runs.values()) else "test"


def table(runs: Runs) -> list[str]:
    """The Markdown table of final and best results, a line per run."""
    name = eval_set(runs)
    optional = (  # columns shown only when some run measured them
        (f"{name}_top5", "final top-5"),
        (f"ema_{name}_acc", "final EMA acc"),
        (f"ema_{name}_top5", "final EMA top-5"),
        ("train_eval_loss", "final train loss (eval mode, whole set)"),
    )
    extra = [
        (key, header)
        for key, header in optional
        if any(m and m[-1].get(key) is not None for m in runs.values())
    ]
    skipped = {label: sum(m.get("skipped_steps", 0) for m in ms) for label, ms in runs.items()}
    if any(skipped.values()):
        extra.append(("skipped", "skipped steps (non-finite loss)"))
    header = (
        f"| run | epochs | final {name} acc | best {name} acc (epoch) | final train loss "
        f"| final {name} loss | s/evaluation |" + "".join(f" {h} |" for _, h in extra)
    )
    lines = [header, "|---|" + "---:|" * (6 + len(extra))]
    for label, metrics in runs.items():
        if not metrics:
            lines.append(f"| {label} | 0 |" + " - |" * (5 + len(extra)))
            continue
        last = {**metrics[-1], "skipped": skipped[label]}
        best = max(metrics, key=lambda m: m[f"{name}_acc"])
        cells = "".join(f" {_cell(last.get(key))} |" for key, _ in extra)
        lines.append(
            f"| {label} | {last['epoch']} | {last[f'{name}_acc']:.4f} "
            f"| {best[f'{name}_acc']:.4f} ({best['epoch']}) | {last['train_loss']:.4f} "
            f"| {last[f'{name}_loss']:.4f} "
            f"| {statistics.median(m['seconds'] for m in metrics):.1f} |{cells}"
        )
    return lines


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _points(metrics: list[dict[str, Any]], key: str, sampled: bool) -> list[tuple[float, Any]]:
    """``(epoch, value)`` of ``key`` per record, or per step sample."""
    if not sampled:
        return [(m["epoch"], m[key]) for m in metrics if m.get(key) is not None]
    steps_per_epoch = metrics[-1]["step"] / metrics[-1]["epoch"]
    return [
        (s["step"] / steps_per_epoch, s[key])
        for m in metrics
        for s in m.get("samples", ())
        if s.get(key) is not None
    ]


def _draw(runs: Runs, key: str, ylabel: str, log: bool, sampled: bool, path: Path) -> bool:
    """Draw ``key`` of every run on one axes into ``path``; False (and no file) when no run
    has a value of it."""
    curves = {label: _points(metrics, key, sampled) if metrics else []
              for label, metrics in runs.items()}  # fmt: skip
    values = [y for points in curves.values() for _, y in points]
    if not values:
        return False
    fig, ax = _plot.figure()
    for label, points in curves.items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
    if log and min(values) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    _plot.save_png(fig, path)
    return True


def write_report(out: Path, runs: Runs, title: str, description: str = "") -> Path:
    """Write ``report.md`` and the plots into ``out``; returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    name = eval_set(runs)
    lines = [f"# {title}", "", *([description, ""] if description else []), *table(runs), ""]
    for file, key, ylabel, log, sampled in PLOTS:
        key, ylabel = key.replace("<eval>", name), ylabel.format(eval=_SET_NAMES[name])
        if _draw(runs, key, ylabel, log, sampled, out / file):
            lines.append(f"![{ylabel}]({file})")
    lines.append("")
    path = out / REPORT
    atomic_write(path, "\n".join(lines))
    return path
