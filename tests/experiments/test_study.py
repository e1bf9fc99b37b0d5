"""The optimizer study's pipeline, end to end on a few dozen images (``--quick``)."""

import dataclasses
import json
import types
from pathlib import Path

import pytest
from test_data import write_fashion_mnist

from benchmarks.study import __main__ as command
from benchmarks.study import plan, records, report, runner

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study():
    """The study's modules under one name."""
    names = {}
    for module in (plan, records, runner, report, command):
        names.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
    return types.SimpleNamespace(**names)


def test_quick_study_writes_its_tables_and_resumes(study, tmp_path, monkeypatch):
    monkeypatch.delenv("COOLMOMENTUM_DATA", raising=False)
    data = tmp_path / "fmnist"
    write_fashion_mnist(data, n_train=160, n_test=64)
    work, out = tmp_path / "work", tmp_path / "results"
    out.mkdir()
    for name in ("study_small.json", "study_small.md"):  # the earlier plan's rows
        (out / name).write_text((ROOT / "benchmarks" / "results" / name).read_text())
    argv = ["--quick", "--work", str(work), "--results", str(out), "--data-dir", str(data)]
    assert study.main(argv) == 0
    plan = study.quick_plan(str(data))
    work = work / study.plan_name(plan, True)
    done = sorted(p.name for p in (work / "done").iterdir())
    planned = study.planned_trials(plan, study.load_results(work))
    assert len(done) == len(planned) and {t.budget for t in planned} == {4, 8}
    # The lr rule's check on the LSTM: SGD tuned there, each shape at 5 multiples of its
    # predicted lr (more where the best sat at an edge), the default shape also at rho_0 0.9.
    transfer = [t for t in planned if t.workload == "lstm"]
    assert [t.stage for t in transfer].count("tune") == 1
    checked = {(t.label, t.optimizer["rho_0"]) for t in transfer if t.stage == "transfer"}
    assert checked == {("coolmomentum-cosine-temperature", 0.99),
                       ("coolmomentum-exponential", 0.99),
                       ("coolmomentum-cosine-temperature", 0.9)}  # fmt: skip
    assert len(transfer) - 1 >= 3 * len(study.TRANSFER_FACTORS)

    rows = json.loads((out / "study_quick.json").read_text())
    for r in rows:
        assert set(r) >= {"workload", "optimizer", "setting", "hyperparameters", "steps",
                          "trials", "seeds", "test_acc", "train_loss", "seconds"}  # fmt: skip
        assert len(r["test_acc"]) == len(r["train_loss"]) == len(r["seeds"])
    found = {(r["optimizer"], r["steps"]): r for r in rows if r["workload"] == "mlp"}
    assert found["sgd", 4]["setting"] == "cosine" and found["adamw-cooled", 4]["setting"] == (
        "constant")  # fmt: skip
    assert found["coolmomentum-exponential", 4]["setting"] == "exponential"
    assert found["coolmomentum-best", 4]["trials"] >= 2
    assert found["coolmomentum-paper", 4]["trials"] == 0
    assert found["sgd", 8]["seeds"] == [0, 1]  # the extra seed at the longest budget
    # One CoolMomentum shape stays at the second budget: the better one at the first.
    assert len({o for o, steps in found if steps == 8 and o in study.COOLMOMENTUM_ARMS}) == 1
    earlier = {(r["workload"], r["optimizer"]): r for r in rows if r["workload"] != "mlp"}
    assert earlier["resnet20", "sgd"]["steps"] == 624 and earlier["lstm", "sgd"]["steps"] == 468
    assert earlier["resnet20", "sgd"]["trials"] == 7  # its tuning table's rows
    report = (out / "study_quick.md").read_text()
    for heading in ("### 4 steps", "### 8 steps", "## Test accuracy against run length",
                    "## The gap", "## CoolMomentum's shapes at the first budget",
                    "## lr guidance: a rule and its check"):  # fmt: skip
        assert heading in report
    for name in ("gap", "mlp"):
        assert (out / f"study_quick_{name}.png").read_bytes()[:4] == b"\x89PNG"

    # On a new machine (no runs folder) the committed record of the trials is the study.
    archive = study.Archive(out / "study_quick_runs.json")
    assert set(archive.results) == {p.removesuffix(".json") for p in done}
    lines = []
    again = study.run_study(plan, tmp_path / "new", jobs=1, threads=1, log=lines.append,
                            archive=archive)  # fmt: skip
    assert lines == [] and set(again) == set(archive.results)

    # A study stopped part-way continues: only the missing trial is trained again.
    lost = work / "done" / done[5]
    lost.unlink()
    lines = []
    study.run_study(plan, work, jobs=2, threads=1, log=lines.append)  # in a process of its own
    assert lines[0] == f"{len(done) - 1} runs done, 1 to run now" and lost.exists()

    # A study in another folder takes every trial of the same settings from this one (also
    # where only the evaluation schedule differs), and none whose training differs.
    lines = []
    first = done[0].removesuffix(".json")
    saved = work / first / "config.json"
    saved.write_text(json.dumps({**json.loads(saved.read_text()), "eval_every_steps": 1}))
    taken = study.run_study(plan, tmp_path / "again", jobs=1, threads=1, log=lines.append,
                            reuse=(work,))  # fmt: skip
    assert lines and all(line.endswith(f"runs reused from {work}") for line in lines)
    assert len(taken) == len(done) and {r.reused_from for r in taken.values()} == {work.name}
    trial = study.Trial(**taken[first].trial)
    assert study.reused(trial, plan, tmp_path, [work]) is not None
    smoothed = dataclasses.replace(plan, data={**plan.data, "label_smoothing": 0.1})
    assert study.reused(trial, smoothed, tmp_path, [work]) is None
    # The results' command is what trains the trials, with neither --reuse nor --report.
    argv = ["--jobs", "2", "--reuse", "a", "b", "--threads", "1", "--report"]
    assert study._training_arguments(argv) == ["--jobs", "2", "--threads", "1"]


def test_a_diverged_trial_is_kept_scored_last_and_counted_in_the_tables(study, tmp_path):
    data = tmp_path / "fmnist"
    write_fashion_mnist(data, n_train=160, n_test=64)
    plan = study.quick_plan(str(data))
    run = study.Trial("mlp", "sgd", {"optimizer": "sgd", "lr": 1e30, "momentum": 0.9}, budget=4)
    summary = study.execute(run, plan, tmp_path / "work", threads=1)
    assert "not finite" in summary.diverged and summary.final_acc is None
    assert summary.acc_per_epoch == [] and summary.seconds > 0
    assert study.score(summary) == 0.0 < study.score(dataclasses.replace(summary, final_acc=0.1))
    assert study.mean_std([0.5, None, 0.7]) == "0.6000 ± 0.1414 (1 diverged)"
    assert study.mean_std([None, None]) == "diverged"


def result(accuracy):
    return records.TrialResult("id", {}, accuracy, None, [], None, None, 1.0, 1.0)


def test_a_grid_grows_past_the_edge_its_best_trial_sits_at(study):
    def make(lr):
        return study.Trial("mlp", "sgd", {"optimizer": "sgd", "lr": lr})

    def grid(accuracy):  # the grid once every trial planned has finished
        results = {}
        while True:
            runs = study._extended([1.0, 2.0, 4.0], make, results)
            todo = [r for r in runs if r.id not in results]
            if not todo:
                return [r.optimizer["lr"] for r in runs]
            results.update({r.id: result(accuracy(r.optimizer["lr"])) for r in todo})

    assert grid(lambda lr: -abs(lr - 2)) == [1, 2, 4]  # the best inside: as planned
    assert grid(lambda lr: lr) == [1, 2, 4, 8, 16]  # rising: twice past the top, no more
    assert grid(lambda lr: -abs(lr - 8)) == [1, 2, 4, 8, 16]  # found, then bracketed
    assert grid(lambda lr: -lr) == [0.25, 0.5, 1, 2, 4]
    assert grid(lambda lr: None if lr > 1 else lr) == [0.5, 1, 2, 4]  # diverged count as 0


def test_hot_start_finds_where_a_run_collapsed_for_good():
    from benchmarks import hot_start

    assert hot_start.collapsed_at([0.3, 0.1, 0.5, 0.1, 0.1]) == 3  # not at 1: it recovered
    assert hot_start.collapsed_at([0.3, 0.6, 0.7]) is None
    assert hot_start.collapsed_at([0.1, 0.1]) == 0
    assert hot_start.effective_step(0.08, 0.99) == pytest.approx(0.08 * 99.5)
    tuned = hot_start.tuned_setting()  # the study's ResNet-20 choice, from its results file
    specs = list(hot_start.variants(tuned).values())
    assert tuned["optimizer"] == "coolmomentum" and specs[0] == tuned
    assert [[k for k in tuned if s[k] != tuned[k]] for s in specs[1:]] == [["rho_0"], ["lr"]]
