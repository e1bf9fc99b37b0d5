"""Two-rank training runs (CPU, gloo) for ``test_distributed.py``.

Run on every rank as ``python tests/_distributed_cases.py PHASE OUTDIR``, either under
``torchrun --nproc_per_node 2`` (``MASTER_ADDR`` set: ``env://`` rendezvous) or started
directly with ``RANK`` and ``WORLD_SIZE`` set (rendezvous through a file in ``OUTDIR``,
which needs no free port). ``PHASE`` is ``train`` (DDP, FSDP2 with and without gradient
noise, ZeRO; writes checkpoints) or ``resume`` (fresh processes that load those
checkpoints and finish the runs). Rank 0 writes each case's results with ``torch.save`` to
``OUTDIR/<case>.pt``; the test compares them with a single-process run of :func:`model` on
:func:`data`.

The model, the data and the run's constants live here so that both sides use the same.
"""

from __future__ import annotations

import gc
import glob
import os
import sys
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import torch

# Before the process group: functions of torch.distributed.nn.functional (which DDP's
# constructor imports through torch._dynamo) and of ZeRO's module default to
# `group=dist.group.WORLD`, and a module first imported after init_process_group keeps the
# group for good (docs/distributed.md, "Ending a run").
import torch._dynamo
import torch.distributed.optim
from torch import nn

import coolmomentum._torch_step as cm_step
import coolmomentum.torch as cm_torch
from coolmomentum.torch import CoolMomentum

WORLD = 2
BATCH = 4  # per rank; the single-process reference uses WORLD * BATCH
STEPS = 8
RESET_AT = 2  # stats(all_reduce=True) after this many steps: the window is steps 2..7
# Checkpoints are taken right after that call: each rank's temperature window then holds
# nothing rank-specific, so a checkpoint that keeps one rank's copy of the group state (DCP,
# ZeRO's consolidation) loses nothing (see docs/distributed.md).
CHECKPOINT_AT = RESET_AT
# Hot for 2 steps, cools over the next 4 (rho reaches 0 at step 6), then plain SGD.
OPTIM = dict(lr=0.05, rho_0=0.9, total_steps=4, hot_steps=2, weight_decay=1e-3)


def model() -> nn.Sequential:
    """A float64 MLP; dim 0 of ``0.weight`` (5) and ``2.bias`` (3) splits unevenly on 2 ranks."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def data() -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets for every step: ``(STEPS, WORLD * BATCH, features)``."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, WORLD * BATCH, 6, generator=gen, dtype=torch.float64)
    y = torch.randn(STEPS, WORLD * BATCH, 3, generator=gen, dtype=torch.float64)
    return x, y


def loss_fn(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(net(x), y)


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (gathered from every rank for a DTensor), detached, on the CPU."""
    full_tensor = getattr(t, "full_tensor", None)
    return (full_tensor() if full_tensor is not None else t).detach().clone()


def _group_state(opt: CoolMomentum) -> dict[str, list[torch.Tensor]]:
    """Every rank's step and temperature window, gathered (all ranks must call this)."""
    mine = {key: opt.param_groups[0][key].clone() for key in cm_torch._GROUP_STATE}
    gathered: list[Any] = [None] * WORLD
    torch.distributed.all_gather_object(gathered, mine)
    return {key: [rank_state[key] for rank_state in gathered] for key in mine}


def _snapshot(opt: CoolMomentum, params: dict[str, Any], reset_stats: list) -> dict[str, Any]:
    """Full parameters and momentum buffers, the group state and the global statistics."""
    return {
        "params": {name: _full(p) for name, p in params.items()},
        "buffers": {name: _full(opt.state[p]["momentum_buffer"]) for name, p in params.items()},
        "group_state": _group_state(opt),
        "reset_stats": reset_stats,
        "stats": opt.stats(reset=False, all_reduce=True),
    }


def _rank_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    rank = torch.distributed.get_rank()
    x, y = data()
    rows = slice(rank * BATCH, (rank + 1) * BATCH)
    return x[step, rows], y[step, rows]


def _train(net: nn.Module, opt: Any, stats_of: CoolMomentum, start: int, stop: int, hooks=None):
    """Steps ``start..stop-1`` of the run: the reset call, then ``hooks[k]()``, after step ``k``.

    ``stats_of`` is the CoolMomentum doing the steps (``opt`` itself, or ZeRO's ``opt.optim``).
    Returns the statistics of the reset call, if it fell in this range.
    """
    reset_stats: list = []
    for k in range(start, stop):
        x, y = _rank_batch(k)
        opt.zero_grad(set_to_none=True)
        loss_fn(net, x, y).backward()
        opt.step()
        if k + 1 == RESET_AT:
            reset_stats = stats_of.stats(all_reduce=True)
        if hooks and k + 1 in hooks:
            hooks[k + 1]()
    return reset_stats


class _UpdateSpy:
    """Records which update function ``step()`` calls and the types and shapes it is given."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self._saved = {}

    def __enter__(self) -> _UpdateSpy:
        for name in ("_foreach_update", "_single_tensor_update", "_fused_update"):
            original = getattr(cm_step, name)
            self._saved[name] = original
            setattr(cm_step, name, self._wrap(name, original))
        return self

    def _wrap(self, name, original):
        def update(params, grads, bufs, *args):
            self.calls.append(
                {
                    "path": name,
                    "types": sorted({type(t).__name__ for t in [*params, *grads, *bufs]}),
                    "shapes": [tuple(t.shape) for t in params],
                }
            )
            return original(params, grads, bufs, *args)

        return update

    def __exit__(self, *exc: object) -> None:
        for name, original in self._saved.items():
            setattr(cm_step, name, original)


# --- the cases ------------------------------------------------------------------------------


def ddp(outdir: Path) -> None:
    from torch.nn.parallel import DistributedDataParallel

    net = DistributedDataParallel(model())
    opt = CoolMomentum(net.parameters(), **OPTIM)
    reset_stats = _train(net, opt, opt, 0, STEPS)
    _save(outdir / "ddp.pt", _snapshot(opt, dict(net.module.named_parameters()), reset_stats))


def _fsdp2_model() -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))
    net = model()
    for layer in net:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(net, mesh=mesh)
    return net


def _dcp_path(outdir: Path, case: str = "fsdp2") -> str:
    return str(outdir / f"{case}_checkpoint")


def _dcp_state(net: nn.Module, opt: CoolMomentum) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(net, opt)
    return {"model": model_state, "optim": optim_state}


# The three implementations of the step, by the name of their update function.
PATHS = {
    "_foreach_update": {"foreach": True},
    "_single_tensor_update": {"foreach": False},
    "_fused_update": {"fused": True},
}


def fsdp2(outdir: Path, path: str) -> None:
    import torch.distributed.checkpoint as dcp

    net = _fsdp2_model()
    opt = CoolMomentum(net.parameters(), **PATHS[path], **OPTIM)
    params = dict(net.named_parameters())

    def save() -> None:
        dcp.save(_dcp_state(net, opt), checkpoint_id=_dcp_path(outdir))

    hooks = {CHECKPOINT_AT: save} if path == "_foreach_update" else {}
    with _UpdateSpy() as spy:
        reset_stats = _train(net, opt, opt, 0, STEPS, hooks)
    result = _snapshot(opt, params, reset_stats)
    result["update_calls"] = spy.calls
    result["local_shapes"] = [tuple(p.to_local().shape) for p in params.values()]
    result["param_types"] = sorted({type(p).__name__ for p in params.values()})
    result["param_placements"] = [str(p.placements) for p in params.values()]
    bufs = [opt.state[p]["momentum_buffer"] for p in params.values()]
    result["buffer_types"] = sorted({type(b).__name__ for b in bufs})
    result["buffer_placements"] = [str(getattr(b, "placements", None)) for b in bufs]
    _save(outdir / f"fsdp2{path}.pt", result)


def _dcp_load(net: nn.Module, opt: CoolMomentum, path: str, **extra: Any) -> dict[str, Any]:
    """Load a DCP checkpoint into ``net`` and ``opt``; ``extra`` are further entries to read
    (tensors of the saved shapes, filled in place). Returns the loaded state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    # On an optimizer without state, get_state_dict first takes a step with lr=0 and zero
    # gradients to create it: the schedule position is 1 until the checkpoint is loaded.
    state = {**_dcp_state(net, opt), **extra}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(net, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return state


def fsdp2_resume(outdir: Path) -> None:
    net = _fsdp2_model()
    opt = CoolMomentum(net.parameters(), foreach=True, **OPTIM)
    _dcp_load(net, opt, _dcp_path(outdir))
    step_after_load = opt.param_groups[0]["step"].item()
    _train(net, opt, opt, CHECKPOINT_AT, STEPS)
    result = _snapshot(opt, dict(net.named_parameters()), [])
    result["step_after_load"] = step_after_load
    _save(outdir / "fsdp2_resumed.pt", result)


NOISE_STD = 0.1


def _noisy_fsdp2() -> tuple[nn.Module, CoolMomentum, torch.Generator]:
    """FSDP2 with gradient noise, each rank drawing its shards' noise from its own generator
    (seeded per rank: with one seed, both ranks' shards would get the same numbers)."""
    net = _fsdp2_model()
    generator = torch.Generator().manual_seed(100 + torch.distributed.get_rank())
    opt = CoolMomentum(
        net.parameters(), foreach=True, noise_std=NOISE_STD, generator=generator, **OPTIM
    )
    return net, opt, generator


def _noise_key() -> str:
    # DCP saves one copy of an entry that every rank has (a plain tensor under the same
    # name); a name per rank keeps every rank's generator.
    return f"noise_generator_rank{torch.distributed.get_rank()}"


def _generator_states(generator: torch.Generator) -> list[torch.Tensor]:
    """Every rank's generator state, gathered (all ranks must call this)."""
    gathered: list[Any] = [None] * WORLD
    torch.distributed.all_gather_object(gathered, generator.get_state())
    return gathered


def fsdp2_noise(outdir: Path) -> None:
    import torch.distributed.checkpoint as dcp

    net, opt, generator = _noisy_fsdp2()
    dcp_optim_keys: list[str] = []

    def save() -> None:
        state = _dcp_state(net, opt)
        dcp_optim_keys.extend(state["optim"])
        state[_noise_key()] = generator.get_state()
        dcp.save(state, checkpoint_id=_dcp_path(outdir, "fsdp2_noise"))

    reset_stats = _train(net, opt, opt, 0, STEPS, {CHECKPOINT_AT: save})
    result = _snapshot(opt, dict(net.named_parameters()), reset_stats)
    result["dcp_optim_keys"] = dcp_optim_keys
    result["generator_states"] = _generator_states(generator)
    _save(outdir / "fsdp2_noise.pt", result)


def fsdp2_noise_resume(outdir: Path) -> None:
    net, opt, generator = _noisy_fsdp2()
    template = {_noise_key(): generator.get_state()}
    state = _dcp_load(net, opt, _dcp_path(outdir, "fsdp2_noise"), **template)
    # After get_state_dict: the lr=0 step it takes on a fresh optimizer draws noise too.
    generator.set_state(state[_noise_key()])
    _train(net, opt, opt, CHECKPOINT_AT, STEPS)
    result = _snapshot(opt, dict(net.named_parameters()), [])
    result["generator_states"] = _generator_states(generator)
    _save(outdir / "fsdp2_noise_resumed.pt", result)


def _zero(net: nn.Module) -> Any:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    return ZeroRedundancyOptimizer(net.parameters(), optimizer_class=CoolMomentum, **OPTIM)


def _zero_snapshot(net: nn.Module, opt: Any, reset_stats: list) -> dict[str, Any]:
    """Like :func:`_snapshot`; each rank's local optimizer holds the state of its own params."""
    params = dict(net.module.named_parameters())
    mine = {name: p for name, p in params.items() if p in opt.optim.state}
    owned: list[Any] = [None] * WORLD
    torch.distributed.all_gather_object(
        owned, {name: _full(opt.optim.state[p]["momentum_buffer"]) for name, p in mine.items()}
    )
    return {
        "params": {name: _full(p) for name, p in params.items()},
        "buffers": {name: buf for rank_bufs in owned for name, buf in rank_bufs.items()},
        "owned": [sorted(rank_bufs) for rank_bufs in owned],
        "group_state": _group_state(opt.optim),
        "reset_stats": reset_stats,
        "stats": opt.optim.stats(reset=False, all_reduce=True),
    }


def zero(outdir: Path) -> None:
    from torch.nn.parallel import DistributedDataParallel

    net = DistributedDataParallel(model())
    opt = _zero(net)

    def save() -> None:
        opt.consolidate_state_dict(to=0)
        if torch.distributed.get_rank() == 0:
            torch.save(
                {"model": net.module.state_dict(), "optim": opt.state_dict()},
                outdir / "zero_checkpoint.pt",
            )

    reset_stats = _train(net, opt, opt.optim, 0, STEPS, {CHECKPOINT_AT: save})
    _save(outdir / "zero.pt", _zero_snapshot(net, opt, reset_stats))


def zero_resume(outdir: Path) -> None:
    from torch.nn.parallel import DistributedDataParallel

    checkpoint = torch.load(outdir / "zero_checkpoint.pt", weights_only=True)
    net = model()
    net.load_state_dict(checkpoint["model"])
    net = DistributedDataParallel(net)
    opt = _zero(net)
    opt.load_state_dict(checkpoint["optim"])
    _train(net, opt, opt.optim, CHECKPOINT_AT, STEPS)
    _save(outdir / "zero_resumed.pt", _zero_snapshot(net, opt, []))


PHASES = {
    "train": [ddp, *(partial(fsdp2, path=path) for path in PATHS), fsdp2_noise, zero],
    "resume": [fsdp2_resume, fsdp2_noise_resume, zero_resume],
}


def _save(path: Path, result: dict[str, Any]) -> None:
    if torch.distributed.get_rank() == 0:
        torch.save(result, path)


def _clear_dtensor_caches() -> None:
    """Empty DTensor's caches, which keep every device mesh they saw (and so its groups)."""
    from torch.distributed.tensor import _collective_utils, _redistribute, debug

    debug._clear_sharding_prop_cache()  # the sharding decisions (C++ and Python)
    _redistribute._gen_transform_infos.cache_clear()  # redistribution plans
    _redistribute._planner_cache.clear()
    _collective_utils.MeshTopoInfo.build_from_mesh.cache_clear()  # the cost model's topology


def _leave_process_group() -> None:
    """Destroy the process group so that it is freed now, as docs/distributed.md says."""
    # A rank that leaves while its peer's last collective is still in flight aborts the
    # peer's gloo threads: meet first.
    torch.distributed.barrier()
    _clear_dtensor_caches()
    # FSDP2 modules and DTensor's redistribution plans sit in reference cycles, which hold
    # their mesh and so its group.
    gc.collect()
    torch.distributed.destroy_process_group()


def _gloo_threads() -> list[str]:
    """The names of this process's gloo threads (Linux: from /proc)."""
    names = []
    for comm in glob.glob("/proc/self/task/*/comm"):
        try:
            names.append(Path(comm).read_text().strip())
        except OSError:  # a thread that ended since the listing
            pass
    return sorted(name for name in names if "gloo" in name)


def main(phase: str, outdir: str) -> None:
    out = Path(outdir)
    if "MASTER_ADDR" in os.environ:
        init_method = "env://"
    else:
        init_method = (out / f"rendezvous_{phase}").resolve().as_uri()
    torch.distributed.init_process_group(
        "gloo",
        init_method=init_method,
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        timeout=timedelta(seconds=60),
    )
    try:
        for case in PHASES[phase]:
            case(out)
    finally:
        _leave_process_group()
    # The test checks that the group was freed: no gloo thread is left to abort the process
    # while the interpreter shuts down.
    rank = os.environ["RANK"]
    (out / f"{phase}_rank{rank}_gloo_threads.txt").write_text("\n".join(_gloo_threads()))


if __name__ == "__main__":
    main(*sys.argv[1:])
