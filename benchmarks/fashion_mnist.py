"""CoolMomentum vs SGD with momentum vs Adam on Fashion-MNIST, over several seeds.

Runs the ``fashion-mnist-demo`` preset (or the settings given) once per seed and optimizer,
through the same harness as ``coolmomentum compare``, and writes
``benchmarks/results/fashion_mnist.md``: final and best test accuracy (mean +- std over the
seeds), final training loss and seconds per epoch, each optimizer beside the others.

    python benchmarks/fashion_mnist.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from coolmomentum._io import atomic_write
from coolmomentum.experiments.config import RunConfig
from coolmomentum.experiments.data import InMemoryData
from coolmomentum.experiments.distributed import resolve_device
from coolmomentum.experiments.loop import train
from coolmomentum.experiments.presets import PRESETS

RESULTS = Path(__file__).parent / "results" / "fashion_mnist.md"


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--train-subset", type=int)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if len(args.seeds) < 2:
        parser.error("give at least two seeds: the table reports a standard deviation")

    preset = dict(PRESETS["fashion-mnist-demo"])
    if args.epochs:
        preset["epochs"] = args.epochs
    if args.train_subset:
        preset["train_subset"] = args.train_subset
    preset.pop("description")
    started = time.time()
    finals: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            config = RunConfig(**preset, seed=seed, device=args.device, preset="fashion-mnist-demo")
            data = InMemoryData(config, resolve_device(config.device))
            for spec in config.runs:
                metrics = train(config, spec, Path(tmp) / f"{seed}" / spec.label, data)
                finals.setdefault(spec.label, []).append(
                    {
                        "final": metrics[-1]["test_acc"],
                        "best": max(m["test_acc"] for m in metrics),
                        "loss": metrics[-1]["train_loss"],
                        "s_per_epoch": statistics.median(m["seconds"] for m in metrics),
                    }
                )
    minutes = (time.time() - started) / 60

    command = "python benchmarks/fashion_mnist.py " + " ".join(sys.argv[1:])
    lines = [
        "# Fashion-MNIST: CoolMomentum vs SGD vs Adam",
        "",
        f"Settings: the `fashion-mnist-demo` preset ({preset['model']}, {preset['epochs']} "
        f"epochs, batch {preset['batch_size']}, {preset.get('train_subset') or 60000} training "
        f"images, the full 10,000-image test set); seeds {args.seeds}. Each seed gives every "
        "optimizer the same initial weights and the same batches.",
        "",
        "| optimizer | hyperparameters | final test acc | best test acc | final train loss "
        "| s/epoch |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for spec in RunConfig(**preset).runs:
        runs = finals[spec.label]
        hyper = f"lr {spec.lr:g}" + (
            f", rho_0 {spec.rho_0}, {spec.schedule} cooling over the run"
            if spec.optimizer == "coolmomentum"
            else f", momentum {spec.momentum}"
            if spec.optimizer == "sgd"
            else ""
        )
        lines.append(
            f"| {spec.label} | {hyper} | {mean_std([r['final'] for r in runs])} "
            f"| {mean_std([r['best'] for r in runs])} | {mean_std([r['loss'] for r in runs])} "
            f"| {statistics.median(r['s_per_epoch'] for r in runs):.1f} |"
        )
    lines += [
        "",
        f"Measured with `{command}` in {minutes:.1f} minutes on {platform.machine()} "
        f"({torch.get_num_threads()} threads, torch {torch.__version__}, device "
        f"{resolve_device(args.device)}).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
