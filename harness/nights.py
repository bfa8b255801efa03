"""Nights that build on each other: `harness run --continue <tag>` and the list `harness status` shows.

A night that continues another starts from that night's best commit (its baseline is that best, measured
again under the new night's settings) and inherits what it learned: the research memory and the novelty
check read the runs of every night in the chain, so a change tried last night is not trained again tonight.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.ledger import Ledger, LedgerError, NightActivity, NightInfo, RunRecord, best_run
from harness.paths import RUNS_DIR, NightPaths, night_tags


def continuation(root: Path, tag: str) -> RunRecord:
    """The best run of night `tag`, which a new night starts from; one line saying why when it cannot."""
    paths = NightPaths(root, tag)
    info = NightInfo.read(paths)
    if info is None or not paths.ledger.exists():
        known = ", ".join(night_tags(root)) or "none"
        raise LedgerError(
            f"--continue {tag}: no night tagged {tag!r} under {root / RUNS_DIR}; nights: {known}"
        )
    activity = NightActivity.read(paths)
    if activity is not None and activity.alive():
        raise LedgerError(f"--continue {tag}: that night is still running; let it end (or stop it) first")
    records = Ledger(paths).read()
    best = best_run(records)
    if best is None or best.commit is None or best.primary is None:
        baseline = next((r for r in records if r.is_baseline), None)
        why = f"its baseline {baseline.status.value}: {baseline.reason}" if baseline else "it has no runs"
        raise LedgerError(f"--continue {tag}: the night has no judged run to start from ({why[:200]})")
    return best


def night_chain(root: Path, tag: str | None) -> list[RunRecord]:
    """Every run of night `tag` and of the nights it continues, the oldest night first."""
    chain: list[list[RunRecord]] = []
    seen: set[str] = set()
    while tag is not None and tag not in seen:
        seen.add(tag)
        paths = NightPaths(root, tag)
        chain.append(Ledger(paths).read() if paths.ledger.exists() else [])
        info = NightInfo.read(paths)
        tag = info.continues if info is not None else None
    return [record for records in reversed(chain) for record in records]


@dataclass(frozen=True)
class NightLine:
    """One night of the project, for `harness status`."""

    tag: str
    runs: int
    best: RunRecord | None
    continues: str | None
    running: bool


def nights(root: Path) -> list[NightLine]:
    """The project's nights, oldest first."""
    lines = []
    for tag in night_tags(root):
        paths = NightPaths(root, tag)
        records = Ledger(paths).read() if paths.ledger.exists() else []
        info = NightInfo.read(paths)
        activity = NightActivity.read(paths)
        running = activity is not None and activity.alive()
        lines.append(
            NightLine(tag, len(records), best_run(records), info.continues if info else None, running)
        )
    return lines
