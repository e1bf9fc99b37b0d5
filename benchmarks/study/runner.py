"""Training the study's trials: each one a run of the harness, resumable, ``jobs`` at a time.

The runner asks the plan (:mod:`.plan`) for the trials that can be planned with the results
so far, trains those not done (or takes them from an earlier plan's folder with ``reuse``),
stores each result as it ends (:mod:`.records`), and asks again, until the plan is complete.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .plan import Plan, Results, Trial, planned_trials, steps_per_epoch, trial_steps
from .records import Archive, TrialResult, load_results, write_json

__all__ = ["execute", "reused", "run_config", "run_study"]

ROOT = Path(__file__).resolve().parents[2]
# Harness settings that do not change what a run trains (evaluating and checkpointing leave a
# run bit for bit as it was: the harness's tests check it), so --reuse ignores them.
NOT_TRAINING = ("out", "eval_every_steps", "checkpoint_every", "checkpoint_every_minutes")


def run_config(trial: Trial, plan: Plan, work: Path) -> Any:
    """The harness's ``RunConfig`` of ``trial``: its budget's steps (a last epoch may be
    partial). A tuning trial is scored at its end only, so it evaluates there alone, and
    checkpoints every epoch; a final run evaluates every epoch."""
    from coolmomentum.experiments.config import RunConfig

    workload = plan.workload(trial.workload)
    settings = {**workload.settings, **plan.data}
    per_epoch = steps_per_epoch(workload, plan, trial.split)
    steps = trial_steps(trial, plan)
    if trial.split == "val":
        settings.update(eval_every_steps=steps, checkpoint_every=per_epoch)
    settings.update(
        epochs=-(-steps // per_epoch),
        max_steps=steps,
        seed=trial.seed,
        device="cpu",
        validation=plan.validation if trial.split == "val" else None,
        final_train_loss=trial.stage == "final",
        out=str(work),
        runs=[{**trial.optimizer, "label": trial.label}],
    )
    return RunConfig(**settings)


def execute(trial: Trial, plan: Plan, work: Path, threads: int) -> TrialResult:
    """Train ``trial`` (resuming its checkpoint if there is one); its result. A trial whose
    loss stops being finite is a result too: kept, and scored as a failure."""
    import torch

    from coolmomentum.errors import Diverged
    from coolmomentum.experiments.data import InMemoryData
    from coolmomentum.experiments.loop import train

    torch.set_num_threads(threads)
    config = run_config(trial, plan, work)
    data = InMemoryData(config, torch.device("cpu"))
    started = time.perf_counter()
    diverged = None
    try:
        metrics = train(config, config.runs[0], work / trial.id, data, resume=True,
                        log=lambda _: None)  # fmt: skip
    except Diverged as exc:
        metrics, diverged = [], str(exc)
    key = "val" if trial.split == "val" else "test"
    last = metrics[-1] if metrics else {}
    seconds = time.perf_counter() - started
    return TrialResult(
        id=trial.id,
        trial=dataclasses.asdict(trial),
        final_acc=last.get(f"{key}_acc"),
        final_loss=last.get(f"{key}_loss"),
        acc_per_epoch=[m[f"{key}_acc"] for m in metrics],
        train_loss=last.get("train_eval_loss"),
        running_train_loss=last.get("train_loss"),
        seconds=sum(m["seconds"] for m in metrics) if metrics else seconds,
        wall_seconds_this_session=seconds,
        diverged=diverged,
    )


def reused(trial: Trial, plan: Plan, work: Path, sources: Iterable[Path]) -> TrialResult | None:
    """The result of ``trial`` finished in one of the plan folders ``sources`` with every
    harness setting the same (but those in ``NOT_TRAINING``), marked with where it came
    from; else None. A run recorded by an earlier version compares as this one records it
    (:func:`coolmomentum.experiments.optimizers.canonical_settings`)."""
    from coolmomentum.experiments.config import RunConfig
    from coolmomentum.experiments.optimizers import canonical_settings

    def comparable(config: dict[str, Any]) -> dict[str, str]:
        config = {**config, "runs": [canonical_settings(r) for r in config["runs"]]}
        return {k: json.dumps(v) for k, v in config.items() if k not in NOT_TRAINING}

    wanted = comparable(run_config(trial, plan, work).to_dict())
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)
                if f.default is not dataclasses.MISSING}  # fmt: skip
    for source in sources:
        done, saved = source / "done" / f"{trial.id}.json", source / trial.id / "config.json"
        if not (done.is_file() and saved.is_file()):
            continue
        earlier = comparable({**defaults, **json.loads(saved.read_text())})  # fields added since
        if all(earlier.get(k) == v for k, v in wanted.items()):
            return TrialResult.from_json(json.loads(done.read_text())).reused(source.name)
    return None


def _store(work: Path, result: TrialResult, results: Results) -> None:
    write_json(work / "done" / f"{result.id}.json", result.to_json())
    results[result.id] = result


def run_study(
    plan: Plan,
    work: Path,
    jobs: int,
    threads: int,
    log: Any = print,
    reuse: tuple[Path, ...] = (),
    archive: Archive | None = None,
) -> Results:
    """Train every planned trial not yet done, ``jobs`` at a time; the results. The plan is renewed
    as each trial ends, so a stage starts as soon as the trials it follows from are done.

    A trial finished with the same settings in a plan folder of ``reuse`` is taken from
    there. ``archive``: the committed record of every finished trial (its settings and
    results, no checkpoints), read first and rewritten as each trial ends, so that a study
    continues on another machine with an empty ``work``. ``jobs > 1`` trains each in a
    process of its own (``--execute``); stopping the study (SIGTERM, Ctrl-C) stops them too,
    and a rerun continues.
    """
    results = {**(archive.results if archive else {}), **load_results(work)}
    running: dict[subprocess.Popen[bytes], Trial] = {}
    checked: set[str] = set()  # trials looked for in ``reuse``
    announced = False
    try:
        while True:
            busy = {trial.id for trial in running.values()}
            pending = [t for t in planned_trials(plan, results)
                       if t.id not in results and t.id not in busy]  # fmt: skip
            taken = [found for t in pending if t.id not in checked
                     and (found := reused(t, plan, work, reuse)) is not None]  # fmt: skip
            checked.update(t.id for t in pending)
            for result in taken:
                _store(work, result, results)
            if taken:
                _archive(archive, results)
                log(f"{len(taken)} runs reused from {', '.join(str(p) for p in reuse)}")
                continue  # the later stages may follow from them
            if not (pending or running):
                return results
            if not announced:
                log(f"{len(results)} runs done, {len(pending)} to run now")
                announced = True
            if jobs == 1:
                _store(work, execute(pending[0], plan, work, threads), results)
                _archive(archive, results)
                log(f"  {pending[0].id}: {_accuracy(results[pending[0].id])}")
                continue
            for trial in pending[: jobs - len(running)]:
                running[_start(trial, plan, work, threads)] = trial
            time.sleep(1)
            for process, trial in list(running.items()):
                if process.poll() is None:
                    continue
                del running[process]
                if process.returncode != 0:
                    raise RuntimeError(f"run {trial.id} failed (exit {process.returncode})")
                done = work / "done" / f"{trial.id}.json"
                results[trial.id] = TrialResult.from_json(json.loads(done.read_text()))
                _archive(archive, results)
                log(f"  {trial.id}: {_accuracy(results[trial.id])}")
    finally:  # stopped or failed: the trials in flight stop too (they resume on a rerun)
        for process in running:
            process.terminate()
        for process in running:
            process.wait()


def _archive(archive: Archive | None, results: Results) -> None:
    if archive is not None:
        archive.save(results)


def _accuracy(result: TrialResult) -> str:
    return "diverged" if result.final_acc is None else f"{result.final_acc:.4f}"


def _start(trial: Trial, plan: Plan, work: Path, threads: int) -> subprocess.Popen[bytes]:
    """A process that trains ``trial`` (:func:`execute_order`)."""
    order = json.dumps({"run": dataclasses.asdict(trial), "plan": dataclasses.asdict(plan)})
    command = [sys.executable, "-m", "benchmarks.study", "--execute", order, "--work",
               str(work), "--threads", str(threads)]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT)


def execute_order(order: str, work: Path, threads: int) -> None:
    """One trial of a ``jobs > 1`` study, in its own process; its result goes to ``done/``."""
    data = json.loads(order)
    plan = Plan.from_dict(data["plan"])
    trial = Trial(**data["run"])
    _store(work, execute(trial, plan, work, threads), {})
