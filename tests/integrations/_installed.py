"""Import a trainer library for a test module, or skip the module when it is not installed.

A library that is installed but fails to import fails the tests instead of skipping them, so
a broken environment is not mistaken for an absent library.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

import pytest


def require(module: str, extra: str) -> ModuleType:
    if importlib.util.find_spec(module) is None:
        pytest.skip(
            f'{module} is not installed (pip install "coolmomentum[{extra}]")',
            allow_module_level=True,
        )
    return importlib.import_module(module)
