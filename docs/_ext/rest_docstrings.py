"""A Griffe extension for the API pages: the docstrings' reST idioms as Markdown.

The library's docstrings follow PyTorch's conventions: ``code``, Sphinx roles such as
:class:`~coolmomentum.schedules.Schedule`, ``::`` before a literal block, doctests.
mkdocstrings renders Markdown, where double backticks already make code; this turns a role
into code (``~`` keeps the last component, as Sphinx does), ``::`` into ``:`` (the indented
block after it is a Markdown code block as it is) and a doctest into a fenced ``pycon`` block.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?[a-z]+:`(~?)([^`<]+?)(?:\s*<([^`>]+)>)?`")


def _role(match: re.Match[str]) -> str:
    tilde, text, target = match.groups()
    if target is None and tilde:
        text = text.rsplit(".", 1)[-1]
    return f"`{text.strip()}`"


def markdown(doc: str) -> str:
    lines: list[str] = []
    fence = None  # the indentation of the open doctest fence
    for line in ROLE.sub(_role, doc).splitlines():
        indent = line[: len(line) - len(line.lstrip())]
        if fence is None and line.lstrip().startswith(">>>"):
            fence = indent
            lines.append(f"{fence}```pycon")
        elif fence is not None and not line.strip():
            lines.append(f"{fence}```")
            fence = None
        lines.append(re.sub(r"(\S)::$", r"\1:", line))
    if fence is not None:
        lines.append(f"{fence}```")
    return "\n".join(lines)


class ReSTDocstrings(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
