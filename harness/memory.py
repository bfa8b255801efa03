"""The night's research memory: a bounded digest the agent reads before every proposal (runs/<tag>/memory.md).

A night of hundreds of runs cannot show the agent every run; without a digest it forgets what failed and
tries it again. The memory holds three sections:

- **what held**: the kept runs (hypothesis, the gain over the run it built on) and the agent's principles;
- **dead ends**: the runs not kept, grouped by what they moved (the config keys they changed, else the
  files and functions), each with its value and outcome;
- **open questions**: unconfirmed runs (a gain on one seed that the second did not repeat) and the agent's
  questions.

It is rebuilt from the ledger for every proposal, so a resumed night has the same memory without a file of
its own to keep in step: the harness's lines come from the runs' records and their proposal diffs, the
agent's notes from the memory edits each proposal carried (`Proposal.memory`, kept in its record). The
harness enforces the bound, whatever the agents send: a note is cut at NOTE_CHARS, the agent's notes together
keep the newest within AGENT_CHARS, each group of dead ends shows its latest runs, and the whole digest stays
under MEMORY_CHARS (older lines fold into counts; the ledger keeps everything).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from harness.diffs import diff_lines
from harness.durable import atomic_write_text
from harness.ledger import FAILED, RunRecord, RunStatus
from harness.paths import NightPaths
from harness.plateau import relative_change
from harness.reports import one_line

MEMORY_CHARS = 3000
"""The whole digest, in characters (about 750 tokens): the prompt stops growing once it is full. A full
memory adds at most ~2,700 characters to a prompt of run 3 (~14,000 on the tiny project:
benchmarks/memory.py), so a prompt never grows past ~1.2x of an early one."""
NOTE_CHARS = 280  # one agent note
AGENT_CHARS = 1200  # the agent's notes together: the newest are kept
KEPT_LINES = 8  # kept runs shown (the latest); the others are counted
GROUP_RUNS = 4  # runs shown per dead-end group (the latest); the others are counted
SECTIONS = {
    "principle": "What held",
    "dead end": "Dead ends (not kept, by what they moved)",
    "question": "Open questions",
}

_KEY_LINE = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*=\s*(.+?)\s*$")
_HUNK_FUNCTION = re.compile(r"^\s*(?:async\s+)?(?:def|class)\s+(\w+)")  # after a hunk header's second @@


@dataclass
class Moved:
    """What a proposal changed: config keys (old and new values) and code (file: functions)."""

    keys: dict[str, tuple[str, str]] = field(default_factory=dict)
    code: dict[str, set[str]] = field(default_factory=dict)

    @property
    def topic(self) -> str:
        """The group a dead end goes in: the config keys it moved, else the code it changed."""
        if self.keys:
            return ", ".join(sorted(self.keys))
        places = [
            f"{path} ({', '.join(sorted(fns))})" if fns else path for path, fns in sorted(self.code.items())
        ]
        return "; ".join(places) or "no change"

    @property
    def values(self) -> str:
        return ", ".join(f"{key} {new}" for key, (_, new) in sorted(self.keys.items()))


def moved_by(diff: str) -> Moved:
    """Read a proposal's unified diff: `key = value` lines of TOML files, and the files (and the functions
    their hunks sit in) of everything else."""
    moved, old = Moved(), {}
    for line in diff_lines(diff):
        toml = line.path.endswith(".toml")
        if line.kind == "file":
            if not toml and line.path != "/dev/null":
                moved.code.setdefault(line.path, set())
        elif toml and line.kind in ("+", "-") and (match := _KEY_LINE.match(line.text)):
            key, text = match.groups()
            if line.kind == "-":
                old[key] = text
            elif old.get(key) != text:
                moved.keys[key] = (old.get(key, "(new)"), text)
        elif not toml and line.kind == "@@" and (match := _HUNK_FUNCTION.match(line.text)):
            moved.code[line.path].add(match.group(1))
    return moved


def _percent(value: float | None, reference: float | None) -> str:
    """`value` against `reference` in percent ("" when either is missing)."""
    change = relative_change(value, reference)
    return "" if change is None else f"{change:+.1%}"


def _change(record: RunRecord, parent: RunRecord | None) -> str:
    """The run's val mse against the run it built on."""
    return _percent(record.primary, parent.primary if parent else None)


def _outcome(record: RunRecord, parent: RunRecord | None) -> str:
    if record.status in FAILED or record.primary is None:
        why = record.reason.split(":")[0] if record.reason else ""
        return f"{record.status.value}" + (f" ({one_line(why, 60)})" if why else "")
    return f"{record.status.value} {_change(record, parent)}".strip()


@dataclass
class Note:
    id: str
    section: str
    text: str
    run_id: str

    @property
    def line(self) -> str:
        return f"- [{self.id}] {self.text} (agent, {self.run_id})"


def agent_notes(records: Iterable[RunRecord]) -> tuple[list[Note], int]:
    """The agents' notes still standing, oldest first, within AGENT_CHARS (the newest kept), and how many
    older ones fell out of the bound."""
    notes: list[Note] = []
    count = 0
    for record in records:
        for edit in record.memory:
            if edit.forget is not None:
                notes = [n for n in notes if n.id != edit.forget.strip().upper()]
            elif edit.add is not None:
                count += 1
                notes.append(Note(f"N{count}", edit.section, one_line(edit.add, NOTE_CHARS), record.run_id))
    kept, used = [], 0
    for note in reversed(notes):
        used += len(note.line)
        if used > AGENT_CHARS:
            break
        kept.append(note)
    return kept[::-1], len(notes) - len(kept)


class MemoryBuilder:
    """Builds the digest of a night's runs; what it read of each run's diff is kept (a run never changes)."""

    def __init__(self, paths: NightPaths):
        self.paths = paths
        self._moved: dict[str, Moved] = {}

    def moved(self, record: RunRecord) -> Moved:
        if record.run_id not in self._moved:
            diff = NightPaths(self.paths.root, record.tag).run_dir(record.run_id) / "proposal.diff"
            self._moved[record.run_id] = moved_by(diff.read_text()) if diff.exists() else Moved()
        return self._moved[record.run_id]

    def render(self, records: list[RunRecord]) -> str:
        """The digest as markdown, at most MEMORY_CHARS."""
        by_id = {r.run_id: r for r in records}
        parent = {r.run_id: by_id.get(r.parent) if r.parent else None for r in records}
        notes, dropped = agent_notes(records)
        lines: dict[str, list[str]] = {section: [] for section in SECTIONS}

        kept = [r for r in records if r.status == RunStatus.KEEP and not r.is_baseline]
        if len(kept) > KEPT_LINES:
            lines["principle"].append(f"- {len(kept) - KEPT_LINES} earlier keeps (the ledger has them)")
        for r in kept[-KEPT_LINES:]:
            lines["principle"].append(
                f"- {r.run_id} kept: {one_line(r.hypothesis, 140)} ({_change(r, parent[r.run_id])})"
            )

        groups: dict[str, list[RunRecord]] = {}
        for r in records:
            if r.is_baseline or r.status in (RunStatus.KEEP, RunStatus.UNCONFIRMED):
                continue
            moved = self.moved(r)
            never_applied = r.status == RunStatus.REJECTED and not (moved.keys or moved.code)
            groups.setdefault("refused before any change" if never_applied else moved.topic, []).append(r)
        order = {r.run_id: i for i, r in enumerate(records)}
        ordered = sorted(groups.items(), key=lambda item: order[item[1][-1].run_id])  # latest activity last
        for topic, runs in ordered:
            shown = []
            for r in runs[-GROUP_RUNS:]:
                values = self.moved(r).values
                label = values if values else f'"{one_line(r.hypothesis, 60)}"'
                shown.append(f"{r.run_id} {label}: {_outcome(r, parent[r.run_id])}")
            earlier = f" (and {len(runs) - GROUP_RUNS} earlier)" if len(runs) > GROUP_RUNS else ""
            lines["dead end"].append(f"- {topic}{earlier}: " + "; ".join(shown))

        for r in records:
            if r.status == RunStatus.UNCONFIRMED:
                base = parent[r.run_id]
                first = _percent(r.trials[0].primary if r.trials else None, base.primary if base else None)
                gain = f"first seed {first}, " if first else ""
                what, mean = one_line(r.hypothesis, 120), f"mean of two {_change(r, base)}"
                if any(not t.ok for t in r.trials[1:]):
                    second = r.trials[1].status
                    mean = f"its second seed: {second.value if second else 'failed'}"
                lines["question"].append(f"- {r.run_id} unconfirmed: {what} ({gain}{mean})")
        for note in notes:
            lines[note.section].append(note.line)
        return _bounded(lines, dropped)

    def write(self, records: list[RunRecord]) -> str:
        """Render the digest and keep it in `runs/<tag>/memory.md` for the person reading along."""
        text = self.render(records)
        atomic_write_text(self.paths.memory, text + "\n")
        return text


def _bounded(lines: dict[str, list[str]], dropped_notes: int) -> str:
    """The sections within MEMORY_CHARS: the oldest harness lines go first (dead ends, then questions, then
    keeps), counted in their section's heading."""
    folded = {section: 0 for section in lines}

    def text() -> str:
        out = []
        for section, title in SECTIONS.items():
            extra = f" ({folded[section]} older lines folded: the ledger has them)" if folded[section] else ""
            out.append(f"### {title}{extra}")
            out.extend(lines[section] or ["- (none yet)"])
            out.append("")
        if dropped_notes:
            out.append(f"({dropped_notes} older agent notes fell out of the memory's bound.)")
        return "\n".join(out).rstrip()

    rendered = text()
    while len(rendered) > MEMORY_CHARS:
        section = next(
            (
                s
                for s in ("dead end", "question", "principle")
                if any(not ln.startswith("- [N") for ln in lines[s])
            ),
            None,
        )
        if section is None:  # only agent notes left, already within AGENT_CHARS: cut the text itself
            return rendered[: MEMORY_CHARS - 1] + "…"
        oldest = next(i for i, ln in enumerate(lines[section]) if not ln.startswith("- [N"))
        del lines[section][oldest]
        folded[section] += 1
        rendered = text()
    return rendered
