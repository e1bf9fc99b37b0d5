"""Time ``CoolMomentum.step()`` against ``torch.optim.SGD(momentum=0.9)`` on the same tensors.

Two parameter sets: shaped like ResNet-50 (25.6 M elements in 161 tensors) and like a small
transformer (many small tensors). Each repetition times one step of every optimizer in turn
(interleaved, so drifts of the machine hit all alike) and the script prints the median time
and the median of the per-repetition ratios to SGD.

    python benchmarks/step_time.py                 # CPU
    python benchmarks/step_time.py --device cuda   # adds SGD(fused=True) as a baseline
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from coolmomentum import CoolMomentum


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


def bench(shapes: list[tuple[int, ...]], device: str, reps: int, warmup: int) -> None:
    total = 10**6 * 10 * reps
    makers: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {
        "SGD(momentum=0.9, foreach)": lambda p: torch.optim.SGD(
            p, lr=1e-3, momentum=0.9, foreach=True
        ),
        "CoolMomentum, temperature off": lambda p: CoolMomentum(
            p, lr=1e-3, total_steps=total, track_temperature=False
        ),
        "CoolMomentum, temperature on": lambda p: CoolMomentum(p, lr=1e-3, total_steps=total),
    }
    if device.startswith("cuda"):
        makers["SGD(momentum=0.9, fused)"] = lambda p: torch.optim.SGD(
            p, lr=1e-3, momentum=0.9, fused=True
        )
    opts = {name: make(make_params(shapes, device)) for name, make in makers.items()}

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {name: [] for name in opts}
    for rep in range(warmup + reps):
        for name, opt in opts.items():
            sync()
            start = time.perf_counter()
            opt.step()
            sync()
            if rep >= warmup:
                times[name].append(time.perf_counter() - start)

    base = "SGD(momentum=0.9, foreach)"
    numel = sum(torch.Size(s).numel() for s in shapes)
    print(f"{len(shapes)} tensors, {numel / 1e6:.2f} M elements, {device}, {reps} interleaved reps")
    print(f"{'optimizer':32s} {'median ms':>10s} {'ratio to SGD':>13s} {'state MiB':>10s}")
    for name, ts in times.items():
        ratio = statistics.median(t / b for t, b in zip(ts, times[base]))
        print(
            f"{name:32s} {1e3 * statistics.median(ts):10.2f} {ratio:13.3f} "
            f"{state_bytes(opts[name]) / 2**20:10.1f}"
        )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench(resnet50_shapes(), args.device, args.reps, args.warmup)
    bench(transformer_shapes(), args.device, args.reps, args.warmup)


if __name__ == "__main__":
    main()
