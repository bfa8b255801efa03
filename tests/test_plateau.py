"""Plateaus and revisits (harness/plateau.py): when a night has stopped improving, and what may be retried."""

from __future__ import annotations

from harness.ledger import RunRecord, RunStatus
from harness.plateau import plateau_after, plateaus, revisit_candidates, runs_since_keep


def run(index: int, status: RunStatus, mse: float | None, parent: int | None, **fields) -> RunRecord:
    return RunRecord(
        run_id=f"p-{index:03d}",
        index=index,
        tag="p",
        parent=f"p-{parent:03d}" if parent is not None else None,
        hypothesis=f"idea {index}",
        status=status,
        metrics_val={"mse": mse, "cf_acc": 0.9} if mse is not None else {},
        **fields,
    )


def test_a_plateau_is_longer_for_a_longer_night():
    assert plateau_after(3600, 300) == 4  # 8 runs expected: at least 4
    assert plateau_after(8 * 3600, 300) == 8  # 64 runs expected: an eighth
    assert plateau_after(8 * 3600, 60) == 20  # 320 runs: at most 20


def test_runs_since_the_last_keep_and_the_stretches_without_one():
    K, D, C = RunStatus.KEEP, RunStatus.DISCARD, RunStatus.CRASH
    records = [run(i, s, 1.0, 0) for i, s in enumerate([K, D, D, K, D, C, D, D, K, D, D])]
    assert runs_since_keep(records) == 2 and runs_since_keep(records[:8]) == 4
    assert plateaus(records, after=4) == [("p-004", "p-007")]
    assert plateaus(records, after=2) == [("p-001", "p-002"), ("p-004", "p-007"), ("p-009", "p-010")]


def test_revisits_are_near_misses_and_ideas_whose_premise_a_keep_changed_each_once():
    D, U = RunStatus.DISCARD, RunStatus.UNCONFIRMED
    records = [
        run(0, RunStatus.KEEP, 1.00, None),
        run(1, D, 0.995, 0),  # beat its parent, not by the margin: a near-miss
        run(2, U, 0.97, 0),  # a near-miss on one seed
        run(3, D, 1.20, 0),  # worse, on the baseline...
        run(4, RunStatus.KEEP, 0.90, 0),  # ...which a keep then replaced: its premise changed
        run(5, D, 0.95, 4),  # worse than the best it built on: nothing to revisit
        run(6, RunStatus.CRASH, None, 4),
        run(7, D, 0.99, 4, revisit_of="p-001"),  # p-001 was retried already
    ]
    candidates = revisit_candidates(records, records[4])
    assert [r.run_id for r, _ in candidates] == ["p-002", "p-003"]
    assert "cleared the bar on one seed" in candidates[0][1] and "the best is p-004 now" in candidates[1][1]
    records[7] = records[7].model_copy(update={"revisit_of": None})
    assert [r.run_id for r, _ in revisit_candidates(records, records[4])][0] == "p-002"
    assert "p-001" in [r.run_id for r, _ in revisit_candidates(records, records[4])]
