"""Files written whole or not at all."""

from __future__ import annotations

import glob
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "leftovers"]

# The process's umask, read once (setting it is the only way to read it): a file written here
# gets the mode that open() would give it, not mkstemp's owner-only 0600.
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes | str,
    *,
    previous: str | os.PathLike[str] | None = None,
) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename it.

    A process killed at any moment leaves either the old file or the new one, never a part;
    the file and then the folder are synced, so that a file reported written survives a power
    loss. With ``previous``, the old file is kept under that name, through a hard link, so
    that ``path`` is there at every moment (a reader polling it never misses it; where the
    file system has no hard links, the old file is renamed, and for an instant only
    ``previous`` is there). A failed write (a full disk, say) leaves the old file as it was
    and raises.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # POSIX (Windows has no such modes)
            os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            _keep(path, Path(previous), Path(tmp).with_suffix(".link.tmp"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def leftovers(path: str | os.PathLike[str]) -> list[Path]:
    """The temporary files of writes to ``path`` that a killed process left behind."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))


def _keep(path: Path, previous: Path, link: Path) -> None:
    """``path``'s file is also ``previous`` (replacing it), and ``path`` stays."""
    try:
        os.link(path, link)
    except OSError:  # no hard links here (some network and FUSE file systems)
        os.replace(path, previous)
        return
    try:
        os.replace(link, previous)
    finally:
        link.unlink(missing_ok=True)


def _sync_folder(folder: Path) -> None:
    """Make the folder's entries (a rename) durable; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not sync folders; the rename is done either way
        pass
    finally:
        os.close(fd)
