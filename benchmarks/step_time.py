"""Time ``CoolMomentum.step()`` against ``torch.optim.SGD(momentum=0.9)``, foreach and fused.

Three parameter sets: shaped like ResNet-50 (25.56 M elements in 161 tensors), like a small
transformer (5.94 M elements in 292 tensors), and 1,804 small tensors (a deeper, narrower
transformer, 2.20 M elements). Each repetition times one step of every optimizer in turn
(interleaved, so that drifts of a shared machine hit all alike; the turn starts one optimizer
later at each repetition), and the script prints per optimizer:

- the median time and the medians of the per-repetition ratios to ``SGD(foreach=True)``
  and to ``SGD(fused=True)``;
- the cost of tracking the temperature: each CoolMomentum path with tracking on over the
  same path with it off, the median and the mean of the per-repetition ratios (the foreach
  path measuring every 8th step pays its cost on one step in 8: read its mean);
- the fraction of the memory-bandwidth limit reached: the time of a one-pass in-place
  kernel with the traffic of a momentum step (read parameter, gradient and buffer, write
  parameter and buffer; compiled by ``torch.compile`` over one flat buffer of the same
  size) over the step's time.

    python benchmarks/step_time.py                  # CPU; prints the tables
    python benchmarks/step_time.py --record         # also writes benchmarks/results/step_time.md
    python benchmarks/step_time.py --record --output results.md   # writes results.md instead
    python benchmarks/step_time.py --device cuda    # on a GPU

The results file says whether the machine was idle: the CPU time the other processes used
during the run, from ``/proc/stat`` less this process's own, averaged below 0.1 cores
(elsewhere, a load average below 0.3 before the run); timings from a busy machine are marked
as to be remeasured.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from coolmomentum import _fused_cpu
from coolmomentum._io import atomic_write
from coolmomentum.torch import CoolMomentum

RESULTS = Path(__file__).parent / "results" / "step_time.md"
IDLE_LOAD = 0.3  # where /proc/stat is missing: the load average before the run
IDLE_OTHERS = 0.1  # cores the other processes may use on average during an idle run

FOREACH_SGD = "SGD(momentum=0.9, foreach)"
FUSED_SGD = "SGD(momentum=0.9, fused)"
BANDWIDTH = "one-pass kernel (bandwidth limit)"
# CoolMomentum paths, each timed with the temperature off and on, by name.
PATHS = {
    "CoolMomentum foreach": {"foreach": True},
    "CoolMomentum fused": {"fused": True},
}
# The foreach path measuring the temperature on every 8th step only (its tracking cost is
# then paid once per 8 steps: see the mean ratio).
SAMPLED = "CoolMomentum foreach, temperature every 8th step"


def resnet50_shapes() -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]
    in_ch = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            out = width * 4
            shapes += [(width, in_ch, 1, 1), (width,), (width,)]
            shapes += [(width, width, 3, 3), (width,), (width,)]
            shapes += [(out, width, 1, 1), (out,), (out,)]
            if b == 0:
                shapes += [(out, in_ch, 1, 1), (out,), (out,)]
            in_ch = out
    return [*shapes, (1000, 2048), (1000,)]


def transformer_shapes(
    layers: int = 24, dim: int = 128, vocab: int = 8192
) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = [(vocab, dim), (1024, dim)]
    for _ in range(layers):
        shapes += [(dim,), (dim,), (3 * dim, dim), (3 * dim,), (dim, dim), (dim,)]
        shapes += [(dim,), (dim,), (4 * dim, dim), (4 * dim,), (dim, 4 * dim), (dim,)]
    return [*shapes, (dim,), (dim,)]


PARAMETER_SETS = {
    "ResNet-50 shapes": resnet50_shapes,
    "transformer shapes": transformer_shapes,
    "1,804 small tensors": lambda: transformer_shapes(layers=150, dim=32, vocab=8192),
}


def make_params(shapes: list[tuple[int, ...]], device: str) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in shapes:
        p = torch.randn(shape, generator=gen).to(device).requires_grad_()
        p.grad = torch.randn(shape, generator=gen).to(device) * 1e-3
        params.append(p)
    return params


def state_bytes(opt: torch.optim.Optimizer) -> int:
    tensors = [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    tensors += [v for g in opt.param_groups for v in g.values() if isinstance(v, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved_times(
    steps: dict[str, Callable[[], object]], device: str, reps: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of every function, called in turn ``warmup + reps`` times.

    The turn starts one function later at each repetition, so that no function always runs
    right after the same one (the one before leaves the caches and the clock in a state of its
    own): the ratio of two functions then compares them in every position."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for rep in range(warmup + reps):
        first = rep % len(names)
        for name in names[first:] + names[:first]:
            step = steps[name]
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            if rep >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def median_ratio(times: list[float], base: list[float]) -> float:
    return statistics.median(t / b for t, b in zip(times, base, strict=True))


def bandwidth_kernel(numel: int, device: str) -> Callable[[], object]:
    """A momentum step's traffic in one pass over flat buffers (3 reads, 2 writes)."""
    gen = torch.Generator().manual_seed(1)
    p, g = (torch.randn(numel, generator=gen).to(device) for _ in range(2))
    b = torch.zeros(numel, device=device)

    @torch.compile(dynamic=False)
    def one_pass(p: torch.Tensor, g: torch.Tensor, b: torch.Tensor) -> None:
        b.mul_(0.9).add_(g, alpha=-0.95)
        p.add_(b, alpha=1e-3)

    return lambda: one_pass(p, g, b)


def bench(
    label: str, shapes: list[tuple[int, ...]], device: str, reps: int, warmup: int
) -> list[str]:
    """Time every optimizer on ``shapes``; print the table and return it as Markdown rows."""
    total = 10**9  # cooling steps: rho changes at every step, as in a run
    makers: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {
        FOREACH_SGD: lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9, foreach=True),
        FUSED_SGD: lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9, fused=True),
    }
    for name, kwargs in PATHS.items():
        for tracking in (False, True):
            makers[f"{name}, temperature {'on' if tracking else 'off'}"] = (
                lambda p, kw=kwargs, tr=tracking: CoolMomentum(
                    p, lr=1e-3, total_steps=total, track_temperature=tr, **kw
                )
            )
    makers[SAMPLED] = lambda p: CoolMomentum(
        p, lr=1e-3, total_steps=total, foreach=True, temperature_every=8
    )
    opts = {name: make(make_params(shapes, device)) for name, make in makers.items()}
    steps: dict[str, Callable[[], object]] = {name: opt.step for name, opt in opts.items()}
    numel = sum(torch.Size(s).numel() for s in shapes)
    steps[BANDWIDTH] = bandwidth_kernel(numel, device)
    times = interleaved_times(steps, device, reps, warmup)

    base, fused = times[FOREACH_SGD], times[FUSED_SGD]
    limit = times[BANDWIDTH]
    gigabytes = 5 * 4 * numel / 1e9  # float32: three words read, two written per element
    print(f"{label}: {len(shapes)} tensors, {numel / 1e6:.2f} M elements, {device}, "
          f"{reps} interleaved reps")  # fmt: skip
    header = (
        "| optimizer | median ms | / SGD foreach | / SGD fused | tracking cost, median / mean "
        "| of bandwidth limit | state MiB |"
    )
    rows = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    untracked = {f"{name}, temperature on": f"{name}, temperature off" for name in PATHS}
    untracked[SAMPLED] = "CoolMomentum foreach, temperature off"
    for name, ts in times.items():
        tracking = "-"
        if name in untracked:
            off = times[untracked[name]]
            mean = statistics.mean(t / b for t, b in zip(ts, off, strict=True))
            tracking = f"{median_ratio(ts, off):.3f} / {mean:.3f}"
        state = f"{state_bytes(opts[name]) / 2**20:.1f}" if name in opts else "-"
        rows.append(
            f"| {name} | {1e3 * statistics.median(ts):.2f} | {median_ratio(ts, base):.3f} "
            f"| {median_ratio(ts, fused):.3f} | {tracking} | {median_ratio(limit, ts):.2f} "
            f"| {state} |"
        )
    rows.append("")
    rows.append(
        f"The one-pass kernel moves {gigabytes:.3f} GB per step: "
        f"{gigabytes / statistics.median(limit):.1f} GB/s."
    )
    print("\n".join(rows), end="\n\n")
    return rows


def kernel_build_seconds() -> float | None:
    """Seconds to build and load the fused CPU kernel from an empty cache (None: no compiler)."""
    with tempfile.TemporaryDirectory() as cache:
        previous = os.environ.get("COOLMOMENTUM_CACHE_DIR")
        os.environ["COOLMOMENTUM_CACHE_DIR"] = cache
        _fused_cpu._load.cache_clear()
        start = time.perf_counter()
        built = _fused_cpu.library() is not None
        seconds = time.perf_counter() - start
        if previous is None:
            del os.environ["COOLMOMENTUM_CACHE_DIR"]
        else:
            os.environ["COOLMOMENTUM_CACHE_DIR"] = previous
        _fused_cpu._load.cache_clear()
    return seconds if built else None


def machine() -> str:
    """The CPU (or GPU), the thread count and the library versions, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{cpu} ({os.cpu_count()} CPUs){gpu}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}"
    )


@dataclass(frozen=True)
class Load:
    """What the machine was doing when a run started: the load average, and the busy CPU
    time of every process and of this one (seconds), to tell afterwards what others used."""

    average: float
    busy_s: float | None
    own_s: float
    wall_s: float

    @staticmethod
    def now() -> Load:
        return Load(os.getloadavg()[0], _busy_seconds(), time.process_time(), time.monotonic())


def _busy_seconds() -> float | None:
    """CPU seconds all processes have been busy since boot (``/proc/stat``), if readable."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def idle_note(start: Load) -> str:
    """Whether the machine was idle during the run: the results file's verdict on itself."""
    end = Load.now()
    if start.busy_s is not None and end.busy_s is not None:
        others = (end.busy_s - start.busy_s) - (end.own_s - start.own_s)
        cores = max(others, 0.0) / max(end.wall_s - start.wall_s, 1e-9)
        loads = f"other processes used {cores:.2f} cores on average during the run"
        idle, bound = cores < IDLE_OTHERS, f"below {IDLE_OTHERS}"
    else:
        loads = f"load average {start.average:.2f} before the run"
        idle, bound = start.average < IDLE_LOAD, f"below {IDLE_LOAD}"
    if idle:
        return f"Measured on an idle machine ({loads})."
    return (
        f"**To be remeasured on an idle machine**: {loads} (idle: {bound}); the ratios come "
        f"from one interleaved run and are usable for comparing designs, the times are not "
        f"final."
    )


def record(path: Path, title: str, command: str, sections: list[str], note: str) -> None:
    """Write a results file: what was run, where, when, and the tables."""
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    text = "\n".join(
        [f"# {title}", "", f"`{command}`", "", f"{stamp}; {machine()}.", "", note, "",
         *sections, ""]
    )  # fmt: skip
    atomic_write(path, text)
    print(f"wrote {path}")


def arguments(description: str, reps: int, results: Path) -> argparse.ArgumentParser:
    """The options every timing script takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=reps)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--record", action="store_true", help=f"write {results}")
    return parser


def start(args: argparse.Namespace) -> Load:
    """Set the threads and print the machine; what the machine is doing as the run starts."""
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine())
    return Load.now()


def finish(title: str, path: Path, sections: list[str], load_before: Load, write: bool) -> None:
    """Print whether the machine was idle and, if ``write``, record the run in ``path``."""
    note = idle_note(load_before)
    print(note)
    if write:
        command = " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
        record(path, title, command, sections, note)


def main() -> None:
    parser = arguments(__doc__.splitlines()[0], 40, RESULTS)
    parser.add_argument("--sets", nargs="+", choices=PARAMETER_SETS, default=list(PARAMETER_SETS))
    parser.add_argument("--output", type=Path, default=RESULTS, help="the file --record writes")
    args = parser.parse_args()
    load_before = start(args)
    sections = []
    if args.device == "cpu":
        build = kernel_build_seconds()
        line = (
            f"Fused CPU kernel: built and loaded in {build:.2f} s from an empty cache."
            if build is not None
            else f"Fused CPU kernel not available: {_fused_cpu.build_error()}"
        )
        print(line, end="\n\n")
        sections += [line, ""]
    for label in args.sets:
        rows = bench(label, PARAMETER_SETS[label](), args.device, args.reps, args.warmup)
        sections += [f"## {label}", "", *rows, ""]
    finish("Optimizer step time", args.output, sections, load_before, args.record)


if __name__ == "__main__":
    main()
