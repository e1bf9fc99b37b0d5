"""The study's results files: the tables (Markdown), the records (JSON) and the figures,
from the results of the trials, in the order of the plan."""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path
from typing import Any

from coolmomentum import _plot

from .plan import (
    VARIANT_DECAY_FRACTION,
    Plan,
    Results,
    Trial,
    Workload,
    chosen_settings,
    planned_trials,
    score,
    tuning_runs,
    variant_verdict,
)
from .records import TrialResult, mean_std, write_json

__all__ = ["summarize", "write_results"]


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
    finals: dict[str, dict[str, list[TrialResult]]] = {}
    for run in planned_trials(plan, results):  # the plan's order, whatever order runs ended in
        if run.stage in ("final", "budget") and run.id in results:
            key = run.label if run.stage == "final" else f"{run.label}@{run.epochs}"
            finals.setdefault(run.workload, {}).setdefault(key, []).append(results[run.id])
    for workload in plan.workloads:
        for rs in finals.get(workload.name, {}).values():
            rs.sort(key=lambda r: r.trial["seed"])
            run = Trial(**rs[0].trial)
            record = {
                "workload": workload.name,
                "optimizer": run.label,
                "setting": setting_record(run.optimizer),
                "seeds": [r.trial["seed"] for r in rs],
                "test_acc": [r.final_acc for r in rs],
                "train_loss": [r.train_loss for r in rs],
                "seconds": statistics.mean(r.seconds for r in rs),
            }
            if run.stage == "budget":
                record["budget_epochs"] = run.epochs
            records.append(record)
    return {"tune": tune, "choices": choices, "records": records, "finals": finals}


def write_results(
    plan: Plan, results: Results, out: Path, command: str, wall_hours: float, quick: bool
) -> None:
    from coolmomentum._io import atomic_write
    from coolmomentum.experiments.optimizers import SCHEDULE_FREE_BN_BATCHES

    s = summarize(plan, results)
    out.mkdir(parents=True, exist_ok=True)
    prefix = "study_quick" if quick else "study"
    records = s["records"]
    write_json(out / f"{prefix}.json", records)
    used = {r.id: results[r.id] for r in planned_trials(plan, results) if r.id in results}
    unused = len(results) - len(used)
    unused_note = (f" (and {unused} finished runs that no stage uses: planned from a "
                   "choice that changed when a grid grew past its edge)") if unused else ""
    lines = [
        "# The optimizer study",
        "",
        f"Command: `{command}`. Machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, torch {_torch_version()}; CPU only. "
        f"Wall time: {wall_hours:.1f} h over all invocations. "
        f"Runs: {len(used)}, {sum(r.seconds for r in used.values()) / 3600:.1f} h of "
        f"training in all{unused_note}. Seconds were measured while other work shared the "
        "machine: compare them within a table, not with other files." + _reuse_note(used),
        "",
        "Protocol: see the docstring of `benchmarks/study/__init__.py`. Tuning reads only the "
        f"validation split (the last {plan.validation:,} training images); the test set is read "
        "only by the final and budget runs, which train on all the workload's training images "
        "(the held-out ones given back; a subset in a title is the first N). Weight decay is "
        "fixed per family (5e-4 coupled for SGD, schedule-free SGD and CoolMomentum; 0.05 "
        "decoupled for AdamW and schedule-free AdamW); AdamW and both schedule-free optimizers "
        "warm up over 5 % of the steps. Schedule-free runs are evaluated at their averaged "
        "weights. Batch norm's statistics are recomputed at the evaluated weights "
        f"({SCHEDULE_FREE_BN_BATCHES} batches) for every optimizer on the workloads with batch "
        "norm, for schedule-free on all.",
        "",
    ]
    pending = [r for r in planned_trials(plan, results) if r.id not in results]
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
                        f"| {_acc(results[run.id].final_acc)} |"
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
                    f"| {mean_std(r['test_acc'])} | {mean_std(r['train_loss'])} "
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
        if r.reused_from is not None:
            sources[r.reused_from] = sources.get(r.reused_from, 0) + 1
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
            f"| {name} | {mean_std(v['coolmomentum'])} | {mean_std(v['coolmomentum-wsd'])} "
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
            rows.setdefault(r["optimizer"], {})[epochs] = mean_std(r["test_acc"])
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

        def draw(finals: dict[str, list[TrialResult]] = finals,
                 workload: Workload = workload) -> Any:  # fmt: skip
            fig, (acc, lr) = _plot.figure(1, 2, size=(11, 4))
            for label, rs in finals.items():
                if "@" in label:
                    continue
                curves = [r.acc_per_epoch for r in rs if r.acc_per_epoch]
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

        figures[workload.name] = _plot.png_bytes(draw())
    return figures


