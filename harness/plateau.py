"""Plateaus and revisits: when a night stops improving, ask for a structural change and reopen old ideas.

An agent that found a good knob keeps turning it long after the gains are gone. After `plateau_after` runs
with no kept improvement (more for a longer night), the prompt says so and asks for a structural change
(the model, the loss, the data sampling, the schedule) rather than another value. It also lists revisit
candidates: near-misses (unconfirmed runs, discards that beat the run they built on but not by the margin)
and discards built on a best that a later keep replaced (their premise changed). A proposal may retry one
of them once, naming it (`Proposal.revisit`): the novelty check lets that repeat through, and the ledger
marks the run `revisit_of`.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.ledger import NightInfo, RunRecord, RunStatus

RUN_COST = 1.5  # a run's wall time per second of its training budget (smoke step, judging, the agent)
PLATEAU_SHARE = 8  # a plateau is an eighth of the night's expected runs...
PLATEAU_RUNS = (4, 20)  # ...but at least 4 runs and at most 20
REVISITS_SHOWN = 5


def plateau_after(budget_s: float, per_run_s: float) -> int:
    """Runs without a kept improvement that make a plateau: an eighth of the runs the night expects."""
    expected = budget_s / max(per_run_s * RUN_COST, 1e-9)
    low, high = PLATEAU_RUNS
    return int(min(high, max(low, round(expected / PLATEAU_SHARE))))


def night_plateau(info: NightInfo) -> int:
    """The night's plateau: its `--plateau`, else `plateau_after` of its budget and runs."""
    return info.plateau_after or plateau_after(info.budget_s, info.per_run_s)


def runs_since_keep(records: list[RunRecord]) -> int:
    """Runs decided since the last kept one (the baseline counts as kept)."""
    last = max((i for i, r in enumerate(records) if r.status == RunStatus.KEEP), default=-1)
    return len(records) - 1 - last


def plateaus(records: list[RunRecord], after: int) -> list[tuple[str, str]]:
    """Stretches of at least `after` runs without a keep, as (first run, last run)."""
    stretches, start = [], None
    for i, r in enumerate(records + [None]):  # a sentinel ends the last stretch
        if r is not None and r.status != RunStatus.KEEP:
            start = i if start is None else start
            continue
        if start is not None and i - start >= after:
            stretches.append((records[start].run_id, records[i - 1].run_id))
        start = None
    return stretches


def relative_change(value: float | None, reference: float | None) -> float | None:
    """`value` against `reference` as a fraction (-0.02 is 2% lower); None when either is missing."""
    if value is None or not reference:
        return None
    return value / reference - 1


def revisit_candidates(records: list[RunRecord], best: RunRecord | None) -> list[tuple[RunRecord, str]]:
    """Runs worth one more try, with why: near-misses, and discards whose premise a later keep changed;
    none already revisited. Closest to a gain first."""
    by_id = {r.run_id: r for r in records}
    revisited = {r.revisit_of for r in records if r.revisit_of}
    found = []
    for r in records:
        if (
            r.is_baseline
            or r.run_id in revisited
            or r.status not in (RunStatus.DISCARD, RunStatus.UNCONFIRMED)
        ):
            continue
        parent = by_id.get(r.parent) if r.parent else None
        change = relative_change(r.primary, parent.primary if parent else None)
        if r.status == RunStatus.UNCONFIRMED:
            why = "a near-miss: it cleared the bar on one seed, not on two"
        elif change is not None and change < 0:
            why = f"a near-miss: {change:+.1%} on {r.parent}, not past the margin"
        elif best is not None and r.parent != best.run_id and r.parent is not None:
            why = f"built on {r.parent}; the best is {best.run_id} now"
        else:
            continue
        found.append((r, why, change if change is not None else 0.0))
    found.sort(key=lambda item: item[2])
    return [(r, why) for r, why, _ in found[:REVISITS_SHOWN]]


@dataclass
class PlateauState:
    """What a prompt shows of a plateau: how long it is, and what could be retried."""

    runs: int
    after: int
    revisits: list[tuple[RunRecord, str]]
