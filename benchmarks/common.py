"""What every benchmark shares: a row type, the printed table, and the RESULTS.md writer.

Each benchmark owns one section of benchmarks/RESULTS.md (between `<!-- bench:NAME -->` markers) and
rewrites only that section, so benchmarks can be run one at a time (`python -m benchmarks.NAME`) or all
together (`make bench`) without losing each other's figures.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from models.files import write_text

RESULTS = Path(__file__).with_name("RESULTS.md")


@dataclass
class Row:
    name: str
    value: float
    unit: str
    target: str = ""
    note: str = ""

    @property
    def shown(self) -> str:
        if abs(self.value) >= 100:
            return f"{self.value:,.0f}"
        return f"{self.value:.3g}"


def machine() -> str:
    """One line naming the machine, so figures from different machines are never compared by accident."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def print_table(title: str, rows: list[Row]) -> None:
    table = Table(title=title, title_justify="left")
    for column in ("measure", "value", "unit", "target", "note"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for row in rows:
        table.add_row(row.name, row.shown, row.unit, row.target, row.note)
    Console().print(table)


def _existing_rows(text: str, name: str) -> list[str]:
    """The table lines of a benchmark's current section, to keep what a partial rerun did not remeasure."""
    match = re.search(rf"<!-- bench:{re.escape(name)} -->(.*?)<!-- /bench:{re.escape(name)} -->", text, re.S)
    if not match:
        return []
    return [
        line
        for line in match.group(1).splitlines()
        if line.startswith("| ") and not line.startswith("| measure")
    ]


def write_section(
    name: str, title: str, rows: list[Row], notes: str = "", merge: bool = False, command: str | None = None
) -> Path:
    """Replace this benchmark's section of RESULTS.md with fresh figures, machine and date.

    With `merge`, rows of the old section that this run did not measure are kept as they were, so a long
    benchmark can be completed in parts (the notes should say so). `command`: how to run it, when not
    `python -m benchmarks.<name>`.
    """
    old_text = RESULTS.read_text() if RESULTS.exists() else ""
    kept = []
    if merge:
        fresh = {r.name for r in rows}
        kept = [line for line in _existing_rows(old_text, name) if line.split(" | ")[0][2:] not in fresh]
    lines = [
        f"<!-- bench:{name} -->",
        f"## {title}",
        "",
        f"`{command or f'python -m benchmarks.{name}'}` — {dt.date.today().isoformat()}, {machine()}",
        "",
        "| measure | value | unit | target | note |",
        "|---|---:|---|---|---|",
        *kept,
        *(f"| {r.name} | {r.shown} | {r.unit} | {r.target} | {r.note} |" for r in rows),
    ]
    if notes:
        lines += ["", notes.strip()]
    lines.append(f"<!-- /bench:{name} -->")
    section = "\n".join(lines)

    text = old_text or "# Benchmark results\n\nLatest figures of each benchmark.\n"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = (
        pattern.sub(lambda _: section, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + section + "\n"
    )
    return write_text(RESULTS, text)
