"""Figures for every report of the package and its benchmarks, drawn with matplotlib's
object API: no ``pyplot`` state and no global backend switch, so that drawing a report never
changes how a user's own plots are shown.

    fig, (left, right) = figure(1, 2, size=(11, 4))
    left.plot(...)
    save_png(fig, path)          # written whole or not at all

matplotlib belongs to the ``[experiments]`` extra; :func:`available` says whether it is
installed.
"""

from __future__ import annotations

import importlib.util
import io
import os
from typing import Any

from ._io import atomic_write

__all__ = ["available", "figure", "png_bytes", "save_png"]

DPI = 110


def available() -> bool:
    """Whether matplotlib, which draws the figures, is installed."""
    return importlib.util.find_spec("matplotlib") is not None


def figure(
    rows: int = 1, columns: int = 1, *, size: tuple[float, float] = (6, 4), **subplots: Any
) -> tuple[Any, Any]:
    """A new figure (with the Agg canvas, laid out when saved) and its axes, as
    ``Figure.subplots(rows, columns, **subplots)`` returns them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, columns, **subplots)


def png_bytes(fig: Any, dpi: int = DPI) -> bytes:
    """The figure as PNG data."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def save_png(fig: Any, path: str | os.PathLike[str], dpi: int = DPI) -> None:
    """Write the figure to ``path`` as PNG, atomically."""
    atomic_write(path, png_bytes(fig, dpi))
