"""What a run over many replicas found: their minima, written as XYZ files and plotted."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from torch import Tensor

from .. import _plot
from .._io import atomic_write

__all__ = ["ReplicaMinima", "write_structures", "write_xyz"]


@dataclass
class ReplicaMinima(ABC):
    """The minima of a batch of replicas, as :func:`.anneal.anneal` and
    :func:`.hopping.annealed_hopping` report them: ``energies`` ``(R,)`` and ``positions``
    ``(R, N, 3)`` on the CPU, with the problem's ``label``, its particles' chemical ``symbol``
    (for the XYZ files) and its best ``known_minimum`` (``None``: none is tabulated)."""

    PLOT_NAME: ClassVar[str]
    """The file name :meth:`save` gives the plot."""

    label: str
    symbol: str
    energies: Tensor
    positions: Tensor
    known_minimum: float | None

    @property
    def best_index(self) -> int:
        return int(self.energies.argmin())

    @property
    def best_energy(self) -> float:
        return float(self.energies.min())

    @property
    def best_positions(self) -> Tensor:
        return self.positions[self.best_index]

    def gap(self) -> float | None:
        """``best_energy - known_minimum`` (``None`` where no minimum is known)."""
        return None if self.known_minimum is None else self.best_energy - self.known_minimum

    @abstractmethod
    def plot(self, path: str | os.PathLike[str]) -> None:
        """Draw the run as a PNG at ``path``, written atomically; needs matplotlib."""

    def save(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write ``best.xyz``, ``replicas.xyz`` (every replica, lowest energy first) and, where
        matplotlib is installed, the plot (:attr:`PLOT_NAME`) into ``directory``; returns
        their paths."""
        names = write_structures(directory, self.positions, self.energies, self.symbol, self.label)
        if _plot.available():
            names.append(Path(directory) / self.PLOT_NAME)
            self.plot(names[-1])
        return names


def write_structures(
    directory: str | os.PathLike[str], positions: Tensor, energies: Tensor, symbol: str, label: str
) -> list[Path]:
    """Write ``best.xyz`` (the lowest replica) and ``replicas.xyz`` (every replica, lowest
    energy first) into ``directory``, created if needed; returns their paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    order = energies.argsort()
    names = [out / "best.xyz", out / "replicas.xyz"]
    write_xyz(names[0], positions[order[:1]], energies[order[:1]].tolist(), symbol, label)
    write_xyz(names[1], positions[order], energies[order].tolist(), symbol, label)
    return names


def write_xyz(
    path: str | os.PathLike[str],
    frames: Tensor,
    energies: Sequence[float],
    symbol: str,
    label: str = "",
) -> None:
    """Write ``frames`` ``(F, N, 3)`` as a multi-frame XYZ file, each comment line carrying
    ``energy=...`` (readable by ASE's extended-XYZ reader). Written atomically."""
    lines = []
    for frame, energy in zip(frames.tolist(), energies, strict=True):
        lines.append(f"{len(frame)}\n")
        lines.append(f'energy={energy:.9f} config_type="{label}"\n')
        lines.extend(f"{symbol} {x:.10f} {y:.10f} {z:.10f}\n" for x, y, z in frame)
    atomic_write(path, "".join(lines))
