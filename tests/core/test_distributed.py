"""CoolMomentum under DDP, FSDP2 (with DCP checkpoints) and ZeroRedundancyOptimizer.

Two CPU ranks (gloo) run the cases in ``_distributed_cases.py``: one launch trains every case
and writes checkpoints, a second launch (fresh processes) resumes from them. Each result is
compared with a single-process run on the whole batch, computed here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
    pytest.skip("torch.distributed with the gloo backend is not available", allow_module_level=True)

import _distributed_cases as cases

from coolmomentum.torch import CoolMomentum

HERE = Path(__file__).parent
TIMEOUT_S = 240
# Double precision, and the only difference from the reference is the order of the sums
# over the batch: a few ulps.
CLOSE = dict(rtol=1e-12, atol=1e-15)


def _launch(phase: str, outdir: Path) -> None:
    """Run ``phase`` on ``cases.WORLD`` fresh processes; fail with their output if one fails."""
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    env.update(WORLD_SIZE=str(cases.WORLD), LOCAL_WORLD_SIZE=str(cases.WORLD), OMP_NUM_THREADS="1")
    procs, logs = [], []
    for rank in range(cases.WORLD):
        log = outdir / f"{phase}_rank{rank}.log"
        logs.append(log)
        with log.open("w") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(HERE / "_distributed_cases.py"), phase, str(outdir)],
                    env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        codes = [proc.wait(timeout=TIMEOUT_S) for proc in procs]
    except subprocess.TimeoutExpired:
        codes = None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if codes != [0] * cases.WORLD:
        output = "\n".join(f"--- {log.name}\n{log.read_text()[-4000:]}" for log in logs)
        pytest.fail(f"{phase} phase failed (exit codes {codes}):\n{output}")


@pytest.fixture(scope="module")
def outdir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("distributed")
    _launch("train", out)
    _launch("resume", out)
    return out


def _result(outdir: Path, case: str) -> dict:
    return torch.load(outdir / f"{case}.pt", weights_only=False)


@pytest.fixture(scope="module")
def reference() -> dict:
    """One process, the whole batch (``WORLD * BATCH``) per step, the same schedule of calls."""
    net = cases.model()
    opt = CoolMomentum(net.parameters(), **cases.OPTIM)
    x, y = cases.data()
    reset_stats = None
    for k in range(cases.STEPS):
        opt.zero_grad()
        cases.loss_fn(net, x[k], y[k]).backward()
        opt.step()
        if k + 1 == cases.RESET_AT:
            reset_stats = opt.stats()
    params = dict(net.named_parameters())
    return {
        "params": {name: p.detach() for name, p in params.items()},
        "buffers": {name: opt.state[p]["momentum_buffer"] for name, p in params.items()},
        "group": opt.param_groups[0],
        "reset_stats": reset_stats,
        "stats": opt.stats(reset=False),
    }


def _assert_same_stats(got: list[dict], want: list[dict], replicas: int) -> None:
    """The all-reduced window: sums over ``replicas`` copies of each element, the same mean."""
    assert len(got) == len(want) == 1
    got, want = got[0], want[0]
    summed = ("temperature", "temperature_sum", "temperature_count")
    assert {k: v for k, v in got.items() if k not in summed} == {
        k: v for k, v in want.items() if k not in summed
    }
    assert got["temperature_count"] == replicas * want["temperature_count"]
    assert got["temperature_sum"] == pytest.approx(replicas * want["temperature_sum"], rel=1e-12)
    assert got["temperature"] == pytest.approx(want["temperature"], rel=1e-12)


def _assert_matches_reference(result: dict, reference: dict, replicas: int = 1) -> None:
    assert result["params"].keys() == reference["params"].keys()
    for name, want in reference["params"].items():
        torch.testing.assert_close(result["params"][name], want, **CLOSE, msg=name)
        torch.testing.assert_close(result["buffers"][name], reference["buffers"][name], **CLOSE)
    # The temperature over the elements of every rank: the single-process value.
    _assert_same_stats(result["reset_stats"], reference["reset_stats"], replicas)
    _assert_same_stats(result["stats"], reference["stats"], replicas)


def _assert_identical(resumed: dict, uninterrupted: dict) -> None:
    for name, want in uninterrupted["params"].items():
        assert torch.equal(resumed["params"][name], want), name
        assert torch.equal(resumed["buffers"][name], uninterrupted["buffers"][name]), name
    for key, want in uninterrupted["group_state"].items():  # every rank's step and window
        assert all(map(torch.equal, resumed["group_state"][key], want)), key
    assert resumed["stats"] == uninterrupted["stats"]


def test_ddp_matches_one_process_on_the_whole_batch(outdir, reference):
    result = _result(outdir, "ddp")
    _assert_matches_reference(result, reference, replicas=cases.WORLD)
    # Replicated parameters: every rank holds the same window, the whole model's.
    for key, per_rank in result["group_state"].items():
        assert all(torch.equal(t, per_rank[0]) for t in per_rank), key
    counts = result["group_state"]["temperature_count"]
    assert counts[0] == reference["group"]["temperature_count"]


@pytest.mark.parametrize("path", cases.PATHS)
def test_fsdp2_matches_the_unsharded_run(outdir, reference, path):
    result = _result(outdir, f"fsdp2{path}")
    _assert_matches_reference(result, reference)
    # Each rank counts the elements of its own (uneven) shards; together, the whole model.
    counts = result["group_state"]["temperature_count"]
    assert counts[0] != counts[1]
    assert sum(counts) == reference["group"]["temperature_count"]


@pytest.mark.parametrize("path", cases.PATHS)
def test_fsdp2_updates_the_local_shards_in_place(outdir, path):
    result = _result(outdir, f"fsdp2{path}")
    assert result["param_types"] == ["DTensor"]
    # The state is sharded like the parameters (no full-size copy on any rank)...
    assert result["buffer_types"] == ["DTensor"]
    assert result["buffer_placements"] == result["param_placements"]
    assert all(p == "(Shard(dim=0),)" for p in result["param_placements"])
    # ...and every step ran the requested path on plain local tensors of the shards' shapes.
    assert len(result["update_calls"]) == cases.STEPS
    for call in result["update_calls"]:
        assert call["path"] == path
        assert call["types"] == ["Tensor"]
        assert call["shapes"] == result["local_shapes"]
    assert result["local_shapes"] == [(3, 6), (3,), (2, 5), (2,)]  # rank 0 of 5, 5, 3, 3 rows


def test_fsdp2_dcp_checkpoint_resumes_bit_for_bit(outdir):
    resumed = _result(outdir, "fsdp2_resumed")
    # get_state_dict on the fresh optimizer takes an lr=0 step to create the state; the
    # loaded schedule position replaces that step's count.
    assert resumed["step_after_load"] == cases.CHECKPOINT_AT
    _assert_identical(resumed, _result(outdir, "fsdp2_foreach_update"))


def test_fsdp2_dcp_checkpoint_resumes_each_ranks_noise_stream(outdir):
    uninterrupted = _result(outdir, "fsdp2_noise")
    # The optimizer's state through get_state_dict: DCP carries no other key, so the
    # generators travel in an entry of their own, one per rank (docs/distributed.md).
    assert uninterrupted["dcp_optim_keys"] == ["state", "param_groups"]
    # The noise is on, and each rank draws a stream of its own: a checkpoint that restored
    # one rank's generator on both, or none, would not resume exactly.
    noiseless = _result(outdir, "fsdp2_foreach_update")
    assert not torch.equal(uninterrupted["params"]["0.weight"], noiseless["params"]["0.weight"])
    first, second = uninterrupted["generator_states"]
    assert not torch.equal(first, second)
    resumed = _result(outdir, "fsdp2_noise_resumed")
    _assert_identical(resumed, uninterrupted)
    assert all(map(torch.equal, resumed["generator_states"], uninterrupted["generator_states"]))


def test_zero_matches_the_plain_optimizer(outdir, reference):
    result = _result(outdir, "zero")
    _assert_matches_reference(result, reference)
    owned = result["owned"]  # each rank steps a disjoint, non-empty part of the model
    assert all(owned)
    assert sorted(name for names in owned for name in names) == sorted(reference["params"])
    # Same arithmetic per element as DDP with the plain optimizer: the same bits.
    ddp = _result(outdir, "ddp")
    for name, want in ddp["params"].items():
        assert torch.equal(result["params"][name], want), name
        assert torch.equal(result["buffers"][name], ddp["buffers"][name]), name


def test_zero_consolidated_state_dict_resumes_exactly(outdir):
    _assert_identical(_result(outdir, "zero_resumed"), _result(outdir, "zero"))


@pytest.mark.skipif(sys.platform != "linux", reason="the workers list their threads in /proc")
def test_the_process_group_is_freed_before_the_interpreter_shuts_down(outdir):
    # A gloo thread still alive while the interpreter shuts down can abort a run that
    # succeeded ("terminate called without an active exception"). The workers leave the group
    # as docs/distributed.md says; after destroy_process_group none of its threads is left.
    records = {
        f"{phase}_rank{rank}_gloo_threads.txt"
        for phase in cases.PHASES
        for rank in range(cases.WORLD)
    }
    assert {path.name for path in outdir.glob("*_gloo_threads.txt")} == records
    for name in sorted(records):
        assert (outdir / name).read_text() == "", name


def test_stats_all_reduce_needs_a_process_group():
    assert not torch.distributed.is_initialized()
    param = torch.nn.Parameter(torch.ones(3))
    opt = CoolMomentum([param], lr=0.01, rho_0=0.9, total_steps=4)
    param.grad = torch.ones(3)
    opt.step()
    with pytest.raises(ValueError, match="init_process_group"):
        opt.stats(all_reduce=True)
    # The failed call reset nothing: the window is still there for a local read.
    assert opt.stats()[0]["temperature"] == pytest.approx((0.01 * 1.9 / 2) ** 2)
