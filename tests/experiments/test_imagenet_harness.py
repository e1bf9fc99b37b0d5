"""The ImageNet run through the harness: data, EfficientNet-B0, EMA, schedules, presets, errors."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from test_data import write_fashion_mnist
from test_imagenet import _make_tree

from coolmomentum import cli, schedules
from coolmomentum.experiments.checkpoint import load_metrics
from coolmomentum.experiments.config import RunConfig
from coolmomentum.experiments.data import InMemoryData
from coolmomentum.experiments.distributed import World
from coolmomentum.experiments.loop import train
from coolmomentum.experiments.optimizers import (
    OptimizerSpec,
    RunContext,
    TFRMSprop,
    build_optimizer,
    lr_at,
    param_groups,
)
from coolmomentum.experiments.presets import PRESETS
from coolmomentum.experiments.weight_average import WeightAverage

# 12 training images in 3 classes, 5 validation images; batch 4: 3 steps per epoch.
TINY_IMAGENET = ["--dataset", "imagenet", "--model", "efficientnet-b0", "--batch-size", "4",
                 "--image-size", "64", "--workers", "0", "--lr", "0.01", "--no-progress"]
TINY_FMNIST = ["--dataset", "fashion-mnist", "--model", "convnet", "--batch-size", "16",
               "--seed", "3", "--no-progress"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return _make_tree(tmp_path_factory.mktemp("imagenet"))


@pytest.fixture
def fmnist(tmp_path, monkeypatch):
    monkeypatch.delenv("COOLMOMENTUM_DATA", raising=False)
    write_fashion_mnist(tmp_path / "fmnist", n_train=64, n_test=24)
    return tmp_path / "fmnist"


def run_cli(*args):
    return cli.main([str(a) for a in args])


def test_efficientnet_trains_on_an_image_folder_and_evaluates_its_weight_average(tree, tmp_path):
    out = tmp_path / "out"
    args = ["train", *TINY_IMAGENET, "--data-dir", tree, "--out", out, "--ema-decay", 0.9]
    # Three epochs' worth, but the run stops after exactly 5 steps (in its second epoch).
    assert run_cli(*args, "--epochs", 3, "--max-steps", 5) == 0
    metrics = load_metrics(out / "coolmomentum")
    assert [m["step"] for m in metrics] == [3, 5]
    for m in metrics:
        assert math.isfinite(m["train_loss"]) and math.isfinite(m["ema_test_loss"])
        # 5 validation images, all evaluated once: accuracies are multiples of 1/5.
        for key in ("test_acc", "test_top5", "ema_test_acc", "ema_test_top5"):
            assert round(m[key] * 5, 9) == round(m[key] * 5)
        assert m["test_top5"] == 1.0  # 3 classes: the top 5 hold every label
        assert m["ema_test_loss"] != m["test_loss"]
    report = (out / "report.md").read_text()
    assert "final top-5 | final EMA acc | final EMA top-5 |" in report
    ckpt = torch.load(out / "coolmomentum/checkpoint.pt", weights_only=True)
    assert ckpt["ema"]["updates"] == 5
    assert ckpt["model"]["classifier.weight"].shape == (3, 1280)


def test_weight_average_follows_tf_num_updates_form():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = WeightAverage(model, decay=0.5)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for k in (1, 2, 3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(float(k))
        model.train()(torch.randn(4, 2))  # moves the running statistics and the counter
        ema.update()
        decay = min(0.5, (1 + k) / (10 + k))  # 2/11, 3/12, then the cap 0.5
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                expected[key] = decay * expected[key] + (1 - decay) * value
            else:
                expected[key] = value.clone()
    for key, value in ema.model.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=1e-6, atol=1e-7)
    assert not ema.model.training


def test_without_ema_the_ema_metrics_are_none(fmnist, tmp_path):
    out = tmp_path / "out"
    assert run_cli("train", *TINY_FMNIST, "--data-dir", fmnist, "--epochs", 1, "--out", out) == 0
    (m,) = load_metrics(out / "coolmomentum")
    assert m["ema_test_loss"] is None and m["ema_test_acc"] is None and m["ema_test_top5"] is None
    assert m["test_acc"] <= m["test_top5"] <= 1
    assert "ema" not in torch.load(out / "coolmomentum/checkpoint.pt", weights_only=True)


def test_momentum_warmup_then_cooling_at_the_global_step_survives_resume(fmnist, tmp_path):
    # 4 steps per epoch; rho = 0 for steps 0..4, then the exponential schedule over 8 steps.
    config = RunConfig(
        dataset="fashion-mnist", model="convnet", batch_size=16, seed=3, epochs=3,
        data_dir=str(fmnist), ema_decay=0.9,
        runs=[{"optimizer": "coolmomentum", "lr": 0.05, "momentum_warmup_steps": 5,
               "total_steps": 8}],
    )
    (spec,) = config.runs
    data = InMemoryData(config, torch.device("cpu"))
    context = RunContext(steps_per_epoch=4, total_steps=12)
    optimizer = build_optimizer(torch.nn.Linear(1, 1), spec, context).optimizer
    rho = optimizer.param_groups[0]["schedule"]
    assert rho(4) == 0.0
    assert rho(5) == schedules.rho(5, rho_0=0.99, total_steps=8) > 0.5

    straight = train(config, spec, tmp_path / "straight", data, log=lambda _: None)

    def stop_after_first_epoch(line):
        if "epoch 1/" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, spec, tmp_path / "resumed", data, log=stop_after_first_epoch)
    resumed = train(config, spec, tmp_path / "resumed", data, resume=True,
                          log=lambda _: None)
    # The rho of each epoch's last step (3, 7, 11): the warm-up's 0, then the schedule.
    assert [m["rho"] for m in straight] == [0.0, schedules.rho(7, total_steps=8), 0.0]
    timeless = [{k: v for k, v in m.items() if k not in ("seconds", "images_per_s")}
                for m in (*straight, *resumed)]
    assert timeless[:3] == timeless[3:]
    a = torch.load(tmp_path / "straight/checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed/checkpoint.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
        assert torch.equal(a["ema"]["model"][key], b["ema"]["model"][key]), key


def test_tf_rmsprop_follows_its_formula():
    torch.manual_seed(0)
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    opt = TFRMSprop([x], lr=0.1, decay=0.9, momentum=0.8, eps=1e-3, weight_decay=0.01)
    ref = x.detach().clone()
    ms, mom = torch.ones(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    for lr in (0.1, 0.05, 0.2):  # lr inside the buffer: a change acts on new gradients only
        opt.param_groups[0]["lr"] = lr
        grad = torch.randn(5, dtype=torch.float64)
        x.grad = grad.clone()
        opt.step()
        g = grad + 0.01 * ref
        ms = 0.9 * ms + 0.1 * g**2
        mom = 0.8 * mom + lr * g / torch.sqrt(ms + 1e-3)
        ref = ref - mom
        torch.testing.assert_close(x.detach(), ref, rtol=1e-14, atol=0)
    state = opt.state_dict()["state"][0]
    torch.testing.assert_close(state["mean_square"], ms)


def test_rmsprop_learning_rate_warms_up_then_decays_by_staircase():
    spec = OptimizerSpec.from_settings(PRESETS["efficientnet-b0-imagenet-rmsprop"]["runs"][0])
    peak, per_epoch = 0.128, 1_281_167 / 2048
    assert spec.lr == pytest.approx(peak)
    assert lr_at(spec, 0, 625) == 0.0
    assert lr_at(spec, 3126, 625) == pytest.approx(peak * 3126 / 3127)  # int(5 epochs) = 3127
    assert lr_at(spec, 3127, 625) == pytest.approx(peak * 0.97**2)  # steps since 0, not 3127
    decay_steps = 2.4 * per_epoch  # 1501.37: a fractional period, as TF's
    assert lr_at(spec, math.ceil(3 * decay_steps) - 1, 625) == pytest.approx(peak * 0.97**2)
    assert lr_at(spec, math.ceil(3 * decay_steps), 625) == pytest.approx(peak * 0.97**3)
    cool = OptimizerSpec.from_settings(PRESETS["paper-efficientnet-b0-imagenet"]["runs"][0])
    assert {lr_at(cool, k, 625) for k in (0, 3127, 218_947)} == {0.6}


def test_imagenet_presets_hold_the_recipes():
    for name in ("paper-efficientnet-b0-imagenet", "efficientnet-b0-imagenet-rmsprop"):
        preset = PRESETS[name]
        config = RunConfig(**preset, preset=name)
        (run,) = config.runs
        assert (config.dataset, config.model, config.batch_size) == (
            "imagenet", "efficientnet-b0", 2048)
        assert config.epochs * (1_281_167 // 2048) >= config.max_steps
        assert (config.label_smoothing, config.ema_decay, run.weight_decay) == (0.1, 0.9999, 1e-5)
        assert config.weight_decay_params == "no-batchnorm"
    cool = PRESETS["paper-efficientnet-b0-imagenet"]
    (run,) = cool["runs"]
    assert cool["max_steps"] == run["total_steps"] == 218_948
    assert (run["lr"], run["rho_0"], run["momentum_warmup_steps"]) == (0.6, 0.99, 3127)
    (rms,) = PRESETS["efficientnet-b0-imagenet-rmsprop"]["runs"]
    assert (rms["optimizer"], rms["rms_decay"], rms["momentum"], rms["eps"]) == (
        "rmsprop-tf", 0.9, 0.9, 1e-3)
    assert cool["eval_every_steps"] == 6255  # steps_per_eval
    assert "Expected accuracy: not verified" in cool["description"]
    assert "Expected top-1 76.3 %, top-5 93.2 %" in PRESETS["efficientnet-b0-imagenet-rmsprop"][
        "description"]
    # The harness's network has the recipe's regularization: dropout and drop-connect 0.2.
    from coolmomentum.experiments.models import build_model

    model = build_model(cool["model"], 3, 1000)
    assert model.dropout.p == 0.2
    assert model.blocks[-1].drop_connect_rate == 0.2 * 15 / 16


def test_weight_decay_spares_batch_norm_only():
    from coolmomentum.experiments.models import build_model

    model = build_model("efficientnet-b0", 3, 7)
    spec = OptimizerSpec(weight_decay=1e-5)
    decay, no_decay = param_groups(model, spec, "no-batchnorm")
    norms = [p for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
             for p in m.parameters()]
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in norms}
    assert any(p is model.classifier.bias for p in decay["params"])  # as TF: biases decay
    assert len(decay["params"]) + len(norms) == len(list(model.parameters()))


def test_imagenet_errors_name_the_problem(tmp_path, tree, monkeypatch, capsys):
    out = ["--out", tmp_path / "o"]
    assert run_cli("train", *TINY_IMAGENET, "--data-dir", tmp_path / "nowhere", *out) == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
    assert run_cli("train", *TINY_IMAGENET, *out) == 2
    assert "needs --data-dir" in capsys.readouterr().err
    # Two ranks (the world torchrun would set up) cannot split a global batch of 5.
    from coolmomentum.experiments import distributed

    monkeypatch.setattr(distributed, "setup", lambda device: (World(rank=0, size=2), device))
    args = ["train", *TINY_IMAGENET, "--data-dir", tree, *out, "--batch-size", 5]
    assert run_cli(*args) == 2
    assert "divisible by the world size" in capsys.readouterr().err


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is absent")
def test_two_rank_torchrun_on_imagenet(tree, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "coolmomentum", "train", *TINY_IMAGENET, "--data-dir", str(tree),
         "--epochs", "1", "--ema-decay", "0.9", "--out", str(out)],
        capture_output=True, text=True, env=env,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "coolmomentum/config.json").read_text())["world_size"] == 2
    (m,) = load_metrics(out / "coolmomentum")
    assert m["step"] == 3  # the global batch of 4: 2 images per rank
    assert m["images_per_s"] * m["seconds"] == pytest.approx(12)  # the global images
    assert round(m["test_acc"] * 5, 9) == round(m["test_acc"] * 5)  # the shards cover val once
    assert m["ema_test_acc"] is not None
