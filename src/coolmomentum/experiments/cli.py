"""The experiment commands of ``coolmomentum``: ``compare``, ``train`` and ``report``.

Every field of :class:`.config.RunConfig`, of :class:`.optimizers.OptimizerSpec` and of each
optimizer's hyperparameters (:data:`.optimizers.KINDS`) that has a ``help`` is a flag of
``compare`` and ``train`` (``batch_size`` is ``--batch-size``), with the field's type, choices
and help, so flags and settings cannot drift apart. A run starts from its preset (the demo by
default), then every flag given; an optimizer's flag that applies to none of the runs it
reaches is an error that names it.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coolmomentum.errors import Diverged, Preempted

from .config import ConfigError, RunConfig
from .optimizers import KINDS, OptimizerSpec
from .optimizers.spec import applies, kinds_with
from .presets import PRESETS

__all__ = ["build_config", "register"]

DEFAULT_PRESET = "fashion-mnist-demo"
# The runs of a comparison set up by hand (--dataset without --preset): the paper's
# ResNet-20 hyperparameters, the baselines with the cosine decay their users give them.
DEFAULT_RUNS = [
    {"optimizer": "coolmomentum", "lr": 0.01, "rho_0": 0.99},
    {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "lr_schedule": "cosine"},
    {"optimizer": "adam", "lr": 1e-3, "lr_schedule": "cosine"},
]


def _flag_fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("flag")]


RUN_FIELDS = [f.name for f in _flag_fields(RunConfig)]


def _optimizer_flags() -> dict[str, tuple[type, dataclasses.Field[Any]]]:
    """Every optimizer setting with a flag, and the dataclass that declares it first: the
    shared ones, then each optimizer's own."""
    flags: dict[str, tuple[type, dataclasses.Field[Any]]] = {}
    for cls in (OptimizerSpec, *(k.hyperparameters for k in KINDS.values())):
        for f in _flag_fields(cls):
            flags.setdefault(f.name, (cls, f))
    return flags


OPTIMIZER_FLAGS = _optimizer_flags()


def _value_type(cls: type, f: dataclasses.Field[Any]) -> Any:
    """The field's type without ``| None``."""
    hint = typing.get_type_hints(cls)[f.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    return hint


def _parser(cls: type, f: dataclasses.Field[Any]) -> Any:
    """A function from a flag's text to the field's value, raising ValueError when it cannot."""
    parse = f.metadata.get("parse") or _value_type(cls, f)
    if parse is bool:
        return _parse_bool
    return parse


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _argparse_type(parse: Any) -> Any:
    """``parse`` with its ValueError shown by argparse as the message itself."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_field_flags(parser: Any, fields: Sequence[tuple[type, dataclasses.Field[Any]]]) -> None:
    for cls, f in fields:
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": f.metadata["help"]}
        if cls is not RunConfig and len(kinds_with(f.name)) < len(KINDS):
            kwargs["help"] += f" [{', '.join(kinds_with(f.name))}]"
        if _value_type(cls, f) is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _argparse_type(_parser(cls, f))
            for key in ("choices", "metavar"):
                if key in f.metadata:
                    kwargs[key] = f.metadata[key]
        parser.add_argument(_flag(f.name), **kwargs)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), help="start from a named setup")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: when stderr is a terminal)",
    )
    run_fields = [(RunConfig, f) for f in _flag_fields(RunConfig)]
    _add_field_flags(p.add_argument_group("run settings"), run_fields)
    _add_field_flags(
        p.add_argument_group("optimizer hyperparameters (each applies to the optimizers listed)"),
        list(OPTIMIZER_FLAGS.values()),
    )


def register(commands: Any) -> None:
    """Add ``compare``, ``train`` and ``report`` to the ``coolmomentum`` subcommands."""
    compare = commands.add_parser(
        "compare",
        help="train several optimizers on the same model, data and seed; write one report",
        description="Without arguments: the Fashion-MNIST demo.",
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
        "--optimizer",
        help=f"one of {', '.join(KINDS)}, or a run label of the preset",
    )
    train.set_defaults(func=_train)

    report = commands.add_parser("report", help="rewrite the report of an output directory")
    report.add_argument("out", help="output directory of a compare or train run")
    report.set_defaults(func=_report)


def _set_one(runs: list[dict[str, Any]], item: str) -> None:
    """Apply ``--set LABEL.KEY=VALUE`` to the run labelled ``LABEL``."""
    target, _, text = item.partition("=")
    label, _, key = target.partition(".")
    matches = [r for r in runs if r["label"] == label]
    if not matches or not key or not text:
        raise ConfigError(
            f"--set {item!r}: expected LABEL.KEY=VALUE with a run label of "
            f"{[r['label'] for r in runs]}"
        )
    if key not in OPTIMIZER_FLAGS:
        raise ConfigError(
            f"--set {item!r}: {key!r} is not an optimizer setting; choose one of "
            f"{', '.join(OPTIMIZER_FLAGS)}"
        )
    run = matches[0]
    if not applies(KINDS[run["optimizer"]], key):
        raise ConfigError(
            f"--set {item!r}: {key} does not apply to {run['optimizer']} (it is a setting of "
            f"{', '.join(kinds_with(key))})"
        )
    try:
        run[key] = _parser(*OPTIMIZER_FLAGS[key])(text)
    except ValueError as e:
        raise ConfigError(f"--set {item!r}: {e}") from None


def build_config(args: argparse.Namespace, *, single: bool) -> RunConfig:
    """The run configuration: the preset (or the demo), then every flag given."""
    preset_name = args.preset or DEFAULT_PRESET
    if args.preset is None and args.dataset is not None:
        preset_name = None  # a dataset given by hand starts from the plain defaults
    d: dict[str, Any] = copy.deepcopy(PRESETS[preset_name]) if preset_name else {}
    d["preset"] = preset_name
    for key in RUN_FIELDS:
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
    for key in OPTIMIZER_FLAGS:
        if getattr(args, key) is not None:
            _apply_flag(runs, key, getattr(args, key))
    for item in getattr(args, "set", []):
        _set_one(runs, item)
    return RunConfig(**d, runs=[OptimizerSpec.from_settings(run) for run in runs])


def _apply_flag(runs: list[dict[str, Any]], key: str, value: Any) -> None:
    """Set an optimizer flag's value in every run it applies to; none is an error."""
    fitting = [run for run in runs if run["optimizer"] in KINDS
               and applies(KINDS[run["optimizer"]], key)]  # fmt: skip
    if not fitting:
        reached = ", ".join(f"{run['label']} ({run['optimizer']})" for run in runs)
        raise ConfigError(
            f"{_flag(key)} does not apply to the runs it would set: {reached}; it is a setting "
            f"of {', '.join(kinds_with(key))}"
        )
    for run in fitting:
        run[key] = value


def _run_all(args: argparse.Namespace, *, single: bool) -> int:
    from .data import load_data
    from .distributed import resolve_device, setup
    from .loop import train
    from .report import table, write_report

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
        results = {}
        for spec in config.runs:
            try:
                results[spec.label] = train(
                    config, spec, out / spec.label, data, resume=args.resume,
                    progress=args.progress, log=say,
                )  # fmt: skip
            except Diverged as e:
                raise Diverged(
                    f"{e}: lower --lr (or raise --lr-warmup-steps) and rerun with --resume, or "
                    f"pass --on-nonfinite skip"
                ) from None
            except Preempted as e:
                raise Preempted(f"{e}; rerun with --resume to continue") from None
        if world.is_main:
            title = f"{config.preset or 'custom run'}: {config.model} on {config.dataset}"
            path = write_report(out, results, title, config.description)
            say("\n".join(table(results)))
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
    from .checkpoint import CONFIG, load_metrics
    from .report import write_report

    out = Path(args.out)
    runs = {p.parent.name: load_metrics(p.parent) for p in sorted(out.glob(f"*/{CONFIG}"))}
    if not runs:
        raise ConfigError(f"no runs found under {out} (expected {out}/<run>/{CONFIG})")
    print(f"report: {write_report(out, runs, f'runs in {out}')}")
    return 0
