"""``python -m benchmarks.study``: run the study (resumable) and write its results files."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from . import __doc__ as STUDY_DOC
from .plan import PLANS, plan_name, quick_plan
from .records import Archive, load_results
from .runner import ROOT, execute_order, run_study

RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "runs" / "study"


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
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.study", description=(STUDY_DOC or "").splitlines()[0]
    )
    parser.add_argument("--plan", choices=sorted(PLANS), default="budgets", help="the plan")
    parser.add_argument("--quick", action="store_true", help="a tiny subset, a few steps")
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
        execute_order(args.execute, args.work, threads)
        return 0
    plan = quick_plan(args.data_dir) if args.quick else PLANS[args.plan]()
    if args.data_dir and not args.quick:
        plan.data["data_dir"] = args.data_dir
    # A SIGTERM ends the study (and its workers) as Ctrl-C does; a rerun continues it.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    work = args.work / plan_name(plan, args.quick)
    work.mkdir(parents=True, exist_ok=True)
    prefix = "study_quick" if args.quick else "study"
    archive = Archive(args.results / f"{prefix}_runs.json")
    if args.report:
        results = {**archive.results, **load_results(work)}
        wall = archive.earlier_seconds / 3600
    else:
        try:
            results = run_study(plan, work, args.jobs, threads, reuse=tuple(args.reuse),
                                archive=archive)  # fmt: skip
        finally:
            archive.save({**archive.results, **load_results(work)})
        wall = archive.wall_seconds() / 3600
    command = "python -m benchmarks.study " + " ".join(_training_arguments(argv))
    from .report import write_results  # after the runs: a report's error loses none of them

    write_results(plan, results, args.results, command, wall, prefix)
    print(f"wrote {args.results}/{prefix}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
