"""The optimizer study: CoolMomentum against tuned and schedule-free baselines.

Protocol (details and the results in ``benchmarks/results/study.md``):

1. **Tuning on validation data only.** The last 10,000 Fashion-MNIST training images are
   held out (``RunConfig.validation``); every tuning run trains on the rest and is scored by
   its final validation accuracy. Workload 1 gives every optimizer the same budget of 6
   trials on a log grid of lr, factors of 2 apart; CoolMomentum's 6 are a two-stage search
   (4 lr with the paper's exponential cooling, then the best lr with the two temperature
   schedules). The grids started where each method's authors recommend; a first run of the
   study found every optimizer's best lr at the top of its grid, so each grid was moved up
   by a factor of 4 (2 of its points new, 4 kept). On every workload a grid whose best
   trial sits at an edge grows by a factor of 2 past it, at most twice (the tables list
   every trial, so each optimizer's count shows). Workloads 2 and 3 keep each optimizer's
   workload-1 choice and tune only lr: the LSTM with 4 trials at 0.5, 1, 2 and 4 times the
   workload-1 value; ResNet-20, whose batch is 4 times smaller (32, the authors' batch),
   with 5 at 1/16 to 1 times it (the linear scaling rule of SGD predicts 1/4, Adam's square
   root rule 1/2).
   Every optimizer is evaluated with batch norm's statistics recomputed at its evaluated
   weights (``RunConfig.recompute_batch_norm``, 50 batches), as schedule-free needs anyway:
   ResNet-20's running statistics (momentum 0.01, as in Keras) otherwise lag the weights by
   hundreds of steps.
2. **A change the Langevin picture suggests**, tested on validation: the paper's schedules
   stop cooling at the temperature of ``rho = 0`` (the step stays ``lr / 2``); the variant
   cools rho over the first 80 % of the steps and then lowers the step linearly to 0
   (``lr_schedule="wsd"`` with ``lr_decay_fraction=0.2``). Both arms run 3 seeds per workload.
3. **Final runs** train on all the workload's images (the held-out ones given back) with each
   chosen setting, and CoolMomentum's untuned paper settings, over 3 seeds, and are the only
   runs that read the test set. They also measure the loss over the whole training set at the
   final weights in evaluation mode.
4. **Budget**: on workload 1 the chosen settings also train for 1, 2 and 10 epochs (2
   seeds), without re-tuning lr; CoolMomentum's cooling and the cosine follow the length.

Sizes (``--plan full``, about 5 hours of 2 cores): workload 1 trains 5 epochs (the budget
runs show 1 to 10), workload 2 the first 10,000 images for 5 epochs, workload 3 5 epochs.
``--plan small`` keeps the protocol at sizes that fit about 2 hours (``small_plan``).

Every run is a harness run (``coolmomentum.experiments``) in a folder of ``--work`` named
after the plan (so a plan of other sizes never reuses a run by accident) and is saved as it
ends; ``--reuse DIR`` takes a planned run from an earlier plan's folder where that run's every
harness setting is the same (the results name how many came from where); an
interrupted study continues where it stopped when the same command is run again (a run cut
off mid-way resumes from its last checkpoint); ``--report`` writes the results files from the
runs finished so far, marked as partial. ``--quick`` runs the whole
pipeline on a tiny subset for one epoch (a test runs it).

    python benchmarks/study.py --jobs 2                 # the full study, hours on 2 cores
    python benchmarks/study.py --plan small --report    # the tables of the runs done so far
    python benchmarks/study.py --quick --work /tmp/q --results /tmp/q/results
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "runs" / "study"
SCHEDULES = ("exponential", "exponential-temperature", "linear-temperature")
# Harness settings that do not change what a run trains (evaluating and checkpointing leave a
# run bit for bit as it was: the harness's tests check it), so --reuse ignores them.
NOT_TRAINING = ("out", "eval_every_steps", "checkpoint_every", "checkpoint_every_minutes")


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    settings: dict[str, Any]  # RunConfig fields
    epochs: int


@dataclass(frozen=True)
class Run:
    """One harness run of the study."""

    workload: str
    label: str  # the row of the tables: the optimizer, or "coolmomentum-paper", ...
    optimizer: dict[str, Any]  # OptimizerSpec fields
    seed: int = 0
    split: str = "val"  # "val": tuning on held-out training images; "test": final runs
    epochs: int | None = None  # default: the workload's
    stage: str = "tune"  # tune, variant, final, budget

    @property
    def id(self) -> str:
        key = json.dumps(dataclasses.asdict(self), sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:10]
        return f"{self.workload}-{self.stage}-{self.label}-s{self.seed}-{digest}"


@dataclass
class Plan:
    """The study's settings: workloads, grids, seeds, sizes (``--quick`` shrinks them)."""

    workloads: list[Workload]
    grids: dict[str, list[float]]
    cool_stage_a: list[float]
    refine: dict[str, list[float]]  # workloads 2 and 3: multiples of the workload-1 lr
    seeds: list[int]
    budgets: list[int]  # workload 1's other training lengths, in epochs
    budget_seeds: list[int]
    validation: int
    data: dict[str, Any] = field(default_factory=dict)  # data_dir, subsets


def full_plan() -> Plan:
    from coolmomentum.experiments.optimizers import SCHEDULE_FREE_BN_BATCHES

    common = {"dataset": "fashion-mnist", "batch_size": 128, "eval_batch_size": 1000}
    # Every optimizer's batch norm is recomputed before evaluating, as schedule-free's is.
    batch_norm = {"recompute_batch_norm": SCHEDULE_FREE_BN_BATCHES}
    return Plan(
        workloads=[
            Workload(
                "convnet", "Fashion-MNIST, convnet", {**common, **batch_norm, "model": "convnet"}, 5
            ),
            Workload(
                "resnet20",
                "Fashion-MNIST, ResNet-20 with shifts and flips, batch 32, first 10,000 images",
                {
                    **common,
                    **batch_norm,
                    "model": "resnet20",
                    "augment": "shift-flip",
                    "batch_size": 32,
                    "train_subset": 10_000,
                },
                5,
            ),
            Workload(
                "lstm",
                "sequential Fashion-MNIST (28 rows as 28 steps), 2-layer LSTM",
                {**common, "model": "lstm"},
                5,
            ),
        ],
        grids={
            "sgd": [0.05, 0.1, 0.2, 0.4, 0.8, 1.6],
            "adamw": [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2],
            "sgd-schedulefree": [1.0, 2.0, 4.0, 8.0, 16.0, 32.0],
            "adamw-schedulefree": [2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2, 6.4e-2],
        },
        cool_stage_a=[0.02, 0.04, 0.08, 0.16],
        refine={"resnet20": [1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0], "lstm": [0.5, 1.0, 2.0, 4.0]},
        seeds=[0, 1, 2],
        budgets=[1, 2, 10],
        budget_seeds=[0, 1],
        validation=10_000,
    )


def small_plan() -> Plan:
    """The full protocol at sizes that fit about 2 hours of 2 CPU cores: workloads 1 and 3
    train the first 20,000 images for 3 epochs, workload 2 the first 5,000 for 4; the budget
    runs show 1 and 6 epochs of workload 1."""
    plan = full_plan()
    sizes = {"convnet": (20_000, 3), "resnet20": (5_000, 4), "lstm": (20_000, 3)}
    workloads = []
    for w in plan.workloads:
        subset, epochs = sizes[w.name]
        title = w.title.split(", first ")[0] + f", first {subset:,} images"
        workloads.append(dataclasses.replace(
            w, title=title, settings={**w.settings, "train_subset": subset}, epochs=epochs))
    return dataclasses.replace(plan, workloads=workloads, budgets=[1, 6])


PLANS = {"full": full_plan, "small": small_plan}


def quick_plan(data_dir: str | None) -> Plan:
    """Every stage of the study on a few dozen images, one epoch, two baselines, one seed."""
    plan = full_plan()
    tiny = {"train_subset": 64, "test_subset": 64, "batch_size": 32, "eval_batch_size": 64}
    return dataclasses.replace(
        plan,
        workloads=[
            dataclasses.replace(w, settings={**w.settings, **tiny}, epochs=1)
            for w in plan.workloads
        ],
        grids={name: plan.grids[name][2:3] for name in ("sgd", "sgd-schedulefree")},
        cool_stage_a=[0.01],
        refine={w.name: [1.0] for w in plan.workloads[1:]},
        seeds=[0],
        budgets=[1],
        budget_seeds=[0],
        validation=64,
        data={"data_dir": data_dir, "sample_every_steps": 1},
    )


# Fixed per optimizer family (not tuned; stated in the results): coupled L2 for the SGD
# family and CoolMomentum, decoupled decay for the AdamW family; warm-up over 5 % of the
# steps where the method's authors prescribe one.
WEIGHT_DECAY = {"sgd": 5e-4, "sgd-schedulefree": 5e-4, "coolmomentum": 5e-4, "adamw": 0.05,
                "adamw-schedulefree": 0.05}  # fmt: skip
WARMUP_FRACTION = {"adamw": 0.05, "sgd-schedulefree": 0.05, "adamw-schedulefree": 0.05}
PAPER = {"optimizer": "coolmomentum", "lr": 0.01, "rho_0": 0.99, "schedule": "exponential"}
VARIANT_DECAY_FRACTION = 0.2
EDGE_EXTENSIONS = 2  # a grid whose best trial sits at an edge grows past it, at most this often


def steps_per_epoch(workload: Workload, plan: Plan, split: str) -> int:
    n = workload.settings.get("train_subset") or (
        60_000 - (plan.validation if split == "val" else 0)
    )
    return n // workload.settings["batch_size"]


def baseline(name: str, lr: float, workload: Workload, plan: Plan, epochs: int) -> dict[str, Any]:
    """The OptimizerSpec fields of a baseline at ``lr``, with its family's fixed settings."""
    spec: dict[str, Any] = {"optimizer": name, "lr": lr, "weight_decay": WEIGHT_DECAY[name]}
    if name in ("sgd", "adamw"):
        spec["lr_schedule"] = "cosine"
    if name == "sgd":
        spec["momentum"] = 0.9
    if name in WARMUP_FRACTION:
        steps = steps_per_epoch(workload, plan, "val") * epochs
        spec["lr_warmup_steps"] = round(WARMUP_FRACTION[name] * steps)
    return spec


def cool(lr: float, schedule: str, variant: bool = False) -> dict[str, Any]:
    spec = {"optimizer": "coolmomentum", "lr": lr, "rho_0": 0.99, "schedule": schedule,
            "weight_decay": WEIGHT_DECAY["coolmomentum"]}  # fmt: skip
    if variant:
        spec.update(lr_schedule="wsd", lr_decay_fraction=VARIANT_DECAY_FRACTION)
    return spec


# --- the plan, stage by stage: each stage needs the results of the one before --------------

Results = dict[str, dict[str, Any]]


def _best(runs: Iterable[Run], results: Results) -> Run | None:
    """The run with the highest final validation accuracy (None until all have finished)."""
    runs = list(runs)
    if not all(r.id in results for r in runs):
        return None
    return max(runs, key=lambda r: score(results[r.id]))


def score(result: dict[str, Any]) -> float:
    """A run's final accuracy; a run that diverged scores 0 (chosen last, and counted as a
    failure in the variant's verdict)."""
    return 0.0 if result["final_acc"] is None else result["final_acc"]


def tuning_runs(plan: Plan, results: Results) -> dict[str, dict[str, list[Run]]]:
    """Per workload and optimizer, its tuning runs (those that can be planned yet)."""
    first, *others = plan.workloads
    tune: dict[str, dict[str, list[Run]]] = {w.name: {} for w in plan.workloads}
    for name, grid in plan.grids.items():

        def tried(lr: float, n: str = name) -> Run:
            return Run(first.name, n, baseline(n, lr, first, plan, first.epochs))

        tune[first.name][name] = _extended(grid, tried, results)
    stage_a = _extended(
        plan.cool_stage_a,
        lambda lr: Run(first.name, "coolmomentum", cool(lr, "exponential")), results,
    )  # fmt: skip
    tune[first.name]["coolmomentum"] = stage_a
    best_a = _best(stage_a, results)
    if best_a is not None:
        tune[first.name]["coolmomentum"] = stage_a + [
            Run(first.name, "coolmomentum", cool(best_a.optimizer["lr"], s)) for s in SCHEDULES[1:]
        ]
    choice_1 = {name: _best(runs, results) for name, runs in tune[first.name].items()}
    for workload in others:
        for name, chosen in choice_1.items():
            if chosen is None:
                continue
            lrs = [chosen.optimizer["lr"] * f for f in plan.refine[workload.name]]
            schedule = chosen.optimizer.get("schedule")

            def make(lr: float, n: str = name, w: Workload = workload, s: Any = schedule) -> Run:
                spec = cool(lr, s) if n == "coolmomentum" else baseline(n, lr, w, plan, w.epochs)
                return Run(w.name, n, spec)

            tune[workload.name][name] = _extended(lrs, make, results)
    return tune


def _extended(lrs: list[float], make: Callable[[float], Run], results: Results) -> list[Run]:
    """The runs ``make(lr)`` of a grid, extended by a factor of 2 past its edge while the best
    finished trial sits at that edge, at most ``EDGE_EXTENSIONS`` times."""
    lrs = sorted(lrs)
    for _ in range(EDGE_EXTENSIONS):
        best = _best([make(lr) for lr in lrs], results)
        if best is None or len(lrs) < 2:
            break
        if best.optimizer["lr"] == lrs[-1]:
            lrs.append(lrs[-1] * 2)
        elif best.optimizer["lr"] == lrs[0]:
            lrs.insert(0, lrs[0] / 2)
        else:
            break
    return [make(lr) for lr in lrs]


def chosen_settings(plan: Plan, results: Results) -> dict[str, dict[str, Run | None]]:
    """Per workload and optimizer, its best tuning run (None until its trials finished)."""
    tune = tuning_runs(plan, results)
    return {
        w.name: {name: _best(runs, results) for name, runs in tune[w.name].items()}
        for w in plan.workloads
    }


def variant_runs(plan: Plan, choices: dict[str, dict[str, Run | None]]) -> list[Run]:
    """The tuned CoolMomentum and the variant, on validation, over seeds (seed 0 of the tuned
    arm is its tuning run)."""
    runs = []
    for workload in plan.workloads:
        tuned = choices[workload.name].get("coolmomentum")
        if tuned is None:
            continue
        variant = cool(tuned.optimizer["lr"], tuned.optimizer["schedule"], variant=True)
        for seed in plan.seeds:
            base = tuned if seed == tuned.seed else dataclasses.replace(tuned, seed=seed)
            runs += [base, Run(workload.name, "coolmomentum-wsd", variant, seed, stage="variant")]
    return runs


def variant_verdict(
    plan: Plan, results: Results, choices: dict[str, dict[str, Run | None]]
) -> dict[str, dict[str, Any]] | None:
    """Per workload: the variant's and the tuned setting's validation accuracy over seeds,
    and whether the variant is ahead by more than the larger seed standard deviation (None
    until every variant run has finished)."""
    runs = variant_runs(plan, choices)
    if len(runs) < 2 * len(plan.seeds) * len(plan.workloads) or any(
        r.id not in results for r in runs
    ):
        return None
    verdict = {}
    for workload in plan.workloads:
        arms: dict[str, list[float]] = {"coolmomentum": [], "coolmomentum-wsd": []}
        for run in runs:
            if run.workload == workload.name:
                arms[run.label].append(score(results[run.id]))
        base, var = arms["coolmomentum"], arms["coolmomentum-wsd"]
        verdict[workload.name] = {
            "coolmomentum": base,
            "coolmomentum-wsd": var,
            "ahead": statistics.mean(var) - statistics.mean(base) > max(_std(base), _std(var)),
        }
    return verdict


def final_rows(
    plan: Plan,
    choices: dict[str, Run | None],
    verdict: dict[str, dict[str, Any]],
    workload: Workload,
) -> dict[str, dict[str, Any]]:
    """The settings of the final runs of ``workload``: each optimizer's choice (its warm-up
    sized for the final runs' training set), the paper's settings, and the variant if it
    won on validation."""
    rows: dict[str, dict[str, Any]] = {}
    for name, run in choices.items():
        assert run is not None
        rows[name] = _for_length(run.optimizer, workload, plan, workload.epochs)
    rows["coolmomentum-paper"] = PAPER
    if sum(v["ahead"] for v in verdict.values()) >= 2:
        tuned = choices["coolmomentum"]
        assert tuned is not None
        rows["coolmomentum-wsd"] = cool(tuned.optimizer["lr"], tuned.optimizer["schedule"], True)
    return rows


def planned_runs(plan: Plan, results: Results) -> list[Run]:
    """Every run that can be planned with the results so far."""
    tune = tuning_runs(plan, results)
    choices = chosen_settings(plan, results)
    runs = [r for per_workload in tune.values() for rs in per_workload.values() for r in rs]
    runs += variant_runs(plan, choices)
    verdict = variant_verdict(plan, results, choices)
    if verdict is None:
        return _unique(runs)  # the final runs wait for every choice and the variant's verdict
    budget = []  # run after every final run
    for workload in plan.workloads:
        rows = final_rows(plan, choices[workload.name], verdict, workload)
        for label, spec in rows.items():
            for seed in plan.seeds:
                runs.append(Run(workload.name, label, spec, seed, "test", stage="final"))
        if workload is plan.workloads[0]:
            for epochs in plan.budgets:
                for label, spec in rows.items():
                    sized = _for_length(spec, workload, plan, epochs)
                    for seed in plan.budget_seeds:
                        budget.append(Run(workload.name, label, sized, seed, "test", epochs,
                                          "budget"))  # fmt: skip
    return _unique(runs + budget)


def _unique(runs: list[Run]) -> list[Run]:
    """``runs`` without repeats (the tuned setting's run serves tuning and the variant test)."""
    return list({run.id: run for run in runs}.values())


def _for_length(
    spec: dict[str, Any], workload: Workload, plan: Plan, epochs: int, split: str = "test"
) -> dict[str, Any]:
    """``spec`` with its warm-up re-sized to a run of ``epochs`` on ``split``'s training set
    (lr is not re-tuned; cooling and cosine follow the run's length by themselves)."""
    name = spec["optimizer"]
    if name not in WARMUP_FRACTION:
        return spec
    steps = steps_per_epoch(workload, plan, split) * epochs
    return {**spec, "lr_warmup_steps": round(WARMUP_FRACTION[name] * steps)}


# --- running ---------------------------------------------------------------------------------


def run_config(run: Run, plan: Plan, work: Path) -> Any:
    """The harness's ``RunConfig`` of ``run``. A tuning run is scored at its end only, so it
    evaluates there alone, and checkpoints every epoch."""
    from coolmomentum.experiments.config import RunConfig

    workload = next(w for w in plan.workloads if w.name == run.workload)
    epochs = run.epochs or workload.epochs
    settings = {**workload.settings, **plan.data}
    if run.split == "val":
        per_epoch = steps_per_epoch(workload, plan, "val")
        settings.update(eval_every_steps=epochs * per_epoch, checkpoint_every=per_epoch)
    settings.update(
        epochs=epochs,
        seed=run.seed,
        device="cpu",
        validation=plan.validation if run.split == "val" else None,
        final_train_loss=run.stage == "final",
        out=str(work),
        runs=[{**run.optimizer, "label": run.label}],
    )
    return RunConfig(**settings)


def execute(run: Run, plan: Plan, work: Path, threads: int) -> dict[str, Any]:
    """Train ``run`` (resuming its checkpoint if there is one); its summary."""
    import torch

    from coolmomentum.errors import Diverged
    from coolmomentum.experiments.data import InMemoryData
    from coolmomentum.experiments.loop import train

    torch.set_num_threads(threads)
    config = run_config(run, plan, work)
    data = InMemoryData(config, torch.device("cpu"))
    started = time.perf_counter()
    summary: dict[str, Any] = {"id": run.id, "run": dataclasses.asdict(run)}
    try:
        metrics = train(config, config.runs[0], work / run.id, data, resume=True,
                        log=lambda _: None)  # fmt: skip
    except Diverged as exc:  # a result of the trial: kept, scored as a failure
        metrics, summary["diverged"] = [], str(exc)
    key = "val" if run.split == "val" else "test"
    last = metrics[-1] if metrics else {}
    seconds = time.perf_counter() - started
    return {
        **summary,
        "final_acc": last.get(f"{key}_acc"),
        "final_loss": last.get(f"{key}_loss"),
        "acc_per_epoch": [m[f"{key}_acc"] for m in metrics],  # per evaluation: tuning runs, one
        "train_loss": last.get("train_eval_loss"),
        "running_train_loss": last.get("train_loss"),
        "seconds": sum(m["seconds"] for m in metrics) if metrics else seconds,
        "wall_seconds_this_session": seconds,
    }


def _write_json(path: Path, data: Any) -> None:
    from coolmomentum._io import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(data, indent=1))


def load_results(work: Path) -> Results:
    done = work / "done"
    if not done.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in sorted(done.glob("*.json"))}


def reused(run: Run, plan: Plan, work: Path, sources: Iterable[Path]) -> dict[str, Any] | None:
    """The summary of ``run`` finished in one of the plan folders ``sources`` with every
    harness setting the same (but those in ``NOT_TRAINING``), marked with where it came
    from; else None."""
    from coolmomentum.experiments.config import RunConfig

    config = run_config(run, plan, work).to_dict()
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)
                if f.default is not dataclasses.MISSING}  # fmt: skip
    for source in sources:
        done, saved = source / "done" / f"{run.id}.json", source / run.id / "config.json"
        if not (done.is_file() and saved.is_file()):
            continue
        earlier = {**defaults, **json.loads(saved.read_text())}  # fields added since: default
        if all(json.dumps(earlier[k]) == json.dumps(v)
               for k, v in config.items() if k not in NOT_TRAINING):  # fmt: skip
            return {**json.loads(done.read_text()), "reused_from": source.name}
    return None


def run_study(
    plan: Plan, work: Path, jobs: int, threads: int, log: Any = print, reuse: tuple[Path, ...] = ()
) -> Results:
    """Run every planned run not yet done, ``jobs`` at a time; the results. The plan is
    renewed as each run ends, so a stage starts as soon as the runs it follows from are done.

    A run finished with the same settings in a plan folder of ``reuse`` is taken from there.
    ``jobs > 1`` runs each in a process of its own (``--execute``); stopping the study
    (SIGTERM, Ctrl-C) stops them too, and a rerun continues.
    """
    results = load_results(work)
    running: dict[subprocess.Popen[bytes], Run] = {}
    checked: set[str] = set()  # runs looked for in ``reuse``
    announced = False
    try:
        while True:
            busy = {run.id for run in running.values()}
            pending = [r for r in planned_runs(plan, results)
                       if r.id not in results and r.id not in busy]  # fmt: skip
            taken = {r.id: summary for r in pending if r.id not in checked
                     and (summary := reused(r, plan, work, reuse)) is not None}  # fmt: skip
            checked.update(r.id for r in pending)
            for run_id, summary in taken.items():
                _write_json(work / "done" / f"{run_id}.json", summary)
                results[run_id] = summary
            if taken:
                log(f"{len(taken)} runs reused from {', '.join(str(p) for p in reuse)}")
                continue  # the later stages may follow from them
            if not (pending or running):
                return results
            if not announced:
                log(f"{len(results)} runs done, {len(pending)} to run now")
                announced = True
            if jobs == 1:
                summary = execute(pending[0], plan, work, threads)
                _write_json(work / "done" / f"{pending[0].id}.json", summary)
                results[pending[0].id] = summary
                log(f"  {pending[0].id}: {_acc(summary['final_acc'])}")
                continue
            for run in pending[: jobs - len(running)]:
                order = json.dumps({"run": dataclasses.asdict(run),
                                    "plan": dataclasses.asdict(plan)})  # fmt: skip
                command = [sys.executable, __file__, "--execute", order, "--work", str(work),
                           "--threads", str(threads)]  # fmt: skip
                running[subprocess.Popen(command)] = run
            time.sleep(1)
            for process, run in list(running.items()):
                if process.poll() is None:
                    continue
                del running[process]
                if process.returncode != 0:
                    raise RuntimeError(f"run {run.id} failed (exit {process.returncode})")
                results[run.id] = json.loads((work / "done" / f"{run.id}.json").read_text())
                log(f"  {run.id}: {_acc(results[run.id]['final_acc'])}")
    finally:  # stopped or failed: the runs in flight stop too (they resume on a rerun)
        for process in running:
            process.terminate()
        for process in running:
            process.wait()


def _execute_order(order: str, work: Path, threads: int) -> None:
    """One run of a ``jobs > 1`` study, in its own process; its summary goes to ``done/``."""
    data = json.loads(order)
    raw = data["plan"]
    plan = Plan(**{**raw, "workloads": [Workload(**w) for w in raw["workloads"]]})
    run = Run(**data["run"])
    _write_json(work / "done" / f"{run.id}.json", execute(run, plan, work, threads))


# --- the results files -----------------------------------------------------------------------


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _mean_std(values: list[float | None], digits: int = 4) -> str:
    """Mean ± std of the runs that finished; the diverged ones (``None``) are counted."""
    done = [v for v in values if v is not None]
    diverged = f" ({len(values) - len(done)} diverged)" if len(done) < len(values) else ""
    if not done:
        return "diverged"
    return f"{statistics.mean(done):.{digits}f} ± {_std(done):.{digits}f}{diverged}"


def _acc(value: float | None) -> str:
    return "diverged" if value is None else f"{value:.4f}"


def describe(spec: dict[str, Any]) -> str:
    name = spec["optimizer"]
    parts = [f"lr {spec['lr']:g}"]
    if name == "coolmomentum":
        parts.append(f"rho_0 {spec.get('rho_0', 0.99)}, {spec.get('schedule', 'exponential')}")
        if spec.get("lr_schedule") == "wsd":
            parts.append(f"then lr to 0 over the last {spec['lr_decay_fraction']:.0%}")
    elif name in ("sgd", "adamw"):
        parts.append("cosine to 0")
    else:
        parts.append("schedule-free")
    if spec.get("lr_warmup_steps"):
        parts.append(f"warm-up {spec['lr_warmup_steps']} steps")
    if spec.get("weight_decay"):
        parts.append(f"wd {spec['weight_decay']:g}")
    return ", ".join(parts)


def setting_record(spec: dict[str, Any]) -> dict[str, Any]:
    """The setting of a results record, naming its learning-rate schedule."""
    if spec["optimizer"] in ("sgd-schedulefree", "adamw-schedulefree"):
        return {**spec, "lr_schedule": "schedule-free"}
    return {**spec, "lr_schedule": spec.get("lr_schedule", "constant")}


def summarize(plan: Plan, results: Results) -> dict[str, Any]:
    """Tables of the finished study, as data."""
    tune = tuning_runs(plan, results)
    choices = chosen_settings(plan, results)
    records: list[dict[str, Any]] = []
    finals: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for run in planned_runs(plan, results):  # the plan's order, whatever order runs ended in
        if run.stage in ("final", "budget") and run.id in results:
            key = run.label if run.stage == "final" else f"{run.label}@{run.epochs}"
            finals.setdefault(run.workload, {}).setdefault(key, []).append(results[run.id])
    for workload in plan.workloads:
        for rs in finals.get(workload.name, {}).values():
            rs.sort(key=lambda r: r["run"]["seed"])
            run = Run(**rs[0]["run"])
            record = {
                "workload": workload.name,
                "optimizer": run.label,
                "setting": setting_record(run.optimizer),
                "seeds": [r["run"]["seed"] for r in rs],
                "test_acc": [r["final_acc"] for r in rs],
                "train_loss": [r["train_loss"] for r in rs],
                "seconds": statistics.mean(r["seconds"] for r in rs),
            }
            if run.stage == "budget":
                record["budget_epochs"] = run.epochs
            records.append(record)
    return {"tune": tune, "choices": choices, "records": records, "finals": finals}


def _plot_png(draw: Any) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = draw(plt)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def write_results(
    plan: Plan, results: Results, out: Path, command: str, wall_hours: float, quick: bool
) -> None:
    from coolmomentum._io import atomic_write
    from coolmomentum.experiments.optimizers import SCHEDULE_FREE_BN_BATCHES

    s = summarize(plan, results)
    out.mkdir(parents=True, exist_ok=True)
    prefix = "study_quick" if quick else "study"
    records = s["records"]
    _write_json(out / f"{prefix}.json", records)
    used = {r.id: results[r.id] for r in planned_runs(plan, results) if r.id in results}
    unused = len(results) - len(used)
    unused_note = (f" (and {unused} finished runs that no stage uses: planned from a "
                   "choice that changed when a grid grew past its edge)") if unused else ""
    lines = [
        "# The optimizer study",
        "",
        f"Command: `{command}`. Machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, torch {_torch_version()}; CPU only. "
        f"Wall time: {wall_hours:.1f} h over all invocations. "
        f"Runs: {len(used)}, {sum(r['seconds'] for r in used.values()) / 3600:.1f} h of "
        f"training in all{unused_note}. Seconds were measured while other work shared the "
        "machine: compare them within a table, not with other files." + _reuse_note(used),
        "",
        "Protocol: see the docstring of `benchmarks/study.py`. Tuning reads only the validation "
        f"split (the last {plan.validation:,} training images); the test set is read only by "
        "the final and budget runs, which train on all the workload's training images (the "
        "held-out ones given back; a subset in a title is the first N). Weight decay is fixed "
        "per family (5e-4 coupled for SGD, schedule-free SGD and CoolMomentum; 0.05 decoupled "
        "for AdamW and schedule-free AdamW); AdamW and both schedule-free optimizers warm up "
        "over 5 % of the steps. Schedule-free runs are evaluated at their averaged weights. "
        "Batch norm's statistics are recomputed at the evaluated weights "
        f"({SCHEDULE_FREE_BN_BATCHES} "
        "batches) for every optimizer on the workloads with batch norm, for schedule-free "
        "on all.",
        "",
    ]
    pending = [r for r in planned_runs(plan, results) if r.id not in results]
    if pending:
        lines[2:2] = [
            f"**Partial results**: {len(results)} runs finished; {len(pending)} more are "
            "planned at the stage reached, and the later stages follow from them. Tables "
            "show the runs finished; a stage not reached has no table.",
            "",
        ]
    for workload in plan.workloads:
        lines += [f"## {workload.title} ({workload.epochs} epochs)", ""]
        lines += ["### Tuning (final validation accuracy, seed 0)", ""]
        lines += ["| optimizer | setting | val acc |", "|---|---|---:|"]
        for name, runs in s["tune"][workload.name].items():
            chosen = s["choices"][workload.name].get(name)
            for run in runs:
                if run.id in results:
                    mark = " **(chosen)**" if chosen is not None and run.id == chosen.id else ""
                    lines.append(
                        f"| {name} | {describe(run.optimizer)}{mark} "
                        f"| {_acc(results[run.id]['final_acc'])} |"
                    )
        lines += ["", "### Final runs (test set)", ""]
        lines += [
            "| optimizer | setting | seeds | test acc | train loss (eval mode) | s/run |",
            "|---|---|---|---:|---:|---:|",
        ]
        for r in records:
            if r["workload"] == workload.name and "budget_epochs" not in r:
                lines.append(
                    f"| {r['optimizer']} | {describe(r['setting'])} | {r['seeds']} "
                    f"| {_mean_std(r['test_acc'])} | {_mean_std(r['train_loss'])} "
                    f"| {r['seconds']:.0f} |"
                )
        lines.append("")
    lines += _variant_section(plan, results)
    lines += _budget_section(plan, records)
    figures = _figures(plan, results, s)
    for name, png in figures.items():
        atomic_write(out / f"{prefix}_{name}.png", png)
        lines.append(f"![{name}]({prefix}_{name}.png)")
    lines.append("")
    atomic_write(out / f"{prefix}.md", "\n".join(lines))


def _reuse_note(results: Results) -> str:
    """Which runs were taken from an earlier plan's folder (``--reuse``), if any."""
    sources: dict[str, int] = {}
    for r in results.values():
        if "reused_from" in r:
            sources[r["reused_from"]] = sources.get(r["reused_from"], 0) + 1
    if not sources:
        return ""
    taken = ", ".join(f"{n} from `{name}`" for name, n in sorted(sources.items()))
    return (f" Of the runs, {taken} were finished by an earlier study with every harness "
            "setting the same (`--reuse`): their time counts in the hours of training but not "
            "in the wall time.")  # fmt: skip


def _torch_version() -> str:
    import torch

    return torch.__version__


def _variant_section(plan: Plan, results: Results) -> list[str]:
    verdict = variant_verdict(plan, results, chosen_settings(plan, results))
    if verdict is None:
        return []
    lines = [
        "## Cooling on to zero: the variant, on validation",
        "",
        f"`coolmomentum-wsd`: the tuned CoolMomentum setting, its rho cooled over the first "
        f"{1 - VARIANT_DECAY_FRACTION:.0%} of the steps, then the step lowered linearly to 0. "
        "Offered in the library only if it is ahead on at least 2 of the 3 workloads by more "
        "than the seed standard deviation.",
        "",
        "| workload | tuned CoolMomentum (val acc) | variant (val acc) | ahead |",
        "|---|---:|---:|---|",
    ]
    for name, v in verdict.items():
        lines.append(
            f"| {name} | {_mean_std(v['coolmomentum'])} | {_mean_std(v['coolmomentum-wsd'])} "
            f"| {'yes' if v['ahead'] else 'no'} |"
        )
    return [*lines, ""]


def _budget_section(plan: Plan, records: list[dict[str, Any]]) -> list[str]:
    if not plan.budgets:
        return []
    first = plan.workloads[0]
    rows: dict[str, dict[int, str]] = {}
    for r in records:
        if r["workload"] == first.name:
            epochs = r.get("budget_epochs", first.epochs)
            rows.setdefault(r["optimizer"], {})[epochs] = _mean_std(r["test_acc"])
    lengths = sorted({*plan.budgets, first.epochs})
    lines = [
        f"## Budget: {first.title}, test accuracy against training length",
        "",
        "lr is not re-tuned per length; CoolMomentum's cooling and the cosine span each run.",
        "",
        "| optimizer | " + " | ".join(f"{e} epochs" for e in lengths) + " |",
        "|---|" + "---:|" * len(lengths),
    ]
    for name, by_length in rows.items():
        lines.append(f"| {name} | " + " | ".join(by_length.get(e, "-") for e in lengths) + " |")
    return [*lines, ""]


def _figures(plan: Plan, results: Results, s: dict[str, Any]) -> dict[str, bytes]:
    figures = {}
    for workload in plan.workloads:
        finals = s["finals"].get(workload.name, {})
        if not any("@" not in k for k in finals):
            continue

        def draw(plt: Any, finals: dict[str, list[dict[str, Any]]] = finals,
                 workload: Workload = workload) -> Any:  # fmt: skip
            fig, (acc, lr) = plt.subplots(1, 2, figsize=(11, 4))
            for label, rs in finals.items():
                if "@" in label:
                    continue
                curves = [r["acc_per_epoch"] for r in rs if r["acc_per_epoch"]]
                if not curves:  # every seed diverged
                    continue
                mean = [statistics.mean(c) for c in zip(*curves)]
                acc.plot(range(1, len(mean) + 1), mean, marker="o", markersize=3, label=label)
            acc.set(xlabel="epoch", ylabel="test accuracy (mean over seeds)",
                    title=workload.title)  # fmt: skip
            acc.grid(alpha=0.3)
            acc.legend(fontsize=8)
            for name, runs in s["tune"][workload.name].items():
                done = [r for r in runs if r.id in results]
                if name == "coolmomentum":  # the lr sweep of the chosen schedule only
                    chosen = s["choices"][workload.name].get(name)
                    schedule = chosen.optimizer["schedule"] if chosen else "exponential"
                    done = [r for r in done if r.optimizer["schedule"] == schedule]
                points = sorted((r.optimizer["lr"], score(results[r.id])) for r in done)
                if points:
                    xs, ys = zip(*points)
                    lr.plot(xs, ys, marker="o", label=name)
            lr.set(xscale="log", xlabel="lr", ylabel="validation accuracy (seed 0)",
                   title="sensitivity to lr")  # fmt: skip
            lr.grid(alpha=0.3)
            lr.legend(fontsize=8)
            return fig

        figures[workload.name] = _plot_png(draw)
    return figures


def plan_name(plan: Plan) -> str:
    """A folder name that changes with every setting of the plan."""
    settings = json.dumps(dataclasses.asdict(plan), sort_keys=True, default=str)
    return "plan-" + hashlib.sha256(settings.encode()).hexdigest()[:12]


def _training_arguments(argv: list[str] | None) -> list[str]:
    """The arguments that say what the study trains: without ``--report``, and without
    ``--reuse`` and its folders (the results name the folders runs came from)."""
    kept, skipping = [], False
    for arg in argv if argv is not None else sys.argv[1:]:
        if arg.startswith("--"):
            skipping = arg == "--reuse"
        if not (skipping or arg == "--report"):
            kept.append(arg)
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", choices=sorted(PLANS), default="full", help="the sizes")
    parser.add_argument("--quick", action="store_true", help="a tiny subset, one epoch")
    parser.add_argument(
        "--report", action="store_true", help="write the results of the runs done; run none"
    )
    parser.add_argument("--work", type=Path, default=WORK, help="the runs (resumable)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the files go")
    parser.add_argument("--data-dir", help="the Fashion-MNIST files (default: searched)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel")
    parser.add_argument(
        "--threads", type=int, help="torch threads per run (default: cores / jobs)"
    )
    parser.add_argument(
        "--reuse", type=Path, nargs="+", default=[],
        help="plan folders of earlier studies to take runs of the same settings from",
    )  # fmt: skip
    parser.add_argument("--execute", help=argparse.SUPPRESS)  # one run, for --jobs > 1
    args = parser.parse_args(argv)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    if args.execute:
        _execute_order(args.execute, args.work, threads)
        return 0
    plan = quick_plan(args.data_dir) if args.quick else PLANS[args.plan]()
    if args.data_dir and not args.quick:
        plan.data["data_dir"] = args.data_dir
    # A SIGTERM ends the study (and its workers) as Ctrl-C does; a rerun continues it.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    work = args.work / plan_name(plan)
    work.mkdir(parents=True, exist_ok=True)
    clock = work / "wall_seconds.json"
    previous = json.loads(clock.read_text())["seconds"] if clock.exists() else 0.0
    started = time.time()
    if args.report:
        results = load_results(work)
    else:
        try:
            results = run_study(plan, work, args.jobs, threads, reuse=tuple(args.reuse))
        finally:
            _write_json(clock, {"seconds": previous + time.time() - started})
    wall = (previous + (0.0 if args.report else time.time() - started)) / 3600
    command = "python benchmarks/study.py " + " ".join(_training_arguments(argv))
    write_results(plan, results, args.results, command, wall, args.quick)
    print(f"wrote {args.results}/{'study_quick' if args.quick else 'study'}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
