"""Data-parallel runs under ``torchrun``: who this process is, and sums over all of them.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them the run is a
single process and every function here is a no-op.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .config import ConfigError

__all__ = ["World", "resolve_device", "setup"]


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def sum(self, *values: torch.Tensor) -> list[torch.Tensor]:
        """Each tensor summed over every rank (in place, and returned)."""
        if self.active:
            for v in values:
                dist.all_reduce(v)
        return list(values)

    def close(self, wait: bool = True) -> None:
        """Leave the process group, once every rank is here (``wait``): a rank that leaves
        while a peer's last collective is in flight aborts that peer's gloo threads. After an
        error, leave at once (``wait=False``): the other ranks may never arrive."""
        if self.active and dist.is_initialized():
            if wait:
                dist.barrier()
            dist.destroy_process_group()


def resolve_device(device: str) -> torch.device:
    """``"auto"`` (CUDA when present) or a device torch knows and has."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"--device {device!r} is not a device torch knows ({e})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device")
    return resolved


def setup(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group ``torchrun`` prepared (once) and pick this rank's device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(), device
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # DistributedDataParallel imports torch._dynamo, and an import of it after the group
        # exists keeps references to the group for good: destroy_process_group then cannot
        # free it, gloo's worker threads live on into interpreter shutdown, and one that
        # releases a finished collective's tensors there aborts the process (SIGABRT) after
        # a run that succeeded. Imported first, it holds none, and close() frees the group.
        importlib.import_module("torch._dynamo")  # not `import torch._dynamo`: a local torch
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return world, device
