"""A proposal's unified diff (`proposal.diff` in its run's directory), walked line by line: the one reader
that the research memory (what a run moved, harness/memory.py) and the novelty check (what it changed,
harness/novelty.py) both build on."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class DiffLine:
    """One line of a diff that says something: a file begins (`file`), a hunk header (`@@`, its text what
    follows the second `@@`, where git names the enclosing function), or a line added or removed."""

    path: str  # the file as the `+++` line names it, `b/` dropped (/dev/null for a deleted file)
    kind: Literal["file", "@@", "+", "-"]
    text: str  # without its sign


def diff_lines(diff: str) -> Iterator[DiffLine]:
    path = ""
    for line in diff.splitlines():
        if line.startswith("+++ "):
            path = line[4:].removeprefix("b/").strip()
            yield DiffLine(path, "file", "")
        elif line.startswith("--- ") or not path:
            continue
        elif line.startswith("@@"):
            yield DiffLine(path, "@@", line.split("@@", 2)[-1])
        elif line[:1] in ("+", "-"):
            yield DiffLine(path, line[0], line[1:])  # type: ignore[arg-type]
