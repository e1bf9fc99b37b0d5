"""The lean install: what the core needs, and the command line without the harness's extra.

``.ci/run`` also builds the wheel, installs it alone into a bare environment and takes an
optimizer step there; these tests guard the declarations that install rests on.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

from coolmomentum import cli

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")

PYPROJECT = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
IMPORT_NAMES = {"pillow": "PIL"}  # distributions whose import name differs
REQUIRED_ARGS = {"report": ["out"]}  # the commands' positional arguments


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_core_dependencies_are_torch_and_numpy():
    assert names(PYPROJECT["project"]["dependencies"]) == {"torch", "numpy"}


def test_the_cli_checks_every_package_of_the_experiments_extra():
    extra = names(PYPROJECT["project"]["optional-dependencies"]["experiments"])
    assert {IMPORT_NAMES.get(n, n) for n in extra} == set(cli.EXPERIMENTS_EXTRA)


@pytest.mark.parametrize("absent", cli.EXPERIMENTS_EXTRA)
@pytest.mark.parametrize("command", ["compare", "train", "report"])
def test_harness_commands_without_the_experiments_extra_name_it(
    monkeypatch, capsys, absent, command
):
    monkeypatch.setitem(sys.modules, absent, None)  # import machinery: "not installed"
    assert cli.main([command, *REQUIRED_ARGS.get(command, [])]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err == (
        f"coolmomentum: error: coolmomentum {command} needs the [experiments] extra "
        f'({absent} missing): pip install "coolmomentum[experiments]"\n'
    )


def test_help_needs_no_extra(monkeypatch, capsys):
    for name in cli.EXPERIMENTS_EXTRA:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0 and "anneal" in capsys.readouterr().out


def test_timm_glue_without_timm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    monkeypatch.delitem(sys.modules, "coolmomentum.integrations.timm", raising=False)
    with pytest.raises(ImportError, match=r'needs timm: pip install "coolmomentum\[timm\]"'):
        importlib.import_module("coolmomentum.integrations.timm")
