"""The fused CPU step: a small C kernel (``_fused_cpu.c``), built on first use.

The kernel updates the momentum buffers and the parameters of many tensors in one pass and
sums ``b**2`` in the same loop (see the C file). It is compiled with the system's C compiler
(``$CC``, else ``cc``) the first time a fused step runs on the CPU, in well under a second,
and cached under ``$COOLMOMENTUM_CACHE_DIR`` (default ``$XDG_CACHE_HOME/coolmomentum``, else
``~/.cache/coolmomentum``), keyed by the source, the compiler and the CPU, so that a cache
shared by different machines never hands one a binary built for another. Installing the
package needs no compiler; without one, :func:`library` returns ``None`` and
:class:`coolmomentum.torch.CoolMomentum` uses PyTorch's fused SGD kernel instead.
"""

from __future__ import annotations

import array
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["DTYPES", "build_error", "dense_alike", "library", "step"]

SOURCE = Path(__file__).with_name("_fused_cpu.c")
DTYPES = (torch.float32, torch.float64)
# Tried in order: the first set of flags the compiler accepts is used.
_FLAG_SETS = (
    ("-O3", "-march=native", "-fopenmp"),
    ("-O3", "-fopenmp"),
    ("-O3",),
)
_BUILD_TIMEOUT_S = 120


def _cache_dir() -> Path:
    configured = os.environ.get("COOLMOMENTUM_CACHE_DIR")
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "coolmomentum"


def _cpu_description() -> str:
    """The CPU's model and instruction set extensions, as far as the platform tells."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    wanted = ("model name", "flags", "Features", "CPU part")
    lines = {line.split(":")[0].strip(): line for line in text.splitlines() if ":" in line}
    return "\n".join(lines[key] for key in wanted if key in lines) or platform.machine()


def _build(compiler: str, flags: tuple[str, ...], target: Path) -> None:
    """Compile the kernel to ``target`` through a temporary file, renamed when complete."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        subprocess.run(
            [compiler, *flags, "-shared", "-fPIC", str(SOURCE), "-o", tmp],
            check=True,
            capture_output=True,
            text=True,
            timeout=_BUILD_TIMEOUT_S,
        )
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    """The built kernel library, or ``None`` and the reason it could not be built (warned
    about once: the step still runs, on PyTorch's fused SGD kernel)."""
    lib, reason = _build_and_load()
    if lib is None:
        warnings.warn(
            f"coolmomentum: the fused CPU kernel is not available ({reason}); the fused step "
            f"runs on PyTorch's fused SGD kernel, which reads the buffers once more to track "
            f"the temperature",
            RuntimeWarning,
            stacklevel=2,
        )
    return lib, reason


def _build_and_load() -> tuple[ctypes.CDLL | None, str]:
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        return None, "no C compiler found (set CC or install cc)"
    try:
        version = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"{compiler} --version failed: {exc}"
    source = SOURCE.read_bytes()
    folder = _cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        user = os.getuid() if hasattr(os, "getuid") else os.getpid()
        folder = Path(tempfile.gettempdir()) / f"coolmomentum-{user}"
        folder.mkdir(parents=True, exist_ok=True)
    cpu = _cpu_description().encode()
    errors = []
    for flags in _FLAG_SETS:
        key = hashlib.sha256(
            b"\0".join([source, version.encode(), " ".join(flags).encode(), cpu])
        ).hexdigest()[:16]
        target = folder / f"fused_cpu-{key}.so"
        if not target.exists():
            try:
                _build(compiler, flags, target)
            except subprocess.CalledProcessError as exc:
                errors.append(f"{' '.join(flags)}: {exc.stderr.strip()[-500:]}")
                continue
            except (OSError, subprocess.SubprocessError) as exc:
                errors.append(f"{' '.join(flags)}: {exc}")
                continue
        try:
            lib = ctypes.CDLL(str(target))
        except OSError as exc:  # e.g. a cached file this system cannot load
            errors.append(f"{' '.join(flags)}: loading {target}: {exc}")
            continue
        for dtype in DTYPES:
            fn = getattr(lib, f"coolmomentum_step_{str(dtype).removeprefix('torch.')}")
            fn.restype = ctypes.c_double
            fn.argtypes = [
                ctypes.c_int64,
                *[ctypes.c_void_p] * 4,
                *[ctypes.c_double] * 4,
                *[ctypes.c_int] * 4,
            ]
        return lib, ""
    return None, f"building {SOURCE.name} with {compiler} failed: " + "; ".join(errors)


def library() -> ctypes.CDLL | None:
    """The kernel, built and loaded on the first call; ``None`` if it cannot be built."""
    return _load()[0]


def build_error() -> str:
    """Why :func:`library` returned ``None`` (empty when it did not)."""
    return _load()[1]


def dense_alike(param: Tensor, grad: Tensor, buf: Tensor) -> bool:
    """Whether the three share one dense memory layout (contiguous, or channels-last), so
    that an elementwise kernel may walk their memory linearly."""
    if param.is_contiguous() and grad.is_contiguous() and buf.is_contiguous():
        return True
    return (
        param.stride() == grad.stride() == buf.stride()
        and param.dim() == 4
        and param.is_contiguous(memory_format=torch.channels_last)
    )


def _address(table: array.array[int]) -> int:
    return table.buffer_info()[0]


def step(
    params: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor],
    rho: float,
    lr: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    track_temperature: bool,
) -> Tensor | None:
    """One fused step over CPU tensors of one float dtype in :func:`dense_alike` layouts.

    Returns ``sum(b**2)`` as a float64 0-d tensor when ``track_temperature`` is on.
    """
    lib = library()
    if lib is None:
        raise RuntimeError(f"the fused CPU kernel is not available: {build_error()}")
    fn = getattr(lib, f"coolmomentum_step_{str(params[0].dtype).removeprefix('torch.')}")
    # array.array packs the addresses and sizes much faster than ctypes arrays do.
    tables = [array.array("q", [t.data_ptr() for t in ts]) for ts in (params, grads, bufs)]
    tables.append(array.array("q", [t.numel() for t in params]))
    total = fn(
        len(params),
        *[_address(table) for table in tables],
        rho,
        (1.0 + rho) / 2.0,
        lr,
        weight_decay,
        int(decoupled_weight_decay),
        int(maximize),
        int(track_temperature),
        torch.get_num_threads(),
    )
    if total < 0:
        raise MemoryError("the fused CPU kernel could not allocate its chunk table")
    return torch.tensor(total, dtype=torch.float64) if track_temperature else None
