"""Faults a long training meets: kills at any moment, preemption signals, damaged
checkpoints, a full disk, a diverging loss, and bad input on every flag."""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from test_data import write_fashion_mnist

from coolmomentum import cli
from coolmomentum.errors import CheckpointWriteError, Diverged
from coolmomentum.experiments import checkpoint, loop
from coolmomentum.experiments.config import RunConfig
from coolmomentum.experiments.data import InMemoryData

TINY = ["--dataset", "fashion-mnist", "--model", "convnet", "--batch-size", "8", "--seed", "3"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
UNTIMED = ("seconds", "images_per_s")


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("COOLMOMENTUM_DATA", raising=False)
    folder = tmp_path / "fmnist"
    write_fashion_mnist(folder, n_train=128, n_test=16)
    return folder


def command(out, data_dir, *extra, launcher=(sys.executable, "-m")):
    return [*launcher, "coolmomentum", "train", *TINY, "--data-dir", str(data_dir), "--out",
            str(out), "--no-progress", *map(str, extra)]  # fmt: skip


def assert_same_run(a_dir: Path, b_dir: Path) -> None:
    """Bit-identical weights and metrics (but for the clock)."""
    a = torch.load(a_dir / "checkpoint.pt", weights_only=True)
    b = torch.load(b_dir / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] and b["stretch"] is None
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key

    def untimed(metrics):
        return [{k: v for k, v in m.items() if k not in UNTIMED} for m in metrics]

    assert untimed(a["metrics"]) == untimed(b["metrics"])


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, "the run ended before writing a checkpoint"
        assert time.time() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.01)


def test_sigkill_at_random_moments_then_resume_ends_bit_identical(data_dir, tmp_path):
    """A checkpoint every step: many of the kills land while one is being written."""
    run = ["--epochs", 2, "--checkpoint-every", 1]
    straight = tmp_path / "straight"
    subprocess.run(command(straight, data_dir, *run), check=True, env=ENV, capture_output=True)
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rng = random.Random(0)
    for trial in range(2):
        out = tmp_path / f"killed{trial}"
        for _ in range(2):
            proc = subprocess.Popen(command(out, data_dir, *run, "--resume"), env=ENV, **quiet)
            wait_for(out / "coolmomentum" / "checkpoint.pt", proc)
            time.sleep(rng.uniform(0.0, 1.0))
            proc.kill()
            proc.wait()
        done = subprocess.run(command(out, data_dir, *run, "--resume"), env=ENV,
                              capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert_same_run(straight / "coolmomentum", out / "coolmomentum")


def test_a_kill_while_writing_leaves_a_checkpoint_that_loads(tmp_path):
    """A process that does nothing but write (large) checkpoints, killed at random times."""
    script = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from coolmomentum.experiments import checkpoint\n"
        "run_dir = Path(sys.argv[1])\n"
        "for step in range(10**6):\n"
        "    checkpoint.save(run_dir, {'config': {}, 'step': step, 'metrics': [],\n"
        "                              'model': {'w': torch.full((2**21,), float(step))}})\n"
        "    print(step, flush=True)\n"
    )
    rng = random.Random(1)
    for trial in range(4):
        run_dir = tmp_path / f"run{trial}"
        run_dir.mkdir()
        proc = subprocess.Popen([sys.executable, "-c", script, str(run_dir)], env=ENV,
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert proc.stdout is not None
        proc.stdout.readline()  # one checkpoint is there
        time.sleep(rng.uniform(0.0, 0.5))
        proc.kill()
        proc.wait()
        state = checkpoint.open_run_dir(run_dir, {}, resume=True, log=lambda _: None)
        assert state is not None and torch.equal(
            state["model"]["w"], torch.full((2**21,), float(state["step"])))
        assert not list(run_dir.glob(".*.tmp"))  # a write cut short leaves nothing behind


@pytest.mark.parametrize("hard_links", [True, False])
def test_a_checkpoint_replaced_keeps_the_previous_one(tmp_path, monkeypatch, hard_links):
    """The latest is kept as the previous one; with hard links, the file a reader polls is
    there at every rename (a monitor or a test never finds it missing)."""
    import coolmomentum._io as io_module

    path, previous = tmp_path / "checkpoint.pt", tmp_path / "previous.pt"
    real_replace, renames = os.replace, []

    def replace(src, dst):
        renames.append(path.exists())
        real_replace(src, dst)
        renames.append(path.exists())

    def no_link(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(io_module.os, "replace", replace)
    if not hard_links:
        monkeypatch.setattr(io_module.os, "link", no_link)
    for version in ("one", "two", "three"):
        io_module.atomic_write(path, version, previous=previous)
    assert path.read_text() == "three" and previous.read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "previous.pt"]
    assert all(renames[2:]) == hard_links  # the first write has no file to keep
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() makes it, not 0600


def test_sigterm_mid_epoch_writes_that_step_and_exits_75_then_resumes_exactly(data_dir, tmp_path):
    run = ["--epochs", 2]
    straight = tmp_path / "straight"
    subprocess.run(command(straight, data_dir, *run), check=True, env=ENV, capture_output=True)
    out = tmp_path / "preempted"
    proc = subprocess.Popen(command(out, data_dir, *run, "--checkpoint-every", 5), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for(out / "coolmomentum" / "checkpoint.pt", proc)  # step 5: training is under way
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    state = torch.load(out / "coolmomentum" / "checkpoint.pt", weights_only=True)
    assert f"preempted at step {state['step']}" in err and state["step"] % 16 != 0
    assert state["stretch"] is not None  # the epoch's running metrics so far
    done = subprocess.run(command(out, data_dir, *run, "--resume"), env=ENV,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0 and f"resuming after step {state['step']}" in done.stdout
    assert_same_run(straight / "coolmomentum", out / "coolmomentum")


def test_a_second_signal_ends_the_process_at_once():
    code = (
        "import os, signal, time\n"
        "from coolmomentum.experiments.distributed import World\n"
        "from coolmomentum.experiments.control import Control\n"
        "with Control(World(), None) as control:\n"
        "    os.kill(os.getpid(), signal.SIGUSR1)\n"
        "    assert control.signalled == signal.SIGUSR1\n"
        "    print('first handled', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
        "    print('still here')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert proc.stdout == "first handled\n" and proc.returncode == -signal.SIGTERM


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is absent")
def test_a_rank_killed_under_torchrun_ends_the_job_and_it_resumes_exactly(data_dir, tmp_path):
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", "-m")  # fmt: skip
    run = ["--epochs", 2, "--checkpoint-every", 4]
    straight = tmp_path / "straight"
    done = subprocess.run(command(straight, data_dir, *run, launcher=torchrun), env=ENV,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = tmp_path / "killed"
    ckpt = out / "coolmomentum" / "checkpoint.pt"
    proc = subprocess.Popen(command(out, data_dir, *run, "--resume", launcher=torchrun),
                            env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    wait_for(ckpt, proc)
    workers = _children(proc.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)  # rank 1 vanishes; rank 0 waits in a collective
    assert proc.wait(timeout=120) != 0  # the launcher ends the job: no hang
    # Preempted by the launcher's SIGTERM (what SLURM and Kubernetes send): the workers
    # agree on a step, write it, and exit 75; the launcher reports a failure.
    proc = subprocess.Popen(command(out, data_dir, *run, "--resume", launcher=torchrun),
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    before = torch.load(ckpt, weights_only=True)["step"]
    deadline = time.time() + 120
    while torch.load(ckpt, weights_only=True)["step"] == before and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "preempted at step" in err
    done = subprocess.run(command(out, data_dir, *run, "--resume", launcher=torchrun),
                          env=ENV, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert_same_run(straight / "coolmomentum", out / "coolmomentum")


@pytest.mark.skipif(not torch.distributed.is_available() or not Path("/proc/self/task").is_dir(),
                    reason="needs torch.distributed and Linux's /proc")  # fmt: skip
def test_closing_the_world_stops_gloos_threads_so_a_finished_run_cannot_abort_at_exit(tmp_path):
    """Threads of gloo left running into interpreter shutdown abort a finished run (SIGABRT,
    now and then) when they release a collective's tensors there; DDP must not keep them."""
    script = tmp_path / "ddp.py"
    script.write_text(
        "import os, torch\n"
        "from coolmomentum.experiments.distributed import setup\n"
        "world, _ = setup(torch.device('cpu'))\n"
        "model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 1))\n"
        "model(torch.ones(2, 3)).sum().backward()\n"
        "del model\n"
        "world.close()\n"
        "names = [open(f'/proc/self/task/{t}/comm').read().strip()\n"
        "         for t in os.listdir('/proc/self/task')]\n"
        "assert not [n for n in names if 'gloo' in n], names\n"
    )
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(script)], env=ENV, capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Data, and a finished 2-epoch run with its latest and previous checkpoints."""
    root = tmp_path_factory.mktemp("finished")
    write_fashion_mnist(root / "fmnist", n_train=128, n_test=16)
    args = ["train", *TINY, "--data-dir", str(root / "fmnist"), "--epochs", "2", "--out",
            str(root / "out")]  # fmt: skip
    assert cli.main(args) == 0
    assert (root / "out" / "coolmomentum" / checkpoint.PREVIOUS).exists()
    return root


def _two_checkpoints(finished: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the finished run (its output folder) and the data folder."""
    shutil.copytree(finished / "out", tmp_path / "out")
    return tmp_path / "out" / "coolmomentum", finished / "fmnist"


def _flip_a_tensor_byte(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename),
                   key=lambda i: i.file_size)  # fmt: skip
    raw = bytearray(path.read_bytes())
    header = info.header_offset  # the local header: name and extra lengths at 26 and 28
    name_len, extra_len = (int.from_bytes(raw[header + k : header + k + 2], "little")
                           for k in (26, 28))  # fmt: skip
    start = header + 30 + name_len + extra_len
    raw[start + info.file_size // 2] ^= 0x10  # a bit inside the largest tensor
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "flipped byte"])
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(finished, tmp_path, damage,
                                                             capsys):  # fmt: skip
    run_dir, data_dir = _two_checkpoints(finished, tmp_path)
    latest = run_dir / checkpoint.CHECKPOINT
    previous_step = torch.load(run_dir / checkpoint.PREVIOUS, weights_only=True)["step"]
    raw = latest.read_bytes()
    if damage == "truncated":
        latest.write_bytes(raw[: len(raw) // 2])
    elif damage == "empty":
        latest.write_bytes(b"")
    elif damage == "garbage":
        latest.write_bytes(random.Random(0).randbytes(4096))
    else:
        _flip_a_tensor_byte(latest)
    saved = torch.load(run_dir / checkpoint.PREVIOUS, weights_only=True)["config"]
    lines: list[str] = []
    state = checkpoint.open_run_dir(run_dir, saved, resume=True, log=lines.append)
    assert state is not None and state["step"] == previous_step == 16
    assert lines[0].startswith(f"cannot resume from {latest}: ")
    assert lines[1] == f"resuming from the previous checkpoint, {run_dir / checkpoint.PREVIOUS}"
    if damage == "flipped byte":
        assert "do not match their checksum" in lines[0]
    # Through the command line, the run then finishes where it would have.
    capsys.readouterr()
    assert cli.main(["train", *TINY, "--data-dir", str(data_dir), "--epochs", "2", "--out",
                     str(tmp_path / "out"), "--resume"]) == 0  # fmt: skip
    assert "resuming from the previous checkpoint" in capsys.readouterr().out


def test_temporary_files_left_by_a_killed_write_are_removed_on_resume(finished, tmp_path):
    run_dir, _ = _two_checkpoints(finished, tmp_path)
    left = [run_dir / f".{checkpoint.CHECKPOINT}.k3x9.tmp",
            run_dir / f".{checkpoint.CHECKPOINT}.k3x9.link.tmp",
            run_dir / f".{checkpoint.METRICS}.w7q1.tmp"]  # fmt: skip
    for path in left:
        path.write_bytes(b"a part of a file")
    mine = run_dir / ".notes.tmp"  # not the run's: kept
    mine.write_text("kept")
    config = torch.load(run_dir / checkpoint.CHECKPOINT, weights_only=True)["config"]
    lines: list[str] = []
    state = checkpoint.open_run_dir(run_dir, config, resume=True, log=lines.append)
    assert state is not None and not any(p.exists() for p in left) and mine.exists()
    assert lines == [f"removed 3 temporary file(s) that a write interrupted in {run_dir} left"]


def test_no_readable_checkpoint_is_a_clear_error_naming_the_files(finished, tmp_path, capsys):
    out = tmp_path / "out"
    run_dir, data_dir = _two_checkpoints(finished, tmp_path)
    (run_dir / checkpoint.CHECKPOINT).write_bytes(b"")
    (run_dir / checkpoint.PREVIOUS).write_bytes(b"not a zip file at all")
    capsys.readouterr()
    args = ["train", *TINY, "--data-dir", str(data_dir), "--epochs", "2", "--out", str(out)]
    assert cli.main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("coolmomentum: error: no checkpoint of ")
    assert "checkpoint.pt" in err and "checkpoint.prev.pt" in err and "restore a copy" in err
    assert "weights_only" not in err and "Traceback" not in err
    # Nothing to resume is said, not silently restarted.
    fresh = tmp_path / "fresh"
    assert cli.main(["train", *TINY, "--data-dir", str(data_dir), "--epochs", "1", "--out",
                     str(fresh), "--resume"]) == 0  # fmt: skip
    assert f"no checkpoint in {fresh / 'coolmomentum'}: starting a new run" in (
        capsys.readouterr().out)


def test_a_failed_write_keeps_the_previous_checkpoint_and_stops_clearly(data_dir, tmp_path,
                                                                       monkeypatch):  # fmt: skip
    import coolmomentum._io as io_module

    config = RunConfig(dataset="fashion-mnist", data_dir=str(data_dir), batch_size=8, seed=3,
                       epochs=3)  # fmt: skip
    data = InMemoryData(config, torch.device("cpu"))
    run_dir = tmp_path / "run"
    real_fsync, synced = os.fsync, []

    def fsync(fd):
        synced.append(fd)
        if len(synced) > 6:  # the first checkpoint, its metrics, their folders: then full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(io_module.os, "fsync", fsync)
    with pytest.raises(CheckpointWriteError, match=r"cannot write the checkpoint .*No space left"):
        loop.train(config, config.runs[0], run_dir, data, log=lambda _: None)
    monkeypatch.undo()
    kept = torch.load(run_dir / checkpoint.CHECKPOINT, weights_only=True)
    assert kept["step"] == 16 and not list(run_dir.glob(".*.tmp"))


def _poisoned(monkeypatch, at_calls):
    """The training loss is NaN at the given calls (counted from 0)."""
    real, calls = loop.F.cross_entropy, []

    def cross_entropy(logits, y, **kwargs):
        loss = real(logits, y, **kwargs)
        if "reduction" in kwargs:  # an evaluation
            return loss
        calls.append(None)
        return loss * float("nan") if len(calls) - 1 in at_calls else loss

    monkeypatch.setattr(loop.F, "cross_entropy", cross_entropy)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(data_dir, tmp_path,
                                                                       monkeypatch):  # fmt: skip
    config = RunConfig(dataset="fashion-mnist", data_dir=str(data_dir), batch_size=8, seed=3,
                       epochs=2)  # fmt: skip
    data = InMemoryData(config, torch.device("cpu"))
    _poisoned(monkeypatch, {20})  # training step 20, in epoch 2
    with pytest.raises(Diverged, match=r"not finite at step 20 \(lr 0\.01\): the run diverged"):
        loop.train(config, config.runs[0], tmp_path / "run", data, log=lambda _: None)
    kept = torch.load(tmp_path / "run" / checkpoint.CHECKPOINT, weights_only=True)
    assert kept["step"] == 16  # the end of epoch 1: nothing after the loss went bad


def test_skipped_non_finite_steps_do_not_advance_the_cooling(data_dir, tmp_path, monkeypatch):
    config = RunConfig(dataset="fashion-mnist", data_dir=str(data_dir), batch_size=8, seed=3,
                       epochs=2, on_nonfinite="skip")  # fmt: skip
    data = InMemoryData(config, torch.device("cpu"))
    _poisoned(monkeypatch, {3, 4})
    metrics = loop.train(config, config.runs[0], tmp_path / "run", data, log=lambda _: None)
    assert [m["skipped_steps"] for m in metrics] == [2, 0]
    from coolmomentum.experiments.report import table

    assert table({"run": metrics})[0].endswith(" skipped steps (non-finite loss) |")
    assert table({"run": metrics})[2].endswith(" 2 |")
    state = torch.load(tmp_path / "run" / checkpoint.CHECKPOINT, weights_only=True)
    assert state["step"] == 32 and int(state["optimizer"]["param_groups"][0]["step"]) == 30


# --- every flag, with values good and bad ------------------------------------------------------

# Texts tried for a flag that takes a value: numbers at the edges, junk, lists.
VALUES = ["0", "1", "2", "-1", "0.5", "1e-3", "nan", "inf", "abc", "", "1,2", "3:0.5"]
# Flags left out: they only slow a run down (compiling) or replace the folders set below.
LEFT_OUT = {"--compile", "--out", "--data-dir", "--help", "--progress", "--no-progress"}


def _flags(parser):
    """``{command: [(flag, values or None for a switch)]}`` of the real command line."""
    import argparse

    def options(p):
        found = []
        for action in p._actions:
            names = [o for o in action.option_strings if o.startswith("--")]
            if not names or names[0] in LEFT_OUT:
                continue
            if action.nargs == 0:
                found.append((names[0], None))
            else:
                choices = list(action.choices or [])
                found.append((names[0], [*choices, "bogus"] if choices else VALUES))
        return found

    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {name: options(p) for name, p in commands.choices.items() if name != "report"}
    anneal = flags.pop("anneal")
    problems = next(a for a in commands.choices["anneal"]._actions
                    if isinstance(a, argparse._SubParsersAction))  # fmt: skip
    for name, p in problems.choices.items():
        flags[f"anneal {name}"] = anneal + options(p)
    return flags


def test_every_flag_with_random_values_gives_a_run_or_a_clear_error(finished, tmp_path_factory):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    flags = _flags(cli.build_parser())
    bases = {
        "train": ["--dataset", "fashion-mnist", "--data-dir", str(finished / "fmnist"),
                  "--batch-size", "8", "--max-steps", "2", "--no-progress"],
        "anneal lj": ["--atoms", "5", "--replicas", "2", "--steps", "2", "--quench-steps", "2"],
        "anneal thomson": ["--charges", "5", "--replicas", "2", "--steps", "2",
                           "--quench-steps", "2"],
    }  # fmt: skip
    bases["compare"] = [*bases["train"], "--optimizers", "sgd"]

    @st.composite
    def command_lines(draw):
        command = draw(st.sampled_from(sorted(flags)))
        options = st.sampled_from(flags[command])
        chosen = draw(st.lists(options, max_size=3, unique_by=lambda f: f[0]))
        words = [*command.split(), *bases[command]]
        for flag, values in chosen:
            words += [flag] if values is None else [flag, draw(st.sampled_from(values))]
        return words

    @settings(max_examples=30, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(command_lines())
    def check(words):
        out = tmp_path_factory.mktemp("flags")
        try:
            status = cli.main([*words, "--out", str(out)])
        except SystemExit as e:  # argparse: a usage line and the bad argument
            assert e.code == 2, words
            return
        assert status in (0, 2), words

    check()
