"""The experiment commands of ``coolmomentum``: ``compare``, ``train`` and ``report``."""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

from .presets import PRESETS

DEFAULT_PRESET = "fashion-mnist-demo"
# The runs of a comparison set up by hand (--dataset without --preset): the paper's
# ResNet-20 hyperparameters without the baselines' step decay.
DEFAULT_RUNS = [
    {"optimizer": "coolmomentum", "lr": 0.01, "rho_0": 0.99},
    {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9},
    {"optimizer": "adam", "lr": 1e-3},
]

# Flags that set a field of the run configuration, and those that set an optimizer's.
_RUN_FLAGS = (
    "dataset",
    "data_dir",
    "model",
    "epochs",
    "batch_size",
    "seed",
    "device",
    "out",
    "train_subset",
    "test_subset",
    "augment",
    "compile",
    "max_steps",
    "ema_decay",
    "image_size",
    "workers",
)
_OPTIMIZER_FLAGS = (
    "lr",
    "rho_0",
    "schedule",
    "total_steps",
    "hot_epochs",
    "momentum",
    "weight_decay",
    "lr_decay",
    "momentum_warmup_steps",
)


def _lr_decay(text: str) -> list[list[float]]:
    try:
        pairs = [item.split(":") for item in text.split(",") if item]
        return [[float(e), float(f)] for e, f in pairs]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected EPOCH:FACTOR[,EPOCH:FACTOR...], e.g. 80:0.1,120:0.01; got {text!r}"
        ) from None


def _add_common(p: argparse.ArgumentParser) -> None:
    from .models import MODELS
    from .train import AUGMENTATIONS, DATASETS

    p.add_argument("--preset", choices=sorted(PRESETS), help="start from a named setup")
    p.add_argument("--dataset", choices=DATASETS)
    p.add_argument(
        "--data-dir",
        help="where the dataset files are (else $COOLMOMENTUM_DATA, "
        "then /usr/share/datasets/fashion-mnist for Fashion-MNIST); for imagenet the folder "
        "holding train/ and val/",
    )
    p.add_argument("--model", choices=MODELS)
    p.add_argument("--epochs", type=int)
    p.add_argument(
        "--max-steps", type=int, help="stop after this many optimizer steps (if before --epochs)"
    )
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (cuda when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--out", help="output directory (default runs/<preset>)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    p.add_argument("--train-subset", type=int, help="train on the first N images only")
    p.add_argument("--test-subset", type=int, help="evaluate on the first N images only")
    p.add_argument("--augment", choices=AUGMENTATIONS)
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument(
        "--ema-decay",
        type=float,
        help="also evaluate an exponential moving average of the weights, e.g. 0.9999",
    )
    p.add_argument("--image-size", type=int, help="imagenet: the side of the input images")
    p.add_argument("--workers", type=int, help="imagenet: JPEG-decoding processes per rank")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: when stderr is a terminal)",
    )
    g = p.add_argument_group("optimizer hyperparameters")
    g.add_argument("--lr", type=float, help="learning rate (CoolMomentum: dt^2)")
    g.add_argument("--rho-0", type=float, help="CoolMomentum's initial momentum coefficient")
    g.add_argument("--schedule", help="CoolMomentum's cooling schedule")
    g.add_argument(
        "--total-steps",
        type=int,
        help="CoolMomentum's cooling steps (default: all steps after the hot phase)",
    )
    g.add_argument("--hot-epochs", type=float, help="epochs held at rho_0 before cooling")
    g.add_argument(
        "--momentum-warmup-steps",
        type=int,
        help="CoolMomentum: rho = 0 for the steps before this one, then the schedule",
    )
    g.add_argument("--momentum", type=float, help="SGD's momentum")
    g.add_argument("--weight-decay", type=float, help="L2 penalty added to the gradient")
    g.add_argument(
        "--lr-decay",
        type=_lr_decay,
        metavar="EPOCH:FACTOR,...",
        help="step decay of the learning rate, e.g. 80:0.1,120:0.01",
    )


def register(commands: Any) -> None:
    """Add ``compare``, ``train`` and ``report`` to the ``coolmomentum`` subcommands."""
    compare = commands.add_parser(
        "compare",
        help="train several optimizers on the same model, data and seed; write one report",
        description="Without arguments: the Fashion-MNIST demo (CoolMomentum vs SGD vs Adam).",
    )
    _add_common(compare)
    compare.add_argument(
        "--optimizers", help="comma-separated run labels to keep, e.g. coolmomentum,sgd"
    )
    compare.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="LABEL.KEY=VALUE",
        help="set one run's hyperparameter, e.g. sgd.lr=0.05 (repeatable)",
    )
    compare.set_defaults(func=_compare)

    train = commands.add_parser("train", help="train one optimizer")
    _add_common(train)
    train.add_argument(
        "--optimizer", help="coolmomentum, sgd, adam, rmsprop-tf, or a run label of the preset"
    )
    train.set_defaults(func=_train)

    report = commands.add_parser("report", help="rewrite the report of an output directory")
    report.add_argument("out", help="output directory of a compare or train run")
    report.set_defaults(func=_report)


def _coerce(value: str) -> Any:
    for convert in (int, float):
        try:
            return convert(value)
        except ValueError:
            pass
    return value


def build_config(args: argparse.Namespace, *, single: bool) -> Any:
    """The run configuration: the preset (or the demo), then every flag given."""
    from .train import ConfigError, OptimizerSpec, RunConfig

    preset_name = args.preset or DEFAULT_PRESET
    if args.preset is None and args.dataset is not None:
        preset_name = None  # a dataset given by hand starts from the plain defaults
    d: dict[str, Any] = copy.deepcopy(PRESETS[preset_name]) if preset_name else {}
    d["preset"] = preset_name
    for key in _RUN_FLAGS:
        if getattr(args, key) is not None:
            d[key] = getattr(args, key)
    d.setdefault("out", f"runs/{preset_name or d.get('dataset', 'fashion-mnist')}")
    runs = [{"label": r["optimizer"], **r} for r in d.pop("runs", DEFAULT_RUNS)]
    labels = [r["label"] for r in runs]
    if single:
        wanted = args.optimizer
        if wanted:
            chosen = [r for r in runs if r["label"] == wanted]
            chosen = chosen or [r for r in runs if r["optimizer"] == wanted][:1]
            runs = chosen or [{"optimizer": wanted, "label": wanted}]
        runs = runs[:1]
    elif args.optimizers:
        wanted = args.optimizers.split(",")
        runs = [r for r in runs if r["label"] in wanted] + [
            {"optimizer": w, "label": w} for w in wanted if w not in labels
        ]
    for run in runs:
        for key in _OPTIMIZER_FLAGS:
            if getattr(args, key) is not None:
                run[key] = getattr(args, key)
    for item in getattr(args, "set", []):
        target, _, value = item.partition("=")
        label, _, key = target.partition(".")
        matches = [r for r in runs if r["label"] == label]
        if not matches or not key or not value:
            raise ConfigError(
                f"--set {item!r}: expected LABEL.KEY=VALUE with a run label of "
                f"{[r['label'] for r in runs]}"
            )
        if key not in OptimizerSpec.__dataclass_fields__:
            raise ConfigError(f"--set {item!r}: {key!r} is not an optimizer setting")
        matches[0][key] = _lr_decay(value) if key == "lr_decay" else _coerce(value)
    try:
        return RunConfig(**d, runs=[OptimizerSpec(**r) for r in runs])
    except TypeError as e:
        raise ConfigError(str(e)) from None


def _run_all(args: argparse.Namespace, *, single: bool) -> int:
    from .distributed import setup
    from .report import write_report
    from .train import load_data, resolve_device, train

    config = build_config(args, single=single)
    world, device = setup(resolve_device(config.device))
    try:
        out = Path(config.out)
        say = print if world.is_main else (lambda *a, **k: None)
        say(
            f"{config.preset or 'custom'}: {config.model} on {config.dataset}, {config.epochs} "
            f"epochs, batch {config.batch_size}, seed {config.seed}, {world.size} process(es) "
            f"on {device} -> {out}"
        )
        data = load_data(config, device, world)
        results = {
            spec.label: train(
                config,
                spec,
                out / spec.label,
                data,
                resume=args.resume,
                progress=args.progress,
                log=say,
            )
            for spec in config.runs
        }
        if world.is_main:
            title = f"{config.preset or 'custom run'}: {config.model} on {config.dataset}"
            path = write_report(out, results, title)
            say(path.read_text().split("\n\n")[1])
            say(f"report: {path}")
    except BaseException:
        world.close(wait=False)
        raise
    world.close()
    return 0


def _compare(args: argparse.Namespace) -> int:
    return _run_all(args, single=False)


def _train(args: argparse.Namespace) -> int:
    return _run_all(args, single=True)


def _report(args: argparse.Namespace) -> int:
    from .report import write_report
    from .train import CONFIG, load_metrics

    out = Path(args.out)
    runs = {p.parent.name: load_metrics(p.parent) for p in sorted(out.glob(f"*/{CONFIG}"))}
    if not runs:
        print(
            f"coolmomentum: no runs found under {out} (expected {out}/<run>/{CONFIG})",
            file=sys.stderr,
        )
        return 2
    print(f"report: {write_report(out, runs, f'runs in {out}')}")
    return 0
