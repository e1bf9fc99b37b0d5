"""CoolMomentum under PyTorch Lightning: the logged momentum, checkpoint resume, DDP."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _installed import require

require("lightning", "lightning")

import _lightning_cases as cases  # noqa: E402
from _reference import reference_rho  # noqa: E402
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from coolmomentum.schedules import DEFAULT_SCHEDULE  # noqa: E402

HERE = Path(__file__).parent
OPTIMIZERS = ["coolmomentum", "sgd-cooled"]


def rho(k: int) -> float:
    return reference_rho(k, DEFAULT_SCHEDULE, cases.RHO_0, cases.STEPS)


def logged(path: Path, column: str) -> dict[int, float]:
    with path.open() as f:
        return {int(row["step"]): float(row[column]) for row in csv.DictReader(f) if row[column]}


# What LearningRateMonitor reads before step k: SGD's momentum set by MomentumCooling for step
# k; CoolMomentum's read-only mirror of the latest step's rho (rho_0 before the first).
MONITORED = {
    "coolmomentum": ("lr-CoolMomentum-momentum", lambda k: rho(max(k - 1, 0))),
    "sgd-cooled": ("lr-SGD-momentum", rho),
}


@pytest.mark.filterwarnings("error:You have set log_momentum=True")  # "... logs 0"
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_learning_rate_monitor_logs_the_cooling(tmp_path, optimizer):
    logger = CSVLogger(tmp_path)
    monitor = LearningRateMonitor(logging_interval="step", log_momentum=True)
    run = cases.trainer(logger=logger, log_every_n_steps=1, callbacks=[monitor])
    run.fit(cases.Regression(optimizer))
    column, expected = MONITORED[optimizer]
    momentum = logged(Path(logger.log_dir) / "metrics.csv", column)
    assert sorted(momentum) == list(range(cases.STEPS))  # logged before every step
    for k, value in momentum.items():
        assert value == pytest.approx(expected(k), abs=1e-12)
    assert momentum[cases.STEPS - 1] < 0.2  # cooled from 0.9


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_resume_from_a_lightning_checkpoint_ends_with_the_same_weights(tmp_path, optimizer):
    whole = cases.Regression(optimizer)
    every_epoch = ModelCheckpoint(tmp_path, "{epoch}", save_top_k=-1, every_n_epochs=1)
    cases.trainer(enable_checkpointing=True, callbacks=[every_epoch]).fit(whole)

    resumed = cases.Regression(optimizer)
    run = cases.trainer()
    run.fit(resumed, ckpt_path=tmp_path / "epoch=1.ckpt", weights_only=True)  # half-way
    for name, value in resumed.net.state_dict().items():
        torch.testing.assert_close(value, whole.net.state_dict()[name], rtol=0, atol=0)
    assert run.global_step == cases.STEPS


def test_ddp_on_two_cpu_processes_matches_one_process(tmp_path):
    """Each rank trains on half of every global batch; the run equals one process's."""
    out = tmp_path / "ddp.pt"
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, str(HERE / "_lightning_cases.py"), str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)

    single = cases.Regression()
    cases.trainer().fit(single)
    assert ddp["step"] == cases.STEPS  # the schedule counts global steps, as in one process
    for name, value in single.net.state_dict().items():
        torch.testing.assert_close(ddp["weights"][name], value, rtol=1e-12, atol=1e-14)
