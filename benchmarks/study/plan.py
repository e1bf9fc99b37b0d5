"""The study's plan: workloads, grids, seeds and sizes, and the trials each stage asks for.

Pure: no training here. Each stage follows from the results of the one before, so
:func:`planned_trials` gives every trial that can be planned with the results so far; the
runner (:mod:`.runner`) trains them and asks again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from coolmomentum.experiments.optimizers import SCHEDULE_FREE_BN_BATCHES

from .records import TrialResult, std

SCHEDULES = ("exponential", "exponential-temperature", "linear-temperature")


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    settings: dict[str, Any]  # RunConfig fields
    epochs: int


@dataclass(frozen=True)
class Trial:
    """One harness run of the study: a setting trained from one seed on one split."""

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

Results = dict[str, TrialResult]


def _best(runs: Iterable[Trial], results: Results) -> Trial | None:
    """The run with the highest final validation accuracy (None until all have finished)."""
    runs = list(runs)
    if not all(r.id in results for r in runs):
        return None
    return max(runs, key=lambda r: score(results[r.id]))


def score(result: TrialResult) -> float:
    """A trial's final accuracy; a trial that diverged scores 0 (chosen last, and counted as a
    failure in the variant's verdict)."""
    return 0.0 if result.final_acc is None else result.final_acc


def tuning_runs(plan: Plan, results: Results) -> dict[str, dict[str, list[Trial]]]:
    """Per workload and optimizer, its tuning runs (those that can be planned yet)."""
    first, *others = plan.workloads
    tune: dict[str, dict[str, list[Trial]]] = {w.name: {} for w in plan.workloads}
    for name, grid in plan.grids.items():

        def tried(lr: float, n: str = name) -> Trial:
            return Trial(first.name, n, baseline(n, lr, first, plan, first.epochs))

        tune[first.name][name] = _extended(grid, tried, results)
    stage_a = _extended(
        plan.cool_stage_a,
        lambda lr: Trial(first.name, "coolmomentum", cool(lr, "exponential")), results,
    )  # fmt: skip
    tune[first.name]["coolmomentum"] = stage_a
    best_a = _best(stage_a, results)
    if best_a is not None:
        tune[first.name]["coolmomentum"] = stage_a + [
            Trial(first.name, "coolmomentum", cool(best_a.optimizer["lr"], s))
            for s in SCHEDULES[1:]
        ]
    choice_1 = {name: _best(runs, results) for name, runs in tune[first.name].items()}
    for workload in others:
        for name, chosen in choice_1.items():
            if chosen is None:
                continue
            lrs = [chosen.optimizer["lr"] * f for f in plan.refine[workload.name]]
            schedule = chosen.optimizer.get("schedule")

            def make(lr: float, n: str = name, w: Workload = workload, s: Any = schedule) -> Trial:
                spec = cool(lr, s) if n == "coolmomentum" else baseline(n, lr, w, plan, w.epochs)
                return Trial(w.name, n, spec)

            tune[workload.name][name] = _extended(lrs, make, results)
    return tune


def _extended(lrs: list[float], make: Callable[[float], Trial], results: Results) -> list[Trial]:
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


def chosen_settings(plan: Plan, results: Results) -> dict[str, dict[str, Trial | None]]:
    """Per workload and optimizer, its best tuning run (None until its trials finished)."""
    tune = tuning_runs(plan, results)
    return {
        w.name: {name: _best(runs, results) for name, runs in tune[w.name].items()}
        for w in plan.workloads
    }


def variant_runs(plan: Plan, choices: dict[str, dict[str, Trial | None]]) -> list[Trial]:
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
            runs += [base, Trial(workload.name, "coolmomentum-wsd", variant, seed, stage="variant")]
    return runs


def variant_verdict(
    plan: Plan, results: Results, choices: dict[str, dict[str, Trial | None]]
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
            "ahead": statistics.mean(var) - statistics.mean(base) > max(std(base), std(var)),
        }
    return verdict


def final_rows(
    plan: Plan,
    choices: dict[str, Trial | None],
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


def planned_trials(plan: Plan, results: Results) -> list[Trial]:
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
                runs.append(Trial(workload.name, label, spec, seed, "test", stage="final"))
        if workload is plan.workloads[0]:
            for epochs in plan.budgets:
                for label, spec in rows.items():
                    sized = _for_length(spec, workload, plan, epochs)
                    for seed in plan.budget_seeds:
                        budget.append(Trial(workload.name, label, sized, seed, "test", epochs,
                                          "budget"))  # fmt: skip
    return _unique(runs + budget)


def _unique(runs: list[Trial]) -> list[Trial]:
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


def plan_name(plan: Plan) -> str:
    """A folder name that changes with every setting of the plan."""
    settings = json.dumps(dataclasses.asdict(plan), sort_keys=True, default=str)
    return "plan-" + hashlib.sha256(settings.encode()).hexdigest()[:12]


