"""Why CoolMomentum's tuned lr lost a ResNet-20 seed in the study: the hot start, measured.

In the study's earlier plan (``results/study_small.md``), CoolMomentum's lr tuned on
ResNet-20 (0.08, rho_0 0.99) trained two final seeds of three to about 0.74 and left the
third at chance (0.100, training loss ln 10: a constant prediction). The effective step of
the momentum recurrence is ``lr (1 + rho) / (2 (1 - rho))``: 99.5 lr at rho_0 0.99, about 8
at lr 0.08. This script trains the study's ResNet-20 workload (the first 5,000 images, 4
epochs, batch 32, shift/flip, batch norm recomputed before each evaluation) from several
seeds with that setting and with two changes that shrink the hot start (rho_0 0.95: a hot
step of 19.5 lr; half the lr), evaluates on held-out training images (never the test set)
every third of an epoch, and reports how often a run collapses, when (rho and the effective
step there) and what the others reach.

A run *collapsed* when its validation accuracy stays below ``COLLAPSED_BELOW`` from some
evaluation to its end; that evaluation is where it collapsed.

    python -m benchmarks.hot_start --data-dir /usr/share/datasets/fashion-mnist

Resumable (the runs are in ``runs/hot_start/``); writes ``benchmarks/results/hot_start.md``
and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.study import Trial, mean_std

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "runs" / "hot_start"
WORKLOAD = "resnet20"
# The ResNet-20 workload of the study's earlier plan (results/study_small.md): the first 5,000
# Fashion-MNIST images, 4 epochs at batch 32 (156 steps each), shifts and flips, batch norm
# recomputed before each evaluation.
SETTINGS = {"dataset": "fashion-mnist", "model": "resnet20", "batch_size": 32,
            "eval_batch_size": 1000, "augment": "shift-flip", "train_subset": 5_000,
            "recompute_batch_norm": 50, "epochs": 4}  # fmt: skip
STEPS_PER_EPOCH = 5_000 // 32
SEEDS = (0, 1, 2, 3, 4)
VALIDATION = 2_000  # held-out training images (the study holds out 10,000: slower to score)
EVALUATIONS_PER_EPOCH = 3
COLLAPSED_BELOW = 0.2  # validation accuracy; chance is 0.1


def tuned_setting(results: Path = RESULTS) -> dict[str, Any]:
    """CoolMomentum's ResNet-20 setting as the study's earlier plan chose it (its results)."""
    records = json.loads((results / "study_small.json").read_text())
    record = next(r for r in records if r["workload"] == WORKLOAD
                  and r["optimizer"] == "coolmomentum" and "budget_epochs" not in r)  # fmt: skip
    return {k: v for k, v in record["setting"].items() if k != "lr_schedule"}


def variants(tuned: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        f"tuned: lr {tuned['lr']:g}, rho_0 {tuned['rho_0']:g}": tuned,
        "rho_0 0.95": {**tuned, "rho_0": 0.95},
        f"lr {tuned['lr'] / 2:g}": {**tuned, "lr": tuned["lr"] / 2},
    }


def run_config(spec: dict[str, Any], seed: int, work: Path, data_dir: str | None) -> Any:
    from coolmomentum.experiments.config import RunConfig

    every = STEPS_PER_EPOCH // EVALUATIONS_PER_EPOCH
    return RunConfig(**SETTINGS, data_dir=data_dir, seed=seed, device="cpu",
                     validation=VALIDATION, eval_every_steps=every, out=str(work),
                     runs=[{**spec, "label": "coolmomentum"}])  # fmt: skip


def effective_step(lr: float, rho: float) -> float:
    return lr * (1 + rho) / (2 * (1 - rho))


def train(spec: dict[str, Any], seed: int, work: Path, data_dir: str | None) -> dict[str, Any]:
    """One run (resumed from its checkpoint if there is one): its evaluations, and where it
    collapsed (None if it did not)."""
    import torch

    from coolmomentum.experiments.data import InMemoryData
    from coolmomentum.experiments.loop import train as train_run

    config = run_config(spec, seed, work, data_dir)
    run_id = Trial(WORKLOAD, "hot-start", spec, seed).id
    data = InMemoryData(config, torch.device("cpu"))
    metrics = train_run(config, config.runs[0], work / run_id, data, resume=True,
                        log=lambda _: None)  # fmt: skip
    evaluations = [
        {"step": m["step"], "rho": m["rho"], "effective_step": effective_step(m["lr"], m["rho"]),
         "train_loss": m["train_loss"], "val_acc": m["val_acc"]}
        for m in metrics
    ]  # fmt: skip
    collapsed = collapsed_at([e["val_acc"] for e in evaluations])
    return {"seed": seed, "setting": spec, "evaluations": evaluations, "collapsed_at": collapsed,
            "seconds": sum(m["seconds"] for m in metrics)}  # fmt: skip


def collapsed_at(accuracies: list[float]) -> int | None:
    """The first evaluation from which every accuracy is below ``COLLAPSED_BELOW``."""
    first = None
    for i in range(len(accuracies) - 1, -1, -1):
        if accuracies[i] >= COLLAPSED_BELOW:
            break
        first = i
    return first


def _mean_std(values: list[float]) -> str:
    return mean_std(list(values), digits=3) if values else "—"


def report(rows: dict[str, list[dict[str, Any]]], command: str, wall_hours: float) -> str:
    import torch

    lines = [
        "# The hot start on ResNet-20",
        "",
        f"Command: `{command}`. Machine: {platform.machine()}, {os.cpu_count()} cores shared "
        f"with other work, torch {torch.__version__}, one thread. Wall time: {wall_hours:.2f} h "
        "over all invocations. Protocol: the "
        "docstring of `benchmarks/hot_start.py`. The study's ResNet-20 workload, validation on "
        f"{VALIDATION:,} held-out training images, {EVALUATIONS_PER_EPOCH} evaluations per "
        f"epoch; collapsed: validation accuracy below {COLLAPSED_BELOW} from an evaluation to "
        "the end. Effective step: `lr (1 + rho) / (2 (1 - rho))`.",
        "",
        "| setting | hot effective step | collapsed | final val acc, all seeds | the others | "
        "collapsed at: step, rho, effective step |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, runs in rows.items():
        spec = runs[0]["setting"]
        finals = [r["evaluations"][-1]["val_acc"] for r in runs]
        kept = [f for f, r in zip(finals, runs, strict=True) if r["collapsed_at"] is None]
        where = [r["evaluations"][r["collapsed_at"]] for r in runs if r["collapsed_at"] is not None]
        at = "; ".join(f"{e['step']}, {e['rho']:.3f}, {e['effective_step']:.2f}" for e in where)
        lines.append(
            f"| {name} | {effective_step(spec['lr'], spec['rho_0']):.2f} | "
            f"{len(where)}/{len(runs)} | {_mean_std(finals)} | {_mean_std(kept)} | {at or '—'} |"
        )
    lines += ["", "Validation accuracy at each evaluation (seed: values):", ""]
    for name, runs in rows.items():
        lines.append(f"- {name}:")
        for r in runs:
            accs = ", ".join(f"{e['val_acc']:.2f}" for e in r["evaluations"])
            lines.append(f"  - seed {r['seed']}: {accs}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import torch

    from coolmomentum._io import atomic_write

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", help="the Fashion-MNIST files (default: searched)")
    parser.add_argument("--work", type=Path, default=WORK, help="the runs (resumable)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the files go")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    clock = args.work / "wall_seconds.json"
    previous = json.loads(clock.read_text())["seconds"] if clock.exists() else 0.0
    started = time.time()
    rows: dict[str, list[dict[str, Any]]] = {}
    try:
        for name, spec in variants(tuned_setting()).items():
            for seed in SEEDS:
                rows.setdefault(name, []).append(train(spec, seed, args.work, args.data_dir))
                print(f"{name}, seed {seed}: collapsed at {rows[name][-1]['collapsed_at']}")
    finally:
        args.work.mkdir(parents=True, exist_ok=True)
        atomic_write(clock, json.dumps({"seconds": previous + time.time() - started}))
    wall = (previous + time.time() - started) / 3600
    command = "python -m benchmarks.hot_start" + (f" --data-dir {args.data_dir}"
                                                  if args.data_dir else "")  # fmt: skip
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write(args.results / "hot_start.json", json.dumps(rows, indent=1))
    atomic_write(args.results / "hot_start.md", report(rows, command, wall))
    print(f"wrote {args.results / 'hot_start.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
