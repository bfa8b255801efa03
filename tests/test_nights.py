"""Nights that build on each other (`harness run --continue`, harness/nights.py): the new night starts from
the best commit of the one it continues, remembers what it learned and does not train its changes again."""

from __future__ import annotations

from pathlib import Path

from harness.agents.base import Proposal
from harness.agents.replay import ReplayAgent, write_replay
from harness.ledger import Ledger, NightInfo, RunRecord, RunStatus
from harness.loop import Night
from harness.paths import NightPaths
from tests.helpers import assert_one_line_error, harness
from tests.night_project import RESIDUAL, config_edit, make_project, tiny_night

TWICE = config_edit("lr = 1e-30", "lr = 2e-30")


def test_a_night_continues_another_from_its_best_with_what_it_tried(small_cache: Path, tmp_path: Path):
    root = make_project(tmp_path / "project")
    first = [
        Proposal(hypothesis="residual prediction starts at the copy baseline", edits=[RESIDUAL]),
        Proposal(hypothesis="a learning rate twice as large", edits=[TWICE]),
    ]
    Night(
        tiny_night(root, "a", small_cache, max_runs=3), ReplayAgent(write_replay(tmp_path / "a", first))
    ).run()
    a = Ledger(NightPaths(root, "a")).read()
    assert [r.status for r in a] == [RunStatus.KEEP, RunStatus.KEEP, RunStatus.DISCARD]

    again = [Proposal(hypothesis="double the learning rate", edits=[TWICE])]  # last night's discard
    settings = tiny_night(root, "b", small_cache, max_runs=2, continues="a")
    Night(settings, ReplayAgent(write_replay(tmp_path / "b", again))).run()
    night = NightPaths(root, "b")
    baseline, repeat = Ledger(night).read()
    info = NightInfo.read(night)
    assert info.continues == "a" and info.base_commit == a[1].commit  # from last night's best
    assert baseline.commit == a[1].commit and baseline.status == RunStatus.KEEP and baseline.primary > 0
    assert baseline.primary < a[0].primary * 0.5  # measured again: the residual model, not the first baseline
    assert repeat.status == RunStatus.REJECTED and repeat.similar_to == "a-002" and not repeat.trials
    assert "a near-duplicate of a-002" in repeat.reason and "it was discard" in repeat.reason
    memory = (night.run_dir("b-001") / "prompt.md").read_text().split("## Research memory")[1]
    assert "- a-001 kept: residual prediction starts at the copy baseline" in memory
    assert "- lr: a-002 lr 2e-30: discard" in memory
    assert "| continues | night `a`" in (root / "reports/summary.md").read_text()

    status = harness("status", "--root", root)
    assert "continues night a: its best run is this night's baseline" in status.stdout, status.stderr
    assert "a: 3 runs · best a-001" in status.stdout and "b: 2 runs · best b-000" in status.stdout
    assert "· continues a" in status.stdout


def test_continue_from_a_missing_or_failed_night_is_one_line(small_cache: Path, tmp_path: Path):
    root = make_project(tmp_path / "project")
    failed = NightPaths(root, "c")
    NightInfo(tag="c", budget_s=60, per_run_s=1, agent="replay").write(failed)
    Ledger(failed).append(
        RunRecord(
            run_id="c-000",
            index=0,
            tag="c",
            hypothesis="baseline",
            status=RunStatus.CRASH,
            reason="training exited with code 1: ValueError: heads must divide width",
        )
    )
    common = ("run", "--root", root, "--dataset", small_cache, "--budget", "1m", "--per-run", "1s")
    assert_one_line_error(harness(*common, "--continue", "nope"), "--continue nope: no night tagged", "c")
    assert_one_line_error(
        harness(*common, "--continue", "c"),
        "--continue c: the night has no judged run to start from (its baseline crash: training exited",
    )
    assert_one_line_error(harness(*common, "--continue", "c", "--resume", "c"), "one of them")
    assert not (root / "runs/2026").exists() and len(list((root / "runs").iterdir())) == 1  # nothing made
