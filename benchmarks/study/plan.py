"""The study's plan: workloads, budgets, arms and grids, and the trials each stage asks for.

Pure: no training here. Each stage follows from the results of the one before, so
:func:`stages` (and :func:`planned_trials`, its trials in order) gives every trial that can be
planned with the results so far; the runner (:mod:`.runner`) trains them and asks again.

Per workload and budget (the steps of the final runs), in order:

1. **tune**: every tuned arm on the validation split, one trial per lr. At the first budget
   the arm's grid (factors of 2); at each later one a local grid (x1/2, x1, x2) around the
   previous budget's choice, with its other settings. A grid whose best trial sits at an
   edge grows past it by a factor of 2, at most twice. At the first budget the best
   CoolMomentum shape also tries each of ``rho_0s`` (a local grid around its best lr), and,
   where its hot start failed (a trial at a larger lr than the best collapsed), a momentum
   warm-up (rho = 0 over the first ``MOMENTUM_WARMUP_FRACTION`` of the steps) at x1 and x2:
   these trials are the arm's too. An arm's choice is its best trial.
2. **integral** (first budget): each other CoolMomentum shape once more, at the lr that gives
   it the best shape's integral of the effective step (a diagnosis; no arm's choice).
3. **final**: every arm's choice and the paper's settings, trained on all the training
   images and scored on the test set, over ``seeds`` (``extra_seeds`` at the budgets named).
   Two more CoolMomentum rows: the best of the first N CoolMomentum trials in the declared
   order (:data:`COOLMOMENTUM_ARMS`, each arm's trials by lr), N the largest trial count of a
   rival arm at that budget; and the best over every CoolMomentum trial.

Then the **transfer check** (:func:`transfer_stage`), once every budget has its final runs: the
lr rule the tuned settings suggest, tried on a workload that did not shape it. The rule: each
CoolMomentum shape's mean effective step, as a multiple of the mean effective step of SGD
with cosine decay (``lr / (1 - momentum) / 2``) tuned on the same workload and budget; the
multiple is the geometric mean over every workload and budget. On the check's workload SGD
is tuned as everywhere, each shape is tried at the lr the rule predicts and at
``TRANSFER_FACTORS`` times it (at its arm's ``rho_0``, and the default shape once more at the
``rho_0`` the docs recommend, ``RECOMMENDED_RHO_0``: the first try a user makes). These grids
grow past an edge as the tuning grids do, and the report says how far the predicted lr was
from the best.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from coolmomentum.experiments.optimizers import SCHEDULE_FREE_BN_BATCHES
from coolmomentum.schedules import DEFAULT_SCHEDULE, Schedule

from .records import TrialResult

__all__ = [
    "ARMS",
    "COOLMOMENTUM_ARMS",
    "PLANS",
    "Arm",
    "BudgetStage",
    "Plan",
    "Trial",
    "Workload",
    "effective_step_integral",
    "mean_effective_step",
    "planned_trials",
    "quick_plan",
    "score",
    "stages",
    "steps_per_epoch",
]

Results = dict[str, TrialResult]

EDGE_EXTENSIONS = 2  # a grid whose best trial sits at an edge grows past it, at most this often
COLLAPSED_BELOW = 0.2  # a trial's accuracy below this: it collapsed (chance is 0.1)
MOMENTUM_WARMUP_FRACTION = 0.02  # the authors' EfficientNet run: 3,127 of 218,948 steps, 1.4 %
TRANSFER_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)  # around the predicted lr
RECOMMENDED_RHO_0 = 0.9  # the transfer check's extra row: the default shape at this rho_0
FIRST_N_LABEL = "coolmomentum-first-n"
BEST_LABEL = "coolmomentum-best"


@dataclass(frozen=True)
class Arm:
    """A row of the study: an optimizer with its fixed settings, tuned along lr (or not).

    ``warmup_fraction``: the learning-rate warm-up, as a fraction of each run's steps (the
    optimizers whose authors prescribe one).
    """

    label: str
    settings: dict[str, Any]  # flat OptimizerSpec settings (lr among them if not tuned)
    warmup_fraction: float = 0.0
    tuned: bool = True

    @property
    def coolmomentum(self) -> bool:
        return self.settings["optimizer"] == "coolmomentum"


# Weight decay is fixed per family: 5e-4 coupled for SGD, schedule-free SGD and CoolMomentum,
# 0.05 decoupled for the AdamW family. The cooled AdamW keeps its lr constant after the
# warm-up, as Demon uses it.
ARMS = {
    arm.label: arm
    for arm in (
        Arm("sgd", {"optimizer": "sgd", "momentum": 0.9, "lr_schedule": "cosine",
                    "weight_decay": 5e-4}),
        Arm("adamw", {"optimizer": "adamw", "lr_schedule": "cosine", "weight_decay": 0.05},
            0.05),
        Arm("sgd-schedulefree", {"optimizer": "sgd-schedulefree", "weight_decay": 5e-4}, 0.05),
        Arm("adamw-schedulefree", {"optimizer": "adamw-schedulefree", "weight_decay": 0.05},
            0.05),
        Arm("adamw-cooled", {"optimizer": "adamw-cooled", "rho_0": 0.9,
                             "schedule": "linear-temperature", "weight_decay": 0.05}, 0.05),
        *(Arm(f"coolmomentum-{shape}", {"optimizer": "coolmomentum", "rho_0": 0.99,
                                        "schedule": shape, "weight_decay": 5e-4})
          for shape in ("linear-temperature", "cosine-temperature", "exponential")),
        Arm("coolmomentum-paper", {"optimizer": "coolmomentum", "lr": 0.01, "rho_0": 0.99,
                                   "schedule": "exponential"}, tuned=False),
    )
}  # fmt: skip
# The order, declared before the study ran, in which its CoolMomentum trials count for the
# row "best of the first N": the shapes as the schedule literature ranks their lr analogues
# (linear decay first, then cosine; geometric decay last), each shape's trials by lr.
COOLMOMENTUM_ARMS = tuple(label for label, arm in ARMS.items() if arm.coolmomentum and arm.tuned)


@dataclass(frozen=True)
class Workload:
    """A network on a dataset, trained at each of its ``budgets`` (final-run steps).

    ``grids``: the first budget's lr grid of each tuned arm. ``later_arms``: the arms kept at
    the later budgets (None: all); ``later_shapes``: how many CoolMomentum shapes stay then
    (the best at the first budget).
    """

    name: str
    title: str
    settings: dict[str, Any]  # RunConfig fields
    budgets: tuple[int, ...]
    grids: dict[str, list[float]]
    later_arms: tuple[str, ...] | None = None
    later_shapes: int = len(COOLMOMENTUM_ARMS)
    extra_seeds: dict[int, tuple[int, ...]] = field(default_factory=dict)  # budget: seeds


@dataclass(frozen=True)
class Trial:
    """One harness run of the study: a setting trained from one seed on one split, for the
    steps of its budget (``split="val"``: tuning, on the training images less the held-out
    ones, for as many epochs as the final runs; ``"test"``: a final run)."""

    workload: str
    label: str  # the row of the tables
    optimizer: dict[str, Any]  # flat OptimizerSpec settings
    seed: int = 0
    split: str = "val"
    stage: str = "tune"  # tune, integral, final
    budget: int = 0  # the steps of the budget's final runs
    context: str = ""  # a digest of the workload's settings: a changed workload, new trials

    @property
    def id(self) -> str:
        key = json.dumps(dataclasses.asdict(self), sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:10]
        return f"{self.workload}-{self.stage}-{self.label}-s{self.seed}-{digest}"


@dataclass
class Plan:
    """The study's settings (``--quick`` shrinks them)."""

    workloads: list[Workload]
    validation: int  # training images held out for tuning
    seeds: list[int]  # of the final runs
    rho_0s: list[float]  # tried by the best CoolMomentum shape at the first budget
    archive: str | None = None  # results file of earlier workloads, kept as they are
    transfer: Workload | None = None  # where the lr rule is checked (one budget)
    data: dict[str, Any] = field(default_factory=dict)  # data_dir, subsets

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """The plan that ``dataclasses.asdict`` gave ``data``."""
        transfer = data.get("transfer")
        return cls(**{**data, "workloads": [Workload(**w) for w in data["workloads"]],
                      "transfer": None if transfer is None else Workload(**transfer)})  # fmt: skip

    def workload(self, name: str) -> Workload:
        found = [w for w in [*self.workloads, self.transfer] if w is not None and w.name == name]
        return found[0]


FASHION_MNIST = {"dataset": "fashion-mnist", "batch_size": 128, "eval_batch_size": 1000}


def budgets_plan() -> Plan:
    """The MLP at 1,560 / 7,800 / 50,000 steps with every arm, the convnet at 1 / 3 / 10
    epochs (468 / 1,404 / 4,680 steps: the last partial batch of an epoch is dropped) with the
    arms cut at the two longer budgets."""
    adamw_family = [2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3]
    mlp = Workload(
        "mlp", "Fashion-MNIST, MLP 784-256-256-10", {**FASHION_MNIST, "model": "mlp"},
        (1560, 7800, 50_000),
        {"sgd": [0.0125, 0.025, 0.05, 0.1, 0.2, 0.4], "adamw": adamw_family,
         "sgd-schedulefree": [0.125, 0.25, 0.5, 1.0, 2.0, 4.0],
         "adamw-schedulefree": adamw_family, "adamw-cooled": adamw_family,
         **{arm: [0.0025, 0.005, 0.01, 0.02, 0.04, 0.08] for arm in COOLMOMENTUM_ARMS}},
        extra_seeds={50_000: (2,)},
    )  # fmt: skip
    adamw_family = [2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2, 6.4e-2]
    convnet = Workload(
        "convnet", "Fashion-MNIST, convnet",
        {**FASHION_MNIST, "model": "convnet", "recompute_batch_norm": SCHEDULE_FREE_BN_BATCHES},
        (468, 1404, 4680),
        {"sgd": [0.1, 0.2, 0.4, 0.8, 1.6, 3.2], "adamw": adamw_family,
         "sgd-schedulefree": [1.0, 2.0, 4.0, 8.0, 16.0, 32.0],
         "adamw-schedulefree": [8e-3, 1.6e-2, 3.2e-2, 6.4e-2, 0.128, 0.256],
         "adamw-cooled": adamw_family,
         **{arm: [0.04, 0.08, 0.16, 0.32, 0.64, 1.28] for arm in COOLMOMENTUM_ARMS}},
        later_arms=("sgd", "adamw-schedulefree", "adamw-cooled", *COOLMOMENTUM_ARMS,
                    "coolmomentum-paper"),
        later_shapes=2,
    )  # fmt: skip
    lstm = Workload(
        "lstm", "sequential Fashion-MNIST (28 rows as 28 steps), 2-layer LSTM",
        {**FASHION_MNIST, "model": "lstm"}, (468,), {"sgd": [0.1, 0.2, 0.4, 0.8, 1.6, 3.2]},
    )  # fmt: skip
    return Plan([mlp, convnet], validation=10_000, seeds=[0, 1], rho_0s=[0.9, 0.95],
                archive="study_small.json", transfer=lstm)  # fmt: skip


PLANS = {"budgets": budgets_plan}


def quick_plan(data_dir: str | None) -> Plan:
    """Every stage of the study on a few dozen images, a few steps and fewer arms: the MLP
    workload at two budgets, one lr per arm at the first, one CoolMomentum shape kept."""
    plan = budgets_plan()
    mlp = plan.workloads[0]
    arms = ("sgd", "adamw-cooled", "coolmomentum-cosine-temperature", "coolmomentum-exponential")
    tiny = {"train_subset": 64, "test_subset": 32, "batch_size": 16, "eval_batch_size": 32}
    workload = dataclasses.replace(
        mlp, settings={**mlp.settings, **tiny}, budgets=(4, 8),
        grids={a: mlp.grids[a][2:3] for a in arms},
        later_arms=(*arms, "coolmomentum-paper"), later_shapes=1, extra_seeds={8: (1,)},
    )  # fmt: skip
    assert plan.transfer is not None
    transfer = dataclasses.replace(plan.transfer, settings={**plan.transfer.settings, **tiny},
                                   budgets=(4,), grids={"sgd": [0.4]})  # fmt: skip
    data = {"data_dir": data_dir, "sample_every_steps": 1}
    return Plan([workload], validation=32, seeds=[0], rho_0s=[0.95], archive="study_small.json",
                transfer=transfer, data=data)  # fmt: skip


def steps_per_epoch(workload: Workload, plan: Plan, split: str) -> int:
    n = workload.settings.get("train_subset") or 60_000
    return (n - (plan.validation if split == "val" else 0)) // workload.settings["batch_size"]


def trial_steps(trial: Trial, plan: Plan) -> int:
    """A trial's optimizer steps: its budget, or for tuning as many epochs of the smaller
    training set."""
    workload = plan.workload(trial.workload)
    if trial.split == "test":
        return trial.budget
    ratio = steps_per_epoch(workload, plan, "val") / steps_per_epoch(workload, plan, "test")
    return max(1, round(trial.budget * ratio))


def score(result: TrialResult) -> float:
    """A trial's final accuracy; a trial that diverged scores 0 (chosen last)."""
    return 0.0 if result.final_acc is None else result.final_acc


def effective_step_integral(settings: dict[str, Any], steps: int) -> float:
    """The mean over a run's steps of CoolMomentum's effective step factor
    ``(1 + rho) / (2 (1 - rho))`` (times lr: the effective step); 1 for the optimizers whose
    step is lr itself."""
    if settings["optimizer"] != "coolmomentum":
        return 1.0
    cooling = Schedule.create(settings.get("rho_0", 0.99), steps, None,
                              settings.get("schedule", "exponential"))  # fmt: skip
    warmup = settings.get("momentum_warmup_steps", 0)
    total = 0.0
    for k in range(steps):
        rho = 0.0 if k < warmup else float(cooling(k))
        total += (1 + rho) / (2 * (1 - rho))
    return total / steps


# --- the stages ------------------------------------------------------------------------------


@dataclass
class BudgetStage:
    """The trials of one workload at one budget, as far as they can be planned."""

    workload: Workload
    budget: int
    tune: dict[str, list[Trial]]  # per tuned arm, its trials (lr order; rho_0 and warm-up after)
    choices: dict[str, Trial | None]  # per tuned arm, its best trial (None until all finished)
    integral: list[Trial] = field(default_factory=list)
    first_n: int = 0  # N of the row "best of the first N"
    finals: dict[str, list[Trial]] = field(default_factory=dict)  # per row, one trial per seed

    def trials(self) -> list[Trial]:
        found = [t for ts in self.tune.values() for t in ts] + self.integral
        return found + [t for ts in self.finals.values() for t in ts]


def _best(trials: Iterable[Trial], results: Results) -> Trial | None:
    """The trial with the highest score (None until all have finished)."""
    trials = list(trials)
    if not trials or not all(t.id in results for t in trials):
        return None
    return max(trials, key=lambda t: score(results[t.id]))


def _extended(lrs: list[float], make: Callable[[float], Trial], results: Results) -> list[Trial]:
    """The trials ``make(lr)`` of a grid, extended by a factor of 2 past its edge while the
    best finished trial sits at that edge, at most ``EDGE_EXTENSIONS`` times."""
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


def _local(lr: float) -> list[float]:
    return [lr / 2, lr, lr * 2]


class _Maker:
    """Trials of one workload at one budget."""

    def __init__(self, plan: Plan, workload: Workload, budget: int) -> None:
        self.plan, self.workload, self.budget = plan, workload, budget
        digest = json.dumps([workload.settings, plan.validation], sort_keys=True)
        self.context = hashlib.sha256(digest.encode()).hexdigest()[:8]

    def trial(self, arm: Arm, settings: dict[str, Any], **fields: Any) -> Trial:
        draft = Trial(self.workload.name, arm.label, {}, budget=self.budget,
                      context=self.context, **fields)  # fmt: skip
        return dataclasses.replace(draft, optimizer=self.sized(arm, settings, draft))

    def sized(self, arm: Arm, settings: dict[str, Any], trial: Trial) -> dict[str, Any]:
        """``settings`` with the warm-ups sized to ``trial``'s steps."""
        steps = trial_steps(trial, self.plan)
        sized = dict(settings)
        if arm.warmup_fraction:
            sized["lr_warmup_steps"] = round(arm.warmup_fraction * steps)
        if sized.get("momentum_warmup_steps"):
            sized["momentum_warmup_steps"] = max(1, round(MOMENTUM_WARMUP_FRACTION * steps))
        return sized

    def grid(
        self, arm: Arm, lrs: list[float], base: dict[str, Any], results: Results, **fields: Any
    ) -> list[Trial]:
        return _extended(lrs, lambda lr: self.trial(arm, {**base, "lr": lr}, **fields), results)


def _arms_at(
    workload: Workload, index: int, first: BudgetStage | None, results: Results
) -> list[Arm]:
    """The tuned arms of a budget: all at the first, then ``later_arms`` with the
    ``later_shapes`` best CoolMomentum shapes of the first budget (none until it is known)."""
    arms = [a for a in ARMS.values() if a.tuned and a.label in workload.grids]
    if index == 0 or first is None:
        return arms
    if workload.later_arms is not None:
        arms = [a for a in arms if a.label in workload.later_arms]
    shapes = [a for a in arms if a.coolmomentum]
    chosen = [first.choices.get(a.label) for a in shapes]
    if any(c is None for c in chosen):
        return [a for a in arms if not a.coolmomentum]
    ranked = sorted(shapes, key=lambda a: -score(results[first.choices[a.label].id]))  # type: ignore[union-attr]
    kept = {a.label for a in ranked[: workload.later_shapes]}
    return [a for a in arms if not a.coolmomentum or a.label in kept]


def _first_budget_extras(stage: BudgetStage, maker: _Maker, results: Results) -> None:
    """The best CoolMomentum shape's rho_0 grids and, where its hot start failed, a momentum
    warm-up; then each other shape at the best one's integral of the effective step."""
    shapes = [label for label in COOLMOMENTUM_ARMS if label in stage.tune]
    bests = {label: _best(stage.tune[label], results) for label in shapes}
    if not shapes or any(b is None for b in bests.values()):
        return
    ranked = sorted(shapes, key=lambda label: -score(results[bests[label].id]))  # type: ignore[union-attr]
    label = ranked[0]
    arm, best = ARMS[label], bests[label]
    assert best is not None
    lr = best.optimizer["lr"]
    base = {k: v for k, v in best.optimizer.items() if k != "lr"}
    extra = [t for rho_0 in maker.plan.rho_0s
             for t in maker.grid(arm, _local(lr), {**base, "rho_0": rho_0}, results)]  # fmt: skip
    hotter = [t for t in stage.tune[label] if t.optimizer["lr"] > lr]
    if any(score(results[t.id]) < COLLAPSED_BELOW for t in hotter):
        warm = {**base, "momentum_warmup_steps": 1}  # sized by the maker
        extra += [maker.trial(arm, {**warm, "lr": x}) for x in (lr, 2 * lr)]
    stage.tune[label] = stage.tune[label] + extra
    winner = _best(stage.tune[label], results)
    if winner is None:
        return
    steps = trial_steps(winner, maker.plan)
    target = winner.optimizer["lr"] * effective_step_integral(winner.optimizer, steps)
    for other in ranked[1:]:
        settings = {k: v for k, v in ARMS[other].settings.items()}
        per_lr = effective_step_integral(settings, steps)
        stage.integral.append(
            maker.trial(ARMS[other], {**settings, "lr": target / per_lr}, stage="integral")
        )


def _finals(stage: BudgetStage, maker: _Maker, plan: Plan, results: Results) -> None:
    """The final runs of every choice, the paper's settings, and the two CoolMomentum rows."""
    seeds = [*plan.seeds, *stage.workload.extra_seeds.get(stage.budget, ())]
    rows: dict[str, tuple[Arm, dict[str, Any]]] = {
        label: (ARMS[label], trial.optimizer) for label, trial in stage.choices.items()
        if trial is not None
    }  # fmt: skip
    paper = ARMS["coolmomentum-paper"]
    rows[paper.label] = (paper, paper.settings)
    ordered = [t for label in COOLMOMENTUM_ARMS for t in stage.tune.get(label, [])]
    rivals = [len(ts) for label, ts in stage.tune.items() if not ARMS[label].coolmomentum]
    stage.first_n = max(rivals, default=0)
    for row, pool in ((FIRST_N_LABEL, ordered[: stage.first_n]), (BEST_LABEL, ordered)):
        best = _best(pool, results)
        if best is not None:
            rows[row] = (ARMS[best.label], best.optimizer)
    for row, (arm, settings) in rows.items():
        # A CoolMomentum row that is an arm's choice shares that arm's final runs.
        label = next((a for a, (_, s) in rows.items() if s == settings and a in ARMS), row)
        stage.finals[row] = [
            maker.trial(arm, settings, seed=seed, split="test", stage="final")
            for seed in seeds
        ]
        stage.finals[row] = [dataclasses.replace(t, label=label) for t in stage.finals[row]]


def stages(plan: Plan, results: Results) -> list[BudgetStage]:
    """Every workload's budgets as far as they can be planned with ``results``."""
    out: list[BudgetStage] = []
    for workload in plan.workloads:
        previous: BudgetStage | None = None
        first: BudgetStage | None = None
        for index, budget in enumerate(workload.budgets):
            maker = _Maker(plan, workload, budget)
            stage = BudgetStage(workload, budget, {}, {})
            for arm in _arms_at(workload, index, first, results):
                if previous is None:
                    lrs, base = workload.grids[arm.label], arm.settings
                else:
                    before = previous.choices.get(arm.label)
                    if before is None:
                        continue
                    lrs = _local(before.optimizer["lr"])
                    base = {k: v for k, v in before.optimizer.items() if k != "lr"}
                stage.tune[arm.label] = maker.grid(arm, lrs, base, results)
            if index == 0:
                _first_budget_extras(stage, maker, results)
            stage.choices = {label: _best(ts, results) for label, ts in stage.tune.items()}
            complete = bool(stage.tune) and all(c is not None for c in stage.choices.values())
            if complete:
                _finals(stage, maker, plan, results)
            out.append(stage)
            if not complete:
                break  # the later budgets start from this one's choices
            previous = stage
            first = first or stage
    return out


def sgd_mean_effective_step(settings: dict[str, Any]) -> float:
    """SGD's mean effective step over a run with cosine decay: ``lr / (1 - momentum)`` times
    the cosine's mean, 1/2."""
    return settings["lr"] / (1 - settings.get("momentum", 0.0)) / 2


def mean_effective_step(trial: Trial, plan: Plan) -> float | None:
    """The step ``trial`` takes on average, comparable between momentum-SGD-like optimizers:
    CoolMomentum's ``lr (1 + rho) / (2 (1 - rho))`` averaged over the run, SGD-cosine's
    ``lr / (1 - momentum) / 2``; none for the adaptive and schedule-free optimizers."""
    settings = trial.optimizer
    if settings["optimizer"] == "coolmomentum":
        return settings["lr"] * effective_step_integral(settings, trial_steps(trial, plan))
    if settings["optimizer"] == "sgd" and settings.get("lr_schedule") == "cosine":
        return sgd_mean_effective_step(settings)
    return None


def rule_ratios(plan: Plan, all_stages: list[BudgetStage]) -> dict[str, list[float]]:
    """Per CoolMomentum shape, its tuned mean effective step over tuned SGD's, at every
    workload and budget where both were chosen."""
    ratios: dict[str, list[float]] = {}
    for stage in all_stages:
        sgd = stage.choices.get("sgd")
        for label in COOLMOMENTUM_ARMS:
            chosen = stage.choices.get(label)
            if sgd is None or chosen is None:
                continue
            mean = mean_effective_step(chosen, plan)
            assert mean is not None  # a CoolMomentum arm
            ratios.setdefault(label, []).append(mean / sgd_mean_effective_step(sgd.optimizer))
    return ratios


@dataclass
class TransferStage:
    """The lr rule on a workload that did not shape it."""

    workload: Workload
    budget: int
    sgd: list[Trial]
    rule: dict[str, float]  # per shape: the multiple of SGD's mean effective step
    predicted: dict[str, float] = field(default_factory=dict)  # per row: the lr
    trials: dict[str, list[Trial]] = field(default_factory=dict)  # per row, by lr

    def all_trials(self) -> list[Trial]:
        return self.sgd + [t for ts in self.trials.values() for t in ts]


def transfer_stage(
    plan: Plan, results: Results, all_stages: list[BudgetStage]
) -> TransferStage | None:
    """The transfer check, once every budget of every workload has its final runs."""
    workload = plan.transfer
    budgets = sum(len(w.budgets) for w in plan.workloads)
    if workload is None or len(all_stages) < budgets or not all(s.finals for s in all_stages):
        return None
    budget = workload.budgets[0]
    maker = _Maker(plan, workload, budget)
    sgd_arm = ARMS["sgd"]
    rule = {label: math.exp(statistics.mean(math.log(r) for r in ratios))
            for label, ratios in rule_ratios(plan, all_stages).items()}  # fmt: skip
    sgd_trials = maker.grid(sgd_arm, workload.grids["sgd"], sgd_arm.settings, results)
    stage = TransferStage(workload, budget, sgd_trials, rule)
    sgd = _best(stage.sgd, results)
    if sgd is None:
        return stage
    default = f"coolmomentum-{DEFAULT_SCHEDULE}"
    rows = [(label, label, ARMS[label].settings) for label in rule]
    if default in rule:
        row = f"{default}, rho_0 {RECOMMENDED_RHO_0:g}"
        rows.append((row, default, {**ARMS[default].settings, "rho_0": RECOMMENDED_RHO_0}))
    for row, label, settings in rows:
        arm = ARMS[label]
        draft = maker.trial(arm, {**settings, "lr": 1.0}, stage="transfer")
        per_lr = effective_step_integral(draft.optimizer, trial_steps(draft, plan))
        predicted = rule[label] * sgd_mean_effective_step(sgd.optimizer) / per_lr
        stage.predicted[row] = predicted
        lrs = [predicted * f for f in TRANSFER_FACTORS]
        stage.trials[row] = maker.grid(arm, lrs, settings, results, stage="transfer")
    return stage


def planned_trials(plan: Plan, results: Results) -> list[Trial]:
    """Every trial that can be planned with ``results``, without repeats, in the order they
    should run: tuning and finals budget by budget, the transfer check, the extra seeds
    last."""
    trials: dict[str, Trial] = {}
    extra: dict[str, Trial] = {}
    all_stages = stages(plan, results)
    for stage in all_stages:
        for trial in stage.trials():
            later = trial.seed not in plan.seeds and trial.stage == "final"
            (extra if later else trials).setdefault(trial.id, trial)
    transfer = transfer_stage(plan, results, all_stages)
    for trial in transfer.all_trials() if transfer else []:
        trials.setdefault(trial.id, trial)
    return list(trials.values()) + [t for i, t in extra.items() if i not in trials]


def plan_name(plan: Plan, quick: bool) -> str:
    """The plan's folder: one per plan, whatever its settings (the trials' ids carry them)."""
    return "quick" if quick else "budgets"
