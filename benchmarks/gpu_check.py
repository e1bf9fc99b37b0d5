"""CoolMomentum on a CUDA GPU, checked and timed in one call (within 8 minutes).

1. Step time against ``SGD(momentum=0.9, foreach=True)`` and ``SGD(fused=True)``: the tables
   of ``benchmarks/step_time.py``, on the GPU.
2. The GPU paths (fused: PyTorch's fused SGD kernel; foreach; capturable) against the
   single-tensor loop, with float32, bfloat16 and complex parameters, through the cooling.
3. A ``capturable=True`` step captured in a CUDA graph and replayed, against eager steps on
   a copy: the same parameters, buffers and statistics; the time per step of each.
4. ``torch.compile`` of the step: no recompilation as ``rho`` changes.
5. Training throughput (images/s) of ResNet-20 at CIFAR shapes and EfficientNet-B0 at
   224 px, built by ``coolmomentum.experiments.models.build_model``, on synthetic data under
   bfloat16 autocast, channels-last, with and without ``torch.compile`` of the model.

Writes ``benchmarks/results/gpu.md``; exits 1 if a check failed (the file says which), 0
otherwise. A section that would not fit in the time left is skipped, and the file says so.
Without CUDA it says that it needs a GPU and exits 0.

    python benchmarks/gpu_check.py
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from step_time import (
    PARAMETER_SETS,
    Load,
    bench,
    idle_note,
    interleaved_times,
    machine,
    median_ratio,
    record,
    synchronize,
)

from coolmomentum.torch import CoolMomentum

RESULTS = Path(__file__).parent / "results" / "gpu.md"
BUDGET_S = 7.5 * 60
DEVICE = "cuda"
START = time.monotonic()


def seconds_left() -> float:
    return BUDGET_S - (time.monotonic() - START)


# --- 2. the GPU paths against the single-tensor loop --------------------------------------

PATH_KWARGS = {
    "fused (PyTorch's fused SGD kernel)": {"fused": True},
    "foreach": {"foreach": True},
    "capturable (foreach)": {"capturable": True},
    "capturable (single tensor)": {"capturable": True, "foreach": False},
}
TOLERANCE = {
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
    torch.complex64: dict(rtol=1e-5, atol=1e-6),
}


def path_run(kwargs: dict[str, object], steps: int = 14) -> tuple[list[torch.Tensor], list]:
    gen = torch.Generator().manual_seed(0)
    shapes = [((300, 70), torch.float32), ((17,), torch.float32), ((64,), torch.bfloat16),
              ((4, 4), torch.complex64)]  # fmt: skip
    params = [torch.randn(s, generator=gen).to(DEVICE, d).requires_grad_() for s, d in shapes]
    opt = CoolMomentum(params, lr=0.05, total_steps=8, hot_steps=2, weight_decay=0.01, **kwargs)
    temps = []
    for k in range(steps):  # past hot_steps + total_steps: rho reaches 0
        g = torch.Generator().manual_seed(100 + k)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype).to(DEVICE)
        opt.step()
        temps.append(opt.stats()[0]["temperature"])
    return params, temps


def check_paths() -> list[str]:
    reference, ref_temps = path_run({"foreach": False})
    rows = ["| path | parameters and temperatures as the single-tensor loop's |", "|---|---|"]
    for name, kwargs in PATH_KWARGS.items():
        params, temps = path_run(kwargs)
        for p, q in zip(params, reference, strict=True):
            torch.testing.assert_close(p, q, **TOLERANCE[p.dtype], msg=f"{name}, {p.dtype}")
        worst = max(abs(t / r - 1) for t, r in zip(temps, ref_temps, strict=True))
        if worst > 1e-4:
            raise AssertionError(f"{name}: temperature off by {worst:.2e} (relative)")
        rows.append(f"| {name} | yes (temperature within {worst:.1e}) |")
    return rows


# --- 3. a capturable step in a CUDA graph ----------------------------------------------------


def check_cuda_graph() -> list[str]:
    torch.manual_seed(0)
    params = [torch.randn(s, device=DEVICE, requires_grad=True) for s in
              ((2048, 1024), (1024,), (512, 512, 3, 3), (1000,))]  # fmt: skip
    twin = [p.detach().clone().requires_grad_() for p in params]
    for p in [*params, *twin]:
        p.grad = torch.zeros_like(p)
    kwargs = dict(lr=0.01, rho_0=0.99, total_steps=50, capturable=True)
    graphed, eager = CoolMomentum(params, **kwargs), CoolMomentum(twin, **kwargs)

    def new_gradients(k: int) -> None:
        gen = torch.Generator(device=DEVICE).manual_seed(k)
        for p, q in zip(params, twin, strict=True):
            p.grad.copy_(torch.randn(p.shape, device=DEVICE, generator=gen))
            q.grad.copy_(p.grad)

    # Warm up on a side stream (creates the state), as CUDA graph capture requires.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for k in range(3):
            new_gradients(k)
            graphed.step()
            eager.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graphed.step()
    replays = 40
    for k in range(3, 3 + replays):  # cooling: rho changes at every replay
        new_gradients(k)
        graph.replay()
        eager.step()
    synchronize(DEVICE)
    for p, q in zip(params, twin, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(
            graphed.state[p]["momentum_buffer"], eager.state[q]["momentum_buffer"]
        )
    (g_stats,), (e_stats,) = graphed.stats(), eager.stats()
    if not g_stats["step"] == e_stats["step"] == 3 + replays:
        raise AssertionError(f"steps counted: graph {g_stats['step']}, eager {e_stats['step']}")
    if abs(g_stats["temperature"] / e_stats["temperature"] - 1) > 1e-5:
        raise AssertionError(f"temperatures differ: {g_stats} vs {e_stats}")
    default = CoolMomentum([p.detach().clone().requires_grad_() for p in params], lr=0.01,
                           total_steps=50)  # fmt: skip
    for p, q in zip(default.param_groups[0]["params"], params, strict=True):
        p.grad = q.grad
    times = interleaved_times(
        {"graph replay (capturable)": graph.replay, "eager (capturable)": eager.step,
         "eager (default path)": default.step},
        DEVICE, reps=50, warmup=5,
    )  # fmt: skip
    base = times["eager (default path)"]
    rows = [
        f"Replayed {replays} steps: parameters, buffers, step count and temperature match "
        f"{replays} eager steps.",
        "",
        "| step | median ms | / eager default path |",
        "|---|---:|---:|",
    ]
    for name, ts in times.items():
        ms, ratio = 1e3 * statistics.median(ts), median_ratio(ts, base)
        rows.append(f"| {name} | {ms:.3f} | {ratio:.3f} |")
    return rows


# --- 4. torch.compile without recompiles ---------------------------------------------------


def compiled_step_row(name: str, kwargs: dict[str, object]) -> str:
    """Compile one optimizer's step; check it against eager steps, without recompiles."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.Linear(512, 10)).to(DEVICE)
    reference = copy.deepcopy(model)
    opt = CoolMomentum(model.parameters(), lr=0.01, total_steps=20, **kwargs)
    ref_opt = CoolMomentum(reference.parameters(), lr=0.01, total_steps=20, foreach=False)
    compiled = torch.compile(opt.step)
    x = torch.randn(64, 512, device=DEVICE)

    def train(net: torch.nn.Module, step: Callable[[], object]) -> None:
        net.zero_grad()
        net(x).square().mean().backward()
        step()

    start = time.perf_counter()
    for _ in range(2):  # the first step creates the buffers: one recompile, as torch.optim's
        train(model, compiled)
        train(reference, ref_opt.step)
    synchronize(DEVICE)
    compile_s = time.perf_counter() - start
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(30):  # rho changes every step, then stays 0
            train(model, compiled)
            train(reference, ref_opt.step)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    times = interleaved_times({name: lambda: train(model, compiled)}, DEVICE, 30, 3)
    return f"| {name} | {compile_s:.1f} | yes | {1e3 * statistics.median(times[name]):.3f} |"


def check_compile() -> list[str]:
    return [
        "| step | compile s (first two steps) | no recompile in 30 steps | median ms |",
        "|---|---:|---|---:|",
        compiled_step_row("default", {}),
        compiled_step_row("fused=True (compiles the foreach arithmetic)", {"fused": True}),
    ]


# --- 5. training throughput ----------------------------------------------------------------

THROUGHPUT_MODELS = {
    "ResNet-20, CIFAR-10 shapes (32 px)": ("resnet20", 32, 128, 10),
    "EfficientNet-B0, 224 px": ("efficientnet-b0", 224, 128, 1000),
}
THROUGHPUT_OPTIMIZERS: dict[str, Callable[[torch.nn.Module], torch.optim.Optimizer]] = {
    "CoolMomentum (default)": lambda m: CoolMomentum(m.parameters(), lr=0.01, total_steps=10**6),
    "CoolMomentum fused": lambda m: CoolMomentum(
        m.parameters(), lr=0.01, total_steps=10**6, fused=True
    ),
    "SGD(momentum=0.9, fused)": lambda m: torch.optim.SGD(
        m.parameters(), lr=0.01, momentum=0.9, fused=True
    ),
}


def throughput(label: str, compiled: bool, warmup: int = 8, steps: int = 30) -> list[str]:
    from coolmomentum.experiments.models import build_model

    name, size, batch, classes = THROUGHPUT_MODELS[label]
    torch.manual_seed(0)
    model = build_model(name, in_channels=3, num_classes=classes, image_size=size)
    model = model.to(DEVICE, memory_format=torch.channels_last)
    initial = copy.deepcopy(model.state_dict())
    forward = torch.compile(model) if compiled else model
    x = torch.randn(batch, 3, size, size, device=DEVICE).to(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=DEVICE)
    rows = []
    for opt_name, make in THROUGHPUT_OPTIMIZERS.items():
        model.load_state_dict(initial)
        opt = make(model)

        def step(opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(DEVICE, dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(forward(x), y)
            loss.backward()
            opt.step()

        start = time.perf_counter()
        for _ in range(warmup):
            step()
        synchronize(DEVICE)
        warm_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(DEVICE)
        images_per_s = steps * batch / (time.perf_counter() - start)
        mode = "compiled" if compiled else "eager"
        rows.append(f"| {label} | {mode} | {opt_name} | {batch} | {images_per_s:,.0f} | "
                    f"{warm_s:.1f} |")  # fmt: skip
    return rows


# --- the run --------------------------------------------------------------------------------


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_check.py needs a CUDA GPU (torch.cuda.is_available() is False); nothing to do.")
        return 0
    load_before = Load.now()
    print(machine(), flush=True)
    sections: list[str] = []
    failures: list[str] = []

    def section(title: str, needs_s: float, run: Callable[[], list[str]]) -> None:
        print(f"== {title}", flush=True)
        if seconds_left() < needs_s:
            text = [f"Skipped: {seconds_left():.0f} s left of the {BUDGET_S:.0f} s budget."]
        else:
            started = time.monotonic()
            try:
                text = run()
            except Exception as exc:  # a failed check is reported, and the others still run
                failures.append(title)
                text = ["**Failed:**", "", "```", traceback.format_exc().strip()[-3000:], "```"]
                print(f"FAILED: {exc}", flush=True)
            text += ["", f"({time.monotonic() - started:.0f} s)"]
        print("\n".join(text), end="\n\n", flush=True)
        sections.extend([f"## {title}", "", *text, ""])

    for label, shapes in PARAMETER_SETS.items():
        section(f"Step time: {label}", 60, lambda x=label, s=shapes: bench(x, s(), DEVICE, 50, 10))
    section("The GPU paths against the single-tensor loop", 20, check_paths)
    section("A capturable step in a CUDA graph", 20, check_cuda_graph)
    section("torch.compile of the step", 60, check_compile)
    header = ["| model | mode | optimizer | batch | images/s | warm-up s |",
              "|---|---|---|---:|---:|---:|"]  # fmt: skip
    for label in THROUGHPUT_MODELS:
        for compiled in (False, True):
            needs = 150 if compiled and "EfficientNet" in label else 40
            title = f"Training throughput: {label}, {'compiled' if compiled else 'eager'}"
            section(title, needs, lambda x=label, c=compiled: [*header, *throughput(x, c)])
    note = idle_note(load_before)
    verdict = f"Failed: {', '.join(failures)}." if failures else "Every check passed."
    record(RESULTS, "CoolMomentum on a GPU", "python benchmarks/gpu_check.py", sections,
           f"{verdict} Took {time.monotonic() - START:.0f} s. {note}")  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
