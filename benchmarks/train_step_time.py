"""The optimizer's share of a training step, as a user feels it: whole steps (forward,
backward, optimizer step) of the demo's convnet and of ResNet-20, with CoolMomentum
(temperature tracked, the default path) against ``SGD(momentum=0.9, fused=True)``.

Every optimizer trains its own copy of the same initial model on the same batches
(synthetic images of the datasets' shapes); each repetition takes one step with every
optimizer in turn, and the script prints the median step time and the median of the
per-repetition ratios to fused SGD.

    python benchmarks/train_step_time.py            # CPU; prints the table
    python benchmarks/train_step_time.py --record   # also writes results/train_step_time.md
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from step_time import arguments, finish, interleaved_times, median_ratio, start

from coolmomentum.experiments.models import build_model
from coolmomentum.torch import CoolMomentum

RESULTS = Path(__file__).parent / "results" / "train_step_time.md"
BASELINE = "SGD(momentum=0.9, fused)"

# name: (model, channels, image size, batch size): the demo's and the paper's CIFAR setups.
MODELS = {
    "convnet, Fashion-MNIST shapes": ("convnet", 1, 28, 64),
    "ResNet-20, CIFAR-10 shapes": ("resnet20", 3, 32, 32),
}


def optimizers(steps: int) -> dict[str, Callable[[torch.nn.Module], torch.optim.Optimizer]]:
    return {
        BASELINE: lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, fused=True),
        "SGD(momentum=0.9, foreach)": lambda m: torch.optim.SGD(
            m.parameters(), lr=0.01, momentum=0.9, foreach=True
        ),
        "CoolMomentum (default), temperature on": lambda m: CoolMomentum(
            m.parameters(), lr=0.01, total_steps=steps
        ),
        "CoolMomentum foreach, temperature on": lambda m: CoolMomentum(
            m.parameters(), lr=0.01, total_steps=steps, foreach=True
        ),
    }


def bench(label: str, device: str, reps: int, warmup: int) -> list[str]:
    name, channels, size, batch = MODELS[label]
    torch.manual_seed(0)
    model = build_model(name, in_channels=channels, num_classes=10, image_size=size).to(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, channels, size, size, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)

    def trainer(make: Callable[[torch.nn.Module], torch.optim.Optimizer]) -> Callable[[], None]:
        net = copy.deepcopy(model)
        opt = make(net)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()

        return step

    steps = {key: trainer(make) for key, make in optimizers(warmup + reps).items()}
    times = interleaved_times(steps, device, reps, warmup)
    params = sum(p.numel() for p in model.parameters())
    print(f"{label}: {params / 1e3:.0f} k parameters, batch {batch}, {device}, {reps} reps")
    rows = ["| optimizer | median ms per training step | / fused SGD |", "|---|---:|---:|"]
    for key, ts in times.items():
        ratio = median_ratio(ts, times[BASELINE])
        rows.append(f"| {key} | {1e3 * statistics.median(ts):.2f} | {ratio:.3f} |")
    print("\n".join(rows), end="\n\n")
    return rows


def main() -> None:
    args = arguments(__doc__.splitlines()[0], 30, RESULTS).parse_args()
    load_before = start(args)
    sections = []
    for label in MODELS:
        sections += [f"## {label}", "", *bench(label, args.device, args.reps, args.warmup), ""]
    finish("Training step time", RESULTS, sections, load_before, args.record)


if __name__ == "__main__":
    main()
