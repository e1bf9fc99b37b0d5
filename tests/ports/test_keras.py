"""The Keras 3 port, on every installed backend.

Keras picks its backend once, at first import, so the cases in ``_keras_cases.py`` run in a
fresh interpreter per backend with ``KERAS_BACKEND`` set.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize("backend", ["jax", "torch", "tensorflow"])
def test_keras_backend(backend):
    if not _installed("keras"):
        pytest.skip("keras is not installed")
    if not _installed(backend):
        pytest.skip(f"{backend} is not installed")
    env = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "_keras_cases.py"],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = f"KERAS_BACKEND={backend}\n{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, output
    # Every case must have run: a subprocess in which everything skipped also exits with 0.
    summary = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed(, \d+ warnings?)? in .*", summary), output
