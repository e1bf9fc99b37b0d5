"""What the settings of a run are made of: fields that carry their command-line help, the
parsers of the flags whose text is not a plain number, and the error a bad setting raises.

Every dataclass of settings (:class:`.config.RunConfig`, :class:`.optimizers.OptimizerSpec`
and each optimizer's hyperparameters) declares its fields with :func:`setting`, so that
:mod:`.cli` builds one flag per field and the flags cannot drift from the settings.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from coolmomentum.errors import UsageError

__all__ = ["ConfigError", "check", "parse_floats", "parse_lr_decay", "setting"]


class ConfigError(UsageError, ValueError):
    """A configuration or checkpoint that cannot be used, with what to do instead."""


def check(ok: bool, message: str) -> None:
    """Raise a :class:`ConfigError` with ``message`` unless ``ok``."""
    if not ok:
        raise ConfigError(message)


def setting(default: Any = None, help: str = "", *, flag: bool = True, **extra: Any) -> Any:
    """A dataclass field with its command-line help (``flag=False``: no flag).

    ``extra`` goes to the metadata too: ``choices``, ``metavar``, ``parse`` (a function from
    the flag's text to the value).
    """
    metadata = {"help": help, "flag": flag, **extra}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def parse_lr_decay(text: str) -> list[list[float]]:
    """``"80:0.1,120:0.01"`` as ``[[80.0, 0.1], [120.0, 0.01]]``."""
    try:
        pairs = [item.split(":") for item in text.split(",") if item]
        return [[float(e), float(f)] for e, f in pairs]
    except ValueError:
        raise ValueError(
            f"expected EPOCH:FACTOR[,EPOCH:FACTOR...], e.g. 80:0.1,120:0.01; got {text!r}"
        ) from None


def parse_floats(text: str) -> list[float]:
    """``"0.5,0.25,0.125"`` as ``[0.5, 0.25, 0.125]``."""
    try:
        return [float(x) for x in text.split(",") if x]
    except ValueError:
        raise ValueError(
            f"expected comma-separated numbers, e.g. 0.49,0.48,0.45; got {text!r}"
        ) from None
