"""The report of a comparison: a Markdown table and plots of every run on the same axes."""

from __future__ import annotations

import io
import statistics
from pathlib import Path
from typing import Any

from coolmomentum._io import atomic_write

__all__ = ["PLOTS", "table", "write_report"]

# (file name, metric key, y label, log scale)
PLOTS = (
    ("train_loss.png", "train_loss", "training loss", True),
    ("test_accuracy.png", "test_acc", "test accuracy", False),
    ("rho.png", "rho", "momentum coefficient rho", False),
    ("temperature.png", "temperature", "temperature (mean v^2)", True),
)
REPORT = "report.md"


# Columns shown only when some run measured them: (metric key, header).
_OPTIONAL = (
    ("test_top5", "final top-5"),
    ("ema_test_acc", "final EMA acc"),
    ("ema_test_top5", "final EMA top-5"),
)


def table(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The Markdown table of final and best results, a line per run."""
    extra = [
        (key, header)
        for key, header in _OPTIONAL
        if any(m and m[-1].get(key) is not None for m in runs.values())
    ]
    header = (
        "| run | epochs | final test acc | best test acc (epoch) | final train loss "
        "| final test loss | s/epoch |" + "".join(f" {h} |" for _, h in extra)
    )
    lines = [header, "|---|" + "---:|" * (6 + len(extra))]
    for label, metrics in runs.items():
        if not metrics:
            lines.append(f"| {label} | 0 |" + " - |" * (5 + len(extra)))
            continue
        last = metrics[-1]
        best = max(metrics, key=lambda m: m["test_acc"])
        cells = "".join(
            f" {last[key]:.4f} |" if last.get(key) is not None else " - |" for key, _ in extra
        )
        lines.append(
            f"| {label} | {last['epoch']} | {last['test_acc']:.4f} | {best['test_acc']:.4f} "
            f"({best['epoch']}) | {last['train_loss']:.4f} | {last['test_loss']:.4f} "
            f"| {statistics.median(m['seconds'] for m in metrics):.1f} |{cells}"
        )
    return lines


def _plot(
    runs: dict[str, list[dict[str, Any]]], key: str, ylabel: str, log: bool, path: Path
) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    values: list[float] = []
    for label, metrics in runs.items():
        points = [(m["epoch"], m[key]) for m in metrics if m.get(key) is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
            values += ys
    drawn = bool(values)
    if drawn:
        if log and min(values) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        atomic_write(path, buffer.getvalue())
    plt.close(fig)
    return drawn


def write_report(
    out: Path, runs: dict[str, list[dict[str, Any]]], title: str, description: str = ""
) -> Path:
    """Write ``report.md`` and the plots into ``out``; returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", *([description, ""] if description else []), *table(runs), ""]
    for name, key, ylabel, log in PLOTS:
        if _plot(runs, key, ylabel, log, out / name):
            lines.append(f"![{ylabel}]({name})")
    lines.append("")
    path = out / REPORT
    atomic_write(path, "\n".join(lines))
    return path
