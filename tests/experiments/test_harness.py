"""The training harness and its command line, end to end on tiny files in the official formats."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_data import write_fashion_mnist

from coolmomentum import cli, schedules
from coolmomentum.experiments.checkpoint import load_metrics
from coolmomentum.experiments.config import ConfigError, RunConfig
from coolmomentum.experiments.data import InMemoryData
from coolmomentum.experiments.loop import evaluate, train
from coolmomentum.experiments.optimizers import OptimizerSpec, param_groups
from coolmomentum.experiments.presets import PRESETS
from coolmomentum.experiments.report import PLOTS

TINY = ["--dataset", "fashion-mnist", "--model", "convnet", "--batch-size", "16", "--seed", "3"]


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("COOLMOMENTUM_DATA", raising=False)
    folder = tmp_path / "fmnist"
    write_fashion_mnist(folder, n_train=64, n_test=24)
    return folder


def run_cli(*args):
    return cli.main([str(a) for a in args])


def test_compare_writes_configs_metrics_checkpoints_and_the_report(data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("compare", *TINY, "--data-dir", data_dir, "--epochs", 2, "--out", out) == 0
    for label in ("coolmomentum", "sgd", "adam"):
        run = out / label
        config = json.loads((run / "config.json").read_text())
        assert config["runs"][0]["optimizer"] == label
        assert config["epochs"] == 2 and config["batch_size"] == 16
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [m["epoch"] for m in metrics] == [1, 2]
        for m in metrics:
            assert set(m) >= {
                "train_loss",
                "train_acc",
                "test_loss",
                "test_acc",
                "lr",
                "rho",
                "temperature",
                "seconds",
            }
            assert math.isfinite(m["train_loss"]) and 0 <= m["test_acc"] <= 1
        ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
        assert ckpt["epoch"] == 2 and ckpt["metrics"] == metrics
        assert not list(run.glob("*.tmp"))
    cool = [
        json.loads(line) for line in (out / "coolmomentum/metrics.jsonl").read_text().splitlines()
    ]
    # 64 images, batch 16: 4 steps per epoch, cooling over all 8 steps; rho of the last step.
    assert cool[0]["rho"] == pytest.approx(schedules.rho(3, total_steps=8), rel=1e-12)
    assert cool[1]["rho"] == pytest.approx(schedules.rho(7, total_steps=8), rel=1e-12)
    assert cool[0]["temperature"] > 0
    report = (out / "report.md").read_text()
    for label in ("coolmomentum", "sgd", "adam"):
        assert f"| {label} | 2 |" in report
    for name, *_ in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in report
    assert "report:" in capsys.readouterr().out


def test_runs_with_one_seed_share_initial_weights_and_batches(data_dir, tmp_path):
    out = tmp_path / "out"
    common = [*TINY, "--data-dir", data_dir, "--epochs", 1, "--lr", 1e-12]
    run_cli("compare", *common, "--optimizers", "sgd,adam", "--out", out)
    a = torch.load(out / "sgd/checkpoint.pt", weights_only=True)
    b = torch.load(out / "adam/checkpoint.pt", weights_only=True)
    # With a negligible step both runs stay at the shared initial weights and saw the same data.
    for key, value in a["model"].items():
        if value.is_floating_point() and "running" not in key:
            torch.testing.assert_close(value, b["model"][key], rtol=0, atol=1e-6)
    assert a["metrics"][0]["train_loss"] == pytest.approx(b["metrics"][0]["train_loss"], rel=1e-5)


def _cli_command(out, data_dir, epochs, *extra):
    return [
        sys.executable,
        "-m",
        "coolmomentum",
        "train",
        *TINY,
        "--data-dir",
        str(data_dir),
        "--epochs",
        str(epochs),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def test_killed_run_resumes_to_exactly_the_uninterrupted_result(data_dir, tmp_path):
    epochs = 6
    straight = tmp_path / "straight"
    subprocess.run(_cli_command(straight, data_dir, epochs), check=True, capture_output=True)

    killed = tmp_path / "killed"
    ckpt = killed / "coolmomentum" / "checkpoint.pt"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for kill_after_epoch in (1, 3):
        proc = subprocess.Popen(
            _cli_command(killed, data_dir, epochs, "--resume"),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            if ckpt.exists() and torch.load(ckpt, weights_only=True)["epoch"] >= kill_after_epoch:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    done = subprocess.run(
        _cli_command(killed, data_dir, epochs, "--resume"),
        check=True,
        capture_output=True,
        text=True,
    )
    assert "resuming after step" in done.stdout

    a = torch.load(straight / "coolmomentum/checkpoint.pt", weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert b["epoch"] == epochs
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key

    def timeless(metrics):
        return [
            {k: v for k, v in m.items() if k not in ("seconds", "images_per_s")} for m in metrics
        ]

    assert timeless(a["metrics"]) == timeless(b["metrics"])
    assert timeless(load_metrics(killed / "coolmomentum")) == timeless(a["metrics"])


def test_a_cooled_adamw_cools_its_first_beta_and_resumes_exactly(data_dir, tmp_path):
    """adamw-cooled: AdamW with beta1 along linear-temperature from 0.9 (Demon), the momentum
    reported as rho; a run stopped after epoch 1 and resumed ends as an uninterrupted one."""
    from coolmomentum import schedules

    config = RunConfig(dataset="fashion-mnist", data_dir=str(data_dir), batch_size=16, seed=3,
                       epochs=3, runs=[{"optimizer": "adamw-cooled", "lr": 1e-3}])  # fmt: skip
    spec = config.runs[0]
    data = InMemoryData(config, torch.device("cpu"))
    straight = train(config, spec, tmp_path / "straight", data, log=lambda _: None)
    # rho of each epoch's last step (3, 7, 11) of the 12 steps' cooling
    expected = [schedules.rho(k, rho_0=0.9, total_steps=12, schedule="linear-temperature")
                for k in (3, 7, 11)]  # fmt: skip
    assert [m["rho"] for m in straight] == pytest.approx(expected, rel=1e-12)

    def stop_after_first_epoch(line):
        if "epoch 1/3" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, spec, tmp_path / "resumed", data, log=stop_after_first_epoch)
    resumed = train(config, spec, tmp_path / "resumed", data, resume=True, log=lambda _: None)

    def timeless(metrics):
        return [{k: v for k, v in m.items() if k not in ("seconds", "images_per_s")}
                for m in metrics]  # fmt: skip

    assert timeless(resumed) == timeless(straight)


def test_existing_checkpoint_needs_resume_and_the_same_config(data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["train", *TINY, "--data-dir", data_dir, "--epochs", 1, "--out", out]
    assert run_cli(*args) == 0
    assert run_cli(*args) == 2
    assert "pass --resume to continue" in capsys.readouterr().err
    assert run_cli(*args, "--resume", "--lr", 0.5) == 2
    err = capsys.readouterr().err
    assert "written by another configuration" in err and "0.5" in err
    assert run_cli(*args, "--resume", "--epochs", 2) == 2
    assert "epochs: 1 in the checkpoint, 2 now" in capsys.readouterr().err
    # Where the data lives may change between a run and its resumption.
    moved = tmp_path / "moved"
    data_dir.rename(moved)
    assert (
        run_cli("train", *TINY, "--data-dir", moved, "--epochs", 1, "--out", out, "--resume") == 0
    )


def test_missing_data_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from coolmomentum.experiments import datasets

    monkeypatch.delenv("COOLMOMENTUM_DATA", raising=False)
    monkeypatch.setattr(datasets, "SYSTEM_FASHION_MNIST_DIR", tmp_path / "none")
    assert run_cli("train", *TINY, "--data-dir", tmp_path / "empty", "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "dataset-fashion-mnist" in err and str(tmp_path / "empty") in err


def test_bad_settings_are_clear_errors(data_dir, tmp_path, capsys):
    base = ["compare", *TINY, "--data-dir", data_dir, "--out", tmp_path / "o"]
    assert run_cli(*base, "--set", "sgd.nonsense=1") == 2
    assert "'nonsense' is not an optimizer setting" in capsys.readouterr().err
    assert run_cli(*base, "--set", "lamb.lr=1") == 2
    assert "expected LABEL.KEY=VALUE" in capsys.readouterr().err
    assert run_cli(*base, "--optimizers", "lamb") == 2
    assert "unknown optimizer 'lamb'" in capsys.readouterr().err
    assert run_cli(*base, "--batch-size", 1000) == 2
    assert "larger than the 64 training images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(*base, "--lr-decay", "80-0.1")
    assert "EPOCH:FACTOR" in capsys.readouterr().err


def test_a_flag_that_applies_to_none_of_its_runs_is_an_error_naming_it(data_dir, tmp_path,
                                                                        capsys):  # fmt: skip
    base = [*TINY, "--data-dir", data_dir, "--out", tmp_path / "o", "--epochs", 1]
    assert run_cli("train", *base, "--optimizer", "adam", "--nesterov") == 2
    err = capsys.readouterr().err
    assert "--nesterov does not apply to the runs it would set: adam (adam)" in err
    assert "it is a setting of sgd" in err
    assert run_cli("compare", *base, "--optimizers", "adam,adamw", "--momentum", 0.5) == 2
    assert "--momentum does not apply to the runs it would set: adam (adam), adamw" in (
        capsys.readouterr().err)  # fmt: skip
    assert run_cli("compare", *base, "--set", "adam.rho_0=0.9") == 2
    assert "rho_0 does not apply to adam (it is a setting of coolmomentum, sgd-cooled, " in (
        capsys.readouterr().err)  # fmt: skip
    with pytest.raises(ConfigError, match="lr_schedule does not apply to sgd-schedulefree"):
        RunConfig(runs=[{"optimizer": "sgd-schedulefree", "lr_schedule": "cosine"}])
    # In a comparison a flag sets the runs it fits and leaves the others alone.
    out = tmp_path / "fits"
    assert run_cli("compare", *base[:-4], "--out", out, "--epochs", 1, "--optimizers",
                   "sgd,adam", "--nesterov", "--momentum", 0.5) == 0  # fmt: skip
    sgd, adam = (json.loads((out / f"{name}/config.json").read_text())["runs"][0]
                 for name in ("sgd", "adam"))  # fmt: skip
    assert (sgd["nesterov"], sgd["momentum"]) == (True, 0.5)
    assert "nesterov" not in adam and "momentum" not in adam


def test_a_run_recorded_with_every_optimizer_setting_still_resumes(data_dir, tmp_path, capsys):
    """Earlier versions recorded every setting of every optimizer in a run's configuration; a
    checkpoint they wrote resumes, unless a setting that does not apply held another value."""
    from coolmomentum.experiments import checkpoint

    out = tmp_path / "out"
    args = ["train", *TINY, "--data-dir", data_dir, "--out", out, "--optimizer", "adam",
            "--epochs", 1]  # fmt: skip
    assert run_cli(*args) == 0

    def rewrite(**settings):
        state = torch.load(out / "adam" / checkpoint.CHECKPOINT, weights_only=True)
        state.pop(checkpoint.CHECKSUM)
        state["config"]["runs"][0].update(settings)
        checkpoint.save(out / "adam", state)

    uniform = {"rho_0": 0.99, "schedule": "exponential", "total_steps": None, "hot_epochs": 0.0,
               "momentum_warmup_steps": 0, "momentum": 0.9, "nesterov": False, "rms_decay": 0.9,
               "eps": 1e-3}  # fmt: skip
    rewrite(**uniform)
    capsys.readouterr()
    assert run_cli(*args, "--resume") == 0
    assert "resuming after step 4" in capsys.readouterr().out
    rewrite(nesterov=True)
    assert run_cli(*args, "--resume") == 2
    err = capsys.readouterr().err
    assert "was written by another configuration (runs: " in err and "'nesterov': True" in err


def test_a_diverged_run_names_the_flags_that_help(data_dir, tmp_path, capsys):
    args = ["train", *TINY, "--data-dir", data_dir, "--out", tmp_path / "o", "--epochs", 1,
            "--optimizer", "sgd", "--lr", 1e30]  # fmt: skip
    assert run_cli(*args) == 2
    err = capsys.readouterr().err
    assert "the training loss is not finite at step" in err and "lower --lr" in err


def test_set_changes_one_run_and_lr_decay_steps_the_learning_rate(data_dir, tmp_path):
    out = tmp_path / "out"
    run_cli(
        "compare",
        *TINY,
        "--data-dir",
        data_dir,
        "--epochs",
        3,
        "--out",
        out,
        "--optimizers",
        "sgd,adam",
        "--set",
        "sgd.lr=0.2",
        "--set",
        "sgd.lr_decay=1:0.5,2:0.1",
        "--set",
        "sgd.lr_schedule=constant",
        "--set",
        "adam.lr=0.001",
        "--set",
        "adam.lr_schedule=cosine",
    )
    sgd = load_metrics(out / "sgd")
    assert [m["lr"] for m in sgd] == pytest.approx([0.2, 0.1, 0.02])
    # Adam (not in the demo: made from its defaults) decays along a cosine over the run's 12
    # steps; each record holds the lr of its epoch's last step.
    cosine = [1e-3 * 0.5 * (1 + math.cos(math.pi * k / 12)) for k in (3, 7, 11)]
    adam = load_metrics(out / "adam")
    assert [m["lr"] for m in adam] == pytest.approx(cosine, rel=1e-12)
    samples = [s["lr"] for m in adam for s in m["samples"]]
    assert samples == pytest.approx(cosine, rel=1e-12)  # sampled every 25 steps and at the end


def test_hot_phase_in_epochs_holds_rho_0_then_cools_over_the_rest(data_dir, tmp_path):
    out = tmp_path / "out"
    run_cli(
        "train",
        *TINY,
        "--data-dir",
        data_dir,
        "--epochs",
        3,
        "--out",
        out,
        "--hot-epochs",
        1,
        "--schedule",
        "linear-temperature",
    )
    rhos = [m["rho"] for m in load_metrics(out / "coolmomentum")]
    expected = [
        schedules.rho(k, total_steps=8, hot_steps=4, schedule="linear-temperature")
        for k in (3, 7, 11)
    ]
    assert rhos == pytest.approx(expected, rel=1e-12)
    assert rhos[0] == 0.99 and 0 < rhos[2] < rhos[1] < 0.99


def test_paper_presets_hold_the_authors_values():
    r20, r34 = PRESETS["paper-resnet20-cifar10"], PRESETS["paper-resnet34-cifar10"]
    assert (r20["model"], r20["batch_size"], r20["epochs"]) == ("resnet20", 32, 200)
    assert r20["normalize"] == "pixel-mean" and r20["augment"] == "shift-flip"
    runs = {r["optimizer"]: r for r in r20["runs"]}
    assert (runs["coolmomentum"]["lr"], runs["coolmomentum"]["rho_0"]) == (0.01, 0.99)
    assert runs["adam"]["lr"] == 1e-3 and runs["sgd"]["momentum"] == 0.9
    assert "lr_decay" not in runs["coolmomentum"]
    (cool,) = r34["runs"]
    assert cool["total_steps"] == 200 * math.ceil(50000 / 128) == 78200
    assert (r34["batch_size"], r34["drop_last"], cool["weight_decay"]) == (128, False, 5e-4)
    assert r34["model_init"] == "pytorch"  # models/resnet_cifar10.py has no init code
    lin = PRESETS["cooling-lin-vs-exp"]["runs"]
    assert sorted(r["hot_epochs"] for r in lin) == [100, 100, 150, 150]
    # The README's "exponential" arm is optimizers/coolmomentum.py: the temperature law.
    assert {r["schedule"] for r in lin} == {"exponential-temperature", "linear-temperature"}
    assert PRESETS["cooling-lin-vs-exp"]["model_init"] == "pytorch"
    for name, preset in PRESETS.items():
        config = RunConfig(**preset, preset=name)
        assert [r.label for r in config.runs] == [
            r.get("label", r["optimizer"]) for r in preset["runs"]
        ]


def test_resnet20_preset_decays_conv_kernels_only():
    from coolmomentum.experiments.models import build_model

    model = build_model("resnet20", 3, 10)
    spec = OptimizerSpec(optimizer="coolmomentum", weight_decay=2e-4)
    decay, no_decay = param_groups(model, spec, "conv")
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert {id(p) for p in decay["params"]} == {id(p) for p in convs}
    assert no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="the Debian package dataset-fashion-mnist is not installed",
)
def test_smoke_on_real_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.delenv("COOLMOMENTUM_DATA", raising=False)
    out = tmp_path / "real"
    assert (
        run_cli("train", "--epochs", 1, "--train-subset", 2048, "--test-subset", 1000, "--out", out)
        == 0
    )
    (m,) = load_metrics(out / "coolmomentum")
    assert m["test_acc"] > 0.5  # ten classes: chance is 0.1


def _torchrun(out, data_dir, epochs, *extra):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "coolmomentum", "train", *TINY, "--data-dir", str(data_dir),
            "--epochs", str(epochs), "--out", str(out), "--no-progress", *extra]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is absent")
def test_two_rank_torchrun_killed_and_resumed_matches_an_uninterrupted_run(data_dir, tmp_path):
    epochs = 4
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    straight = tmp_path / "straight"
    done = subprocess.run(_torchrun(straight, data_dir, epochs), capture_output=True, text=True,
                          env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    logged = (straight / "coolmomentum/config.json").read_text()
    assert json.loads(logged)["world_size"] == 2

    killed = tmp_path / "killed"
    ckpt = killed / "coolmomentum" / "checkpoint.pt"
    proc = subprocess.Popen(_torchrun(killed, data_dir, epochs, "--resume"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (
        ckpt.exists() and torch.load(ckpt, weights_only=True)["epoch"] >= 2
    ):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks
    proc.wait()
    done = subprocess.run(_torchrun(killed, data_dir, epochs, "--resume"), capture_output=True,
                          text=True, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "resuming after step" in done.stdout

    a = torch.load(straight / "coolmomentum/checkpoint.pt", weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for m, n in zip(a["metrics"], b["metrics"], strict=True):
        assert {k: v for k, v in m.items() if k not in ("seconds", "images_per_s")} == {
            k: v for k, v in n.items() if k not in ("seconds", "images_per_s")}

    # A different world size is refused, naming both.
    single = subprocess.run(_cli_command(killed, data_dir, epochs, "--resume"),
                            capture_output=True, text=True)
    assert single.returncode == 2
    assert "world_size: 2 in the checkpoint, 1 now" in single.stderr


def test_global_batch_must_split_evenly_over_ranks(data_dir, tmp_path, monkeypatch):
    from coolmomentum.experiments.distributed import World

    config = RunConfig(dataset="fashion-mnist", data_dir=str(data_dir), batch_size=15)
    with pytest.raises(ConfigError, match="divisible by the world size"):
        InMemoryData(config, torch.device("cpu"), World(rank=0, size=2))


def test_anneal_runs_from_the_main_command_line(tmp_path, capsys):
    out = tmp_path / "lj"
    assert run_cli("anneal", "lj", "--atoms", 7, "--replicas", 4, "--steps", 50, "--out", out) == 0
    assert "best known minimum" in capsys.readouterr().out
    assert (out / "best.xyz").read_text().startswith("7\n")


def test_every_setting_has_a_flag(data_dir, tmp_path):
    """Settings that presets use are flags too (label smoothing, normalization, warm-up)."""
    out = tmp_path / "out"
    args = [*TINY, "--data-dir", data_dir, "--epochs", 1, "--out", out, "--label-smoothing", 0.1,
            "--normalize", "pixel-mean", "--lr-warmup-steps", 3, "--no-drop-last",
            "--mean", "0.25", "--model-init", "pytorch"]  # fmt: skip
    assert run_cli("train", *args) == 0
    saved = json.loads((out / "coolmomentum/config.json").read_text())
    assert (saved["label_smoothing"], saved["normalize"], saved["drop_last"]) == (
        0.1, "pixel-mean", False)
    assert (saved["mean"], saved["model_init"]) == ([0.25], "pytorch")
    assert saved["runs"][0]["lr_warmup_steps"] == 3
    (m,) = load_metrics(out / "coolmomentum")
    assert m["step"] == 4  # 64 images in batches of 16


def test_flags_and_set_values_are_parsed_by_the_settings_types(data_dir, tmp_path, capsys):
    base = ["compare", *TINY, "--data-dir", data_dir, "--out", tmp_path / "o"]
    assert run_cli(*base, "--set", "sgd.lr=fast") == 2
    assert "could not convert string to float: 'fast'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(*base, "--mean", "a,b")
    assert "expected comma-separated numbers" in capsys.readouterr().err
    assert run_cli(*base, "--mean", "0.1,0.2") == 2
    assert "--mean gives 2 values for 1-channel images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(*base, "--schedule", "cosine")
    assert "invalid choice: 'cosine'" in capsys.readouterr().err


def test_evaluation_every_n_steps_and_a_resume_from_mid_epoch(data_dir, tmp_path):
    """4 steps per epoch, evaluated every 3 steps: at steps 3, 6 and the last, 8."""
    config = RunConfig(dataset="fashion-mnist", data_dir=str(data_dir), batch_size=16, seed=3,
                       epochs=2, eval_every_steps=3, augment="shift-flip")  # fmt: skip
    (spec,) = config.runs
    data = InMemoryData(config, torch.device("cpu"))
    straight = train(config, spec, tmp_path / "straight", data, log=lambda _: None)
    assert [(m["step"], m["epoch"]) for m in straight] == [(3, 0.75), (6, 1.5), (8, 2)]

    def stop_after_first_evaluation(line):
        raise KeyboardInterrupt  # after the checkpoint of step 3, in the middle of epoch 1

    with pytest.raises(KeyboardInterrupt):
        train(config, spec, tmp_path / "resumed", data, log=stop_after_first_evaluation)
    resumed = train(config, spec, tmp_path / "resumed", data, resume=True, log=lambda _: None)
    a = torch.load(tmp_path / "straight/checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed/checkpoint.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    untimed = [{k: v for k, v in m.items() if k not in ("seconds", "images_per_s")}
               for m in (*straight, *resumed)]  # fmt: skip
    assert untimed[:3] == untimed[3:]


def test_baselines_adamw_and_schedule_free_train_and_evaluate(data_dir, tmp_path):
    out = tmp_path / "out"
    assert run_cli("compare", *TINY, "--data-dir", data_dir, "--epochs", 2, "--out", out,
                   "--optimizers", "adamw,sgd-schedulefree,adamw-schedulefree",
                   "--set", "adamw.lr_schedule=cosine", "--set", "sgd-schedulefree.lr=0.5",
                   "--lr-warmup-steps", 2) == 0  # fmt: skip
    for label in ("adamw", "sgd-schedulefree", "adamw-schedulefree"):
        metrics = load_metrics(out / label)
        assert [m["step"] for m in metrics] == [4, 8]
        assert all(math.isfinite(m["train_loss"]) and m["test_acc"] >= 0 for m in metrics)
    assert [m["lr"] for m in load_metrics(out / "sgd-schedulefree")] == [0.5, 0.5]


def test_a_schedule_free_run_is_not_changed_by_its_evaluations(data_dir, tmp_path):
    """Evaluating switches to the averaged weights and recomputes batch norm there; training
    continues from exactly the weights it left, also after a resume."""
    def run(out, **settings):
        config = RunConfig(dataset="fashion-mnist", data_dir=str(data_dir), batch_size=16,
                           seed=3, epochs=2, runs=[{"optimizer": "sgd-schedulefree", "lr": 0.5,
                                                    "lr_warmup_steps": 2}], **settings)  # fmt: skip
        data = InMemoryData(config, torch.device("cpu"))
        return config, data, train(config, config.runs[0], out, data, log=lambda _: None)

    _, _, rare = run(tmp_path / "rare")
    config, data, often = run(tmp_path / "often", eval_every_steps=1)
    assert len(rare) == 2 and len(often) == 8
    assert often[3]["test_loss"] == rare[0]["test_loss"]  # the same weights at step 4

    def stop(line):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, config.runs[0], tmp_path / "resumed", data, log=stop)
    train(config, config.runs[0], tmp_path / "resumed", data, resume=True, log=lambda _: None)
    a = torch.load(tmp_path / "rare/checkpoint.pt", weights_only=True)
    for name in ("often", "resumed"):
        b = torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)
        for key in a["model"]:
            assert torch.equal(a["model"][key], b["model"][key]), (name, key)


def test_recomputed_batch_norm_changes_the_evaluation_and_not_the_training(data_dir, tmp_path):
    """``recompute_batch_norm`` evaluates SGD with batch norm's statistics averaged at the final
    weights (as ``torch.optim.swa_utils.update_bn`` does) and trains exactly as without it."""
    from torch.optim.swa_utils import update_bn

    from coolmomentum.experiments.models import build_model

    def run(name, **settings):
        config = RunConfig(dataset="fashion-mnist", data_dir=str(data_dir), batch_size=16,
                           seed=3, epochs=2, runs=[{"optimizer": "sgd", "lr": 0.2}],
                           **settings)  # fmt: skip
        data = InMemoryData(config, torch.device("cpu"))
        metrics = train(config, config.runs[0], tmp_path / name, data, log=lambda _: None)
        return data, metrics, torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)

    _, plain, a = run("plain")
    data, recomputed, b = run("recomputed", recompute_batch_norm=2)
    for key in a["model"]:  # the running statistics as well: evaluation put them back
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [m["train_loss"] for m in plain] == [m["train_loss"] for m in recomputed]
    assert recomputed[-1]["test_loss"] != plain[-1]["test_loss"]
    model = build_model("convnet", data.in_channels, data.num_classes, "he-normal", 28)
    model.load_state_dict(b["model"])
    update_bn([x for x, *_ in data.train_batches(1)][:2], model)  # the last epoch's first 2
    assert evaluate(model, data)["loss"] == pytest.approx(recomputed[-1]["test_loss"], rel=1e-6)


def test_validation_split_and_the_final_training_set_loss(data_dir, tmp_path):
    out = tmp_path / "out"
    assert run_cli("train", *TINY, "--data-dir", data_dir, "--epochs", 2, "--out", out,
                   "--validation", 16, "--final-train-loss") == 0  # fmt: skip
    first, last = load_metrics(out / "coolmomentum")
    assert first["step"] == 3 and last["step"] == 6  # 48 training images: 3 batches of 16
    assert "val_acc" in last and "test_acc" not in last and last["ema_val_acc"] is None
    assert "train_eval_loss" not in first and math.isfinite(last["train_eval_loss"])
    assert last["train_eval_loss"] != last["train_loss"]  # eval mode at the final weights
    report = (out / "report.md").read_text()
    assert "final val acc" in report and "![validation accuracy](accuracy.png)" in report


def test_temperature_is_the_mean_over_every_element_of_every_group():
    from coolmomentum.experiments.optimizers import RunContext, RunOptimizer
    from coolmomentum.experiments.optimizers.kinds import Built

    torch.manual_seed(0)
    small, big = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(50))
    from coolmomentum import CoolMomentum

    opt = CoolMomentum([{"params": [small], "lr": 0.5}, {"params": [big]}], lr=0.01,
                       total_steps=10)  # fmt: skip
    spec = OptimizerSpec()
    run_opt = RunOptimizer(Built(opt), spec, RunContext(steps_per_epoch=10, total_steps=10))
    small.grad, big.grad = torch.randn(3), torch.randn(50)
    opt.step()
    # The buffers hold v / lr.
    v = torch.cat([g["lr"] * opt.state[p]["momentum_buffer"] for g in opt.param_groups
                   for p in g["params"]])  # fmt: skip
    report = run_opt.report()
    assert report.temperature == pytest.approx(v.square().mean().item(), rel=1e-6)
    assert report.rho == pytest.approx(0.99)
