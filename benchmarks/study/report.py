"""The study's results files: the records (JSON), the tables (Markdown) and the figures, from
the results of the trials, in the order of the plan.

Every record of ``study.json`` names ``workload``, ``optimizer`` (the row), ``setting`` (a
CoolMomentum row's cooling schedule, a rival's learning-rate schedule), ``hyperparameters``
(the final runs' settings), ``steps`` (optimizer steps of a final run), ``trials`` (the
tuning trials behind the setting), ``seeds``, ``test_acc``, ``train_loss`` (over the whole
training set in evaluation mode at the end) and ``seconds`` (of training, mean per run).
"""

from __future__ import annotations

import os
import platform
import re
import statistics
from pathlib import Path
from typing import Any

from coolmomentum import _plot
from coolmomentum.experiments.optimizers import KINDS

from .plan import (
    ARMS,
    BEST_LABEL,
    COLLAPSED_BELOW,
    COOLMOMENTUM_ARMS,
    FIRST_N_LABEL,
    RECOMMENDED_RHO_0,
    TRANSFER_FACTORS,
    BudgetStage,
    Plan,
    Results,
    Trial,
    mean_effective_step,
    planned_trials,
    rule_ratios,
    score,
    stages,
    steps_per_epoch,
    transfer_stage,
)
from .records import TrialResult, mean_std, write_json

__all__ = ["ARCHIVED", "archived_records", "records", "write_results"]

# Workloads of the study's earlier plan, kept at the one budget they had: their final rows
# are read from its results file. Steps: 5,000 images in batches of 32 for 4 epochs; 20,000
# in batches of 128 for 3 epochs.
ARCHIVED = {"resnet20": ("ResNet-20", 624), "lstm": ("LSTM", 468)}
ROW_TITLES = {
    FIRST_N_LABEL: "CoolMomentum, best of the first N trials",
    BEST_LABEL: "CoolMomentum, best of all trials",
}


def setting_name(settings: dict[str, Any]) -> str:
    """A row's ``setting``: CoolMomentum's cooling schedule, else the learning-rate schedule."""
    if settings["optimizer"] == "coolmomentum":
        return str(settings.get("schedule", "exponential"))
    if KINDS[settings["optimizer"]].schedule_free:
        return "schedule-free"
    return str(settings.get("lr_schedule", "constant"))


def describe(settings: dict[str, Any]) -> str:
    """A setting in a few words: lr, the schedules, warm-ups, weight decay."""
    parts = [f"lr {settings['lr']:g}"]
    if settings.get("schedule"):
        parts.append(f"{settings['schedule']} from rho_0 {settings.get('rho_0')}")
    if settings["optimizer"] != "coolmomentum":
        parts.append(setting_name(settings))
    if settings.get("momentum_warmup_steps"):
        parts.append(f"momentum 0 for {settings['momentum_warmup_steps']} steps")
    if settings.get("lr_warmup_steps"):
        parts.append(f"lr warm-up {settings['lr_warmup_steps']} steps")
    if settings.get("weight_decay"):
        parts.append(f"wd {settings['weight_decay']:g}")
    return ", ".join(parts)


def _accuracy(result: TrialResult | None) -> str:
    if result is None:
        return "-"
    return "diverged" if result.final_acc is None else f"{result.final_acc:.4f}"


def _trial_count(stage: BudgetStage, row: str) -> int:
    """The tuning trials behind a row: its arm's; N; every CoolMomentum trial; none."""
    if row == FIRST_N_LABEL:
        return stage.first_n
    if row == BEST_LABEL:
        return sum(len(stage.tune.get(label, [])) for label in COOLMOMENTUM_ARMS)
    return len(stage.tune.get(row, []))


def records(plan: Plan, results: Results) -> list[dict[str, Any]]:
    """One record per final row with every seed finished, in the plan's order."""
    out = []
    for stage in stages(plan, results):
        for row, trials in stage.finals.items():
            if not all(t.id in results for t in trials):
                continue
            done = [results[t.id] for t in trials]
            out.append({
                "workload": stage.workload.name,
                "optimizer": row,
                "setting": setting_name(trials[0].optimizer),
                "hyperparameters": trials[0].optimizer,
                "steps": stage.budget,
                "trials": _trial_count(stage, row),
                "seeds": [t.seed for t in trials],
                "test_acc": [r.final_acc for r in done],
                "train_loss": [r.train_loss for r in done],
                "seconds": statistics.mean(r.seconds for r in done),
            })  # fmt: skip
    return out


def archived_records(path: Path) -> list[dict[str, Any]]:
    """The final rows of :data:`ARCHIVED` workloads from the earlier plan's results (its
    ``.json`` and, for the trial counts, its tuning tables in the ``.md`` beside it), in this
    study's schema."""
    if not path.is_file():
        return []
    import json

    counts = _tuning_counts(path.with_suffix(".md"))
    out = []
    for r in json.loads(path.read_text()):
        if r["workload"] not in ARCHIVED or "budget_epochs" in r:
            continue
        settings = {k: v for k, v in r["setting"].items() if k != "lr_schedule"}
        out.append({
            "workload": r["workload"], "optimizer": r["optimizer"],
            "setting": setting_name(settings), "hyperparameters": settings,
            "steps": ARCHIVED[r["workload"]][1],
            "trials": counts.get((r["workload"], r["optimizer"]), 0),
            "seeds": r["seeds"], "test_acc": r["test_acc"], "train_loss": r["train_loss"],
            "seconds": r["seconds"], "archived": path.name,
        })  # fmt: skip
    return out


def _tuning_counts(md: Path) -> dict[tuple[str, str], int]:
    """``(workload, optimizer): rows`` of the tuning tables of the earlier plan's report."""
    counts: dict[tuple[str, str], int] = {}
    workload, tuning = None, False
    for line in md.read_text().splitlines() if md.is_file() else []:
        if line.startswith("## "):
            workload = next((k for k, (name, _) in ARCHIVED.items() if name in line), None)
        elif line.startswith("### "):
            tuning = line.startswith("### Tuning")
        elif workload and tuning and (m := re.match(r"\| ([\w-]+) \| lr ", line)):
            key = (workload, m.group(1))
            counts[key] = counts.get(key, 0) + 1
    return counts


def write_results(
    plan: Plan, results: Results, out: Path, command: str, wall_hours: float, prefix: str
) -> None:
    """Write ``<prefix>.json``, ``<prefix>.md`` and the figures into ``out``."""
    from coolmomentum._io import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    found = records(plan, results)
    earlier = archived_records(out / plan.archive) if plan.archive else []
    write_json(out / f"{prefix}.json", found + earlier)
    all_stages = stages(plan, results)
    lines = _header(plan, results, command, wall_hours)
    for workload in plan.workloads:
        lines += [f"## {workload.title}", ""]
        for stage in (s for s in all_stages if s.workload is workload):
            lines += _stage_section(plan, stage, results)
    lines += _length_section(plan, found, earlier)
    lines += _gap_section(plan, all_stages, results, earlier)
    lines += _first_budget_section(plan, all_stages, results)
    lines += _transfer_section(plan, all_stages, results)
    figures = {"gap": _gap_figure(plan, all_stages, results, earlier)}
    for stage in all_stages:
        if stage.budget == stage.workload.budgets[0]:
            figures[stage.workload.name] = _lr_figure(stage, results)
    for name, png in figures.items():
        if png is not None:
            atomic_write(out / f"{prefix}_{name}.png", png)
            lines.append(f"![{name}]({prefix}_{name}.png)")
    lines.append("")
    atomic_write(out / f"{prefix}.md", "\n".join(lines))


def _header(plan: Plan, results: Results, command: str, wall_hours: float) -> list[str]:
    import torch

    planned = planned_trials(plan, results)
    used = [results[t.id] for t in planned if t.id in results]
    pending = len(planned) - len(used)
    lines = [
        "# The optimizer study: CoolMomentum against run length",
        "",
        f"Command: `{command}`. Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, torch {torch.__version__}; CPU only. Wall time: "
        f"{wall_hours:.1f} h over all invocations. Trials: {len(used)}, "
        f"{sum(r.seconds for r in used) / 3600:.1f} h of training in all. Seconds were "
        "measured while other work shared the machine: compare them within a table only.",
        "",
        "Protocol: the docstrings of `benchmarks/study/__init__.py` and `plan.py`. Tuning reads "
        f"only the validation split (the last {plan.validation:,} training images) and trains "
        "as many epochs as the final runs; the final runs train on all 60,000 images and alone "
        "read the test set. Budgets are the final runs' optimizer steps (batch 128, 468 steps "
        "an epoch). Weight decay is fixed per family (5e-4 coupled for SGD, schedule-free SGD "
        "and CoolMomentum; 0.05 decoupled for the AdamW family); the AdamW family and "
        "schedule-free SGD warm up over 5 % of the steps. Schedule-free runs are evaluated at "
        "their averaged weights; batch norm's statistics are recomputed at the evaluated "
        "weights for every optimizer. A tuned lr marked *edge* is still at its grid's edge "
        "after the grid grew twice.",
        "",
    ]
    if pending:
        lines[2:2] = [
            f"**Partial results**: {len(used)} trials finished, {pending} more planned at the "
            "stages reached; later stages follow from them.",
            "",
        ]
    return lines


def _at_edge(trials: list[Trial], chosen: Trial) -> bool:
    """Whether ``chosen`` has the smallest or largest lr among the trials of its setting."""
    same = [t.optimizer["lr"] for t in trials
            if {**t.optimizer, "lr": 0} == {**chosen.optimizer, "lr": 0}]  # fmt: skip
    return len(same) > 1 and chosen.optimizer["lr"] in (min(same), max(same))


def _stage_section(plan: Plan, stage: BudgetStage, results: Results) -> list[str]:
    epochs = stage.budget / steps_per_epoch(stage.workload, plan, "test")
    lines = [f"### {stage.budget:,} steps ({epochs:.3g} epochs)", "",
             "| arm | trials | chosen setting | val acc | effective step, mean |",
             "|---|---:|---|---:|---:|"]  # fmt: skip
    for label, trials in stage.tune.items():
        chosen = stage.choices.get(label)
        done = sum(t.id in results for t in trials)
        if chosen is None:
            lines.append(f"| {label} | {done} of {len(trials)} | - | - | - |")
            continue
        edge = " *edge*" if _at_edge(trials, chosen) else ""
        mean = mean_effective_step(chosen, plan)
        lines.append(f"| {label} | {len(trials)} | {describe(chosen.optimizer)}{edge} | "
                     f"{_accuracy(results[chosen.id])} | "
                     f"{'-' if mean is None else f'{mean:.3g}'} |")  # fmt: skip
    if stage.finals:
        lines += ["", f"Final runs (test set). N = {stage.first_n}, the largest trial count "
                  "of a rival arm.", "",
                  "| row | setting | trials | seeds | test acc | train loss (eval mode) | s/run |",
                  "|---|---|---:|---|---:|---:|---:|"]  # fmt: skip
        for row, trials in stage.finals.items():
            done = [results[t.id] for t in trials if t.id in results]
            if len(done) < len(trials):
                lines.append(f"| {row} | {describe(trials[0].optimizer)} | | {len(done)} of "
                             f"{len(trials)} done | | | |")  # fmt: skip
                continue
            lines.append(
                f"| {ROW_TITLES.get(row, row)} | {describe(trials[0].optimizer)} | "
                f"{_trial_count(stage, row)} | {[t.seed for t in trials]} | "
                f"{mean_std([r.final_acc for r in done])} | "
                f"{mean_std([r.train_loss for r in done])} | "
                f"{statistics.mean(r.seconds for r in done):.0f} |"
            )
    return [*lines, ""]


def _length_section(
    plan: Plan, found: list[dict[str, Any]], earlier: list[dict[str, Any]]
) -> list[str]:
    """Test accuracy of every row at every budget, a table per workload."""
    lines = ["## Test accuracy against run length", ""]
    for name in [w.name for w in plan.workloads] + list(ARCHIVED):
        rows = [r for r in found + earlier if r["workload"] == name]
        if not rows:
            continue
        steps = sorted({r["steps"] for r in rows})
        table: dict[str, dict[int, str]] = {}
        for r in rows:
            table.setdefault(r["optimizer"], {})[r["steps"]] = mean_std(r["test_acc"])
        lines += [f"**{name}**" + (" (earlier plan, one budget)" if name in ARCHIVED else ""), "",
                  "| row | " + " | ".join(f"{s:,} steps" for s in steps) + " |",
                  "|---|" + "---:|" * len(steps)]  # fmt: skip
        for row, cells in table.items():
            lines.append(f"| {ROW_TITLES.get(row, row)} | "
                         + " | ".join(cells.get(s, "-") for s in steps) + " |")  # fmt: skip
        lines.append("")
    return lines


def _gap(stage: BudgetStage, results: Results) -> tuple[str, str, list[float]] | None:
    """The best CoolMomentum arm and the best rival, each picked by its validation accuracy,
    and the differences of their test accuracies, seed by seed (None until finished)."""

    def best(labels: list[str]) -> str | None:
        chosen = {label: stage.choices.get(label) for label in labels}
        if not chosen or any(c is None for c in chosen.values()):
            return None
        return max(chosen, key=lambda label: score(results[chosen[label].id]))  # type: ignore[union-attr]

    cool = best([label for label in stage.tune if ARMS[label].coolmomentum])
    rival = best([label for label in stage.tune if not ARMS[label].coolmomentum])
    if cool is None or rival is None:
        return None
    pairs = list(zip(stage.finals.get(cool, []), stage.finals.get(rival, []), strict=False))
    if not pairs or not all(a.id in results and b.id in results for a, b in pairs):
        return None
    gaps = [score(results[a.id]) - score(results[b.id]) for a, b in pairs]
    return cool, rival, gaps


def _archived_gap(earlier: list[dict[str, Any]], name: str) -> tuple[str, str, list[float]] | None:
    rows = [r for r in earlier if r["workload"] == name]
    cool = [r for r in rows if r["optimizer"] == "coolmomentum"]
    rivals = [r for r in rows if not r["optimizer"].startswith("coolmomentum")]
    if not cool or not rivals:
        return None
    rival = max(rivals, key=lambda r: statistics.mean(r["test_acc"]))
    gaps = [(a or 0.0) - (b or 0.0) for a, b in zip(cool[0]["test_acc"], rival["test_acc"],
                                                     strict=False)]  # fmt: skip
    return "coolmomentum", rival["optimizer"], gaps


def _gap_section(
    plan: Plan, all_stages: list[BudgetStage], results: Results, earlier: list[dict[str, Any]]
) -> list[str]:
    lines = ["## The gap: best CoolMomentum minus best rival", "",
             "Each picked by its validation accuracy at that budget (the earlier plan's rows "
             "by test accuracy); test accuracy, mean and spread of the seed-by-seed "
             "differences.", "",
             "| workload | steps | CoolMomentum | rival | gap (points) |",
             "|---|---:|---|---|---:|"]  # fmt: skip
    for stage in all_stages:
        found = _gap(stage, results)
        if found is not None:
            cool, rival, gaps = found
            lines.append(f"| {stage.workload.name} | {stage.budget:,} | {cool} | {rival} | "
                         f"{_points(gaps)} |")  # fmt: skip
    for name, (_, steps) in ARCHIVED.items():
        found = _archived_gap(earlier, name)
        if found is not None:
            lines.append(f"| {name} | {steps:,} | {found[0]} | {found[1]} | "
                         f"{_points(found[2])} |")  # fmt: skip
    return [*lines, ""]


def _points(gaps: list[float]) -> str:
    spread = statistics.stdev(gaps) if len(gaps) > 1 else 0.0
    return f"{100 * statistics.mean(gaps):+.2f} ± {100 * spread:.2f}"


def _first_budget_section(
    plan: Plan, all_stages: list[BudgetStage], results: Results
) -> list[str]:
    """Diagnosis at each workload's first budget: CoolMomentum's shapes by lr (val accuracy,
    collapses), the effective step they were tuned to, and the equal-integral trials."""
    lines = ["## CoolMomentum's shapes at the first budget", "",
             f"Validation accuracy of every trial (collapsed: below {COLLAPSED_BELOW}). Mean "
             "effective step: lr times the mean over the run of (1 + rho) / (2 (1 - rho)).",
             ""]  # fmt: skip
    for stage in all_stages:
        if stage.budget != stage.workload.budgets[0]:
            continue
        lines += [f"**{stage.workload.name}, {stage.budget:,} steps**", "",
                  "| shape | setting | val acc | mean effective step |",
                  "|---|---|---:|---:|"]  # fmt: skip
        extra = [(t.label + " (equal integral)", t) for t in stage.integral]
        tried = [(label, t) for label in COOLMOMENTUM_ARMS for t in stage.tune.get(label, [])]
        for label, trial in tried + extra:
            if trial.id not in results:
                continue
            mean = mean_effective_step(trial, plan)
            lines.append(f"| {label} | {describe(trial.optimizer)} | "
                         f"{_accuracy(results[trial.id])} | {mean:.3g} |")  # fmt: skip
        lines.append("")
    return lines


def _transfer_section(plan: Plan, all_stages: list[BudgetStage], results: Results) -> list[str]:
    """The lr rule (each shape's mean effective step over SGD-cosine's, per workload and
    budget) and its check on the transfer workload."""
    ratios = rule_ratios(plan, all_stages)
    if not ratios:
        return []
    lines = ["## lr guidance: a rule and its check", "",
             "CoolMomentum's tuned mean effective step as a multiple of tuned SGD-cosine's "
             "(`lr / (1 - momentum) / 2`), at each workload and budget:", "",
             "| shape | multiples | geometric mean |", "|---|---|---:|"]  # fmt: skip
    for label, values in ratios.items():
        geometric = statistics.geometric_mean(values)
        lines.append(f"| {label} | {', '.join(f'{v:.2g}' for v in values)} | {geometric:.2g} |")
    stage = transfer_stage(plan, results, all_stages)
    if stage is None:
        return [*lines, "", "The check waits for every budget's final runs.", ""]
    sgd = _best_finished(stage.sgd, results)
    # Each row's trials by their multiple of its predicted lr; grids that grew past an edge
    # add columns.
    by_factor = {
        row: {float(f"{t.optimizer['lr'] / stage.predicted[row]:.3g}"): t for t in trials}
        for row, trials in stage.trials.items()
    }
    factors = sorted({f for cells in by_factor.values() for f in cells})
    lines += ["", f"The check on {stage.workload.title}, {stage.budget:,} steps (validation "
              f"accuracy; SGD-cosine tuned there: {describe(sgd.optimizer) if sgd else '-'}, "
              f"{_accuracy(results.get(sgd.id)) if sgd else '-'}). Each shape at its arm's "
              f"`rho_0` and the default shape at `rho_0` {RECOMMENDED_RHO_0:g}, at the lr the "
              f"rule predicts times {', '.join(f'{f:g}' for f in TRANSFER_FACTORS)}, and past "
              "an edge where the best sat there (at most twice):", "",
              "| row | predicted lr | val acc at x" + " | x".join(f"{f:g}" for f in factors)
              + " | best at |", "|---|---:|" + "---:|" * len(factors) + "---:|"]  # fmt: skip
    for row, cells in by_factor.items():
        accuracies = " | ".join(
            _accuracy(results.get(cells[f].id)) if f in cells else "" for f in factors
        )
        best = _best_finished(list(cells.values()), results)
        at = f"x{best.optimizer['lr'] / stage.predicted[row]:.3g}" if best else "-"
        if best and _at_edge(list(cells.values()), best):
            at += " (edge)"
        lines.append(f"| {row} | {stage.predicted[row]:.3g} | {accuracies} | {at} |")
    return [*lines, ""]


def _best_finished(trials: list[Trial], results: Results) -> Trial | None:
    done = [t for t in trials if t.id in results]
    if not done or len(done) < len(trials):
        return None
    return max(done, key=lambda t: score(results[t.id]))


def _gap_figure(
    plan: Plan, all_stages: list[BudgetStage], results: Results, earlier: list[dict[str, Any]]
) -> bytes | None:
    curves: dict[str, list[tuple[int, list[float]]]] = {}
    for stage in all_stages:
        found = _gap(stage, results)
        if found is not None:
            curves.setdefault(stage.workload.name, []).append((stage.budget, found[2]))
    for name, (_, steps) in ARCHIVED.items():
        found = _archived_gap(earlier, name)
        if found is not None:
            curves[f"{name} (earlier plan)"] = [(steps, found[2])]
    if not curves:
        return None
    fig, ax = _plot.figure(size=(7, 4.5))
    drawn = {}  # per curve: its steps, mean gaps and spreads, in points
    for name, points in curves.items():
        means = [100 * statistics.mean(g) for _, g in points]
        spread = [100 * (statistics.stdev(g) if len(g) > 1 else 0.0) for _, g in points]
        drawn[name] = ([s for s, _ in points], means, spread)
    # The scale is the current plan's; an earlier plan's point beyond it (a collapsed seed)
    # is drawn at the edge, its value in the legend.
    names = {w.name for w in plan.workloads}
    current = [(m, e) for name, (_, ms, es) in drawn.items() if name in names
               for m, e in zip(ms, es, strict=True)]  # fmt: skip
    low = min([0.0, *(m - e for m, e in current)]) - 0.5
    high = max([0.0, *(m + e for m, e in current)]) + 0.5
    for name, (xs, means, spread) in drawn.items():
        if all(low <= m <= high for m in means) or not current:
            ax.errorbar(xs, means, yerr=spread, marker="o", capsize=3, label=name)
            continue
        edge = [min(max(m, low), high) for m in means]
        values = ", ".join(f"{m:+.1f} ± {e:.1f}" for m, e in zip(means, spread, strict=True))
        ax.plot(xs, edge, marker="v" if edge[0] == low else "^", ls="",
                label=f"{name}: {values}, off the scale")  # fmt: skip
    if current:
        ax.set_ylim(low, high)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xscale="log", xlabel="optimizer steps of the final runs",
           ylabel="best CoolMomentum - best rival (points)",
           title="CoolMomentum's gap against run length")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _plot.png_bytes(fig)


def _lr_figure(stage: BudgetStage, results: Results) -> bytes | None:
    """Validation accuracy against lr at the first budget, one curve per arm (the lr grid at
    the arm's base setting)."""
    fig, ax = _plot.figure(size=(7, 4.5))
    drawn = False
    for label, trials in stage.tune.items():
        base = ARMS[label].settings
        points = sorted((t.optimizer["lr"], score(results[t.id])) for t in trials
                        if t.id in results and all(t.optimizer.get(k) == v
                                                   for k, v in base.items()))  # fmt: skip
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=label, ls="--" if ARMS[label].coolmomentum else "-")
            drawn = True
    if not drawn:
        return None
    ax.set(xscale="log", xlabel="lr", ylabel="validation accuracy",
           title=f"{stage.workload.title}, {stage.budget:,} steps")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _plot.png_bytes(fig)

