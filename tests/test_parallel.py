"""Parallel nights: two runs in flight on local workers, each on its own core, decided as they finish.

Real `harness run` subprocesses on the tiny project of tests/night_project.py. Under `make test` each xdist
worker is pinned to one core; these nights get the whole machine back (two workers need two).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import git
import pytest

from harness import reports
from harness.agents.base import Proposal
from harness.agents.replay import write_replay
from harness.executor import Executor
from harness.ledger import Ledger, NightActivity, NightInfo, PendingRun, RunStatus, Trial
from harness.paths import NightPaths, run_id_for
from harness.workers import gpu_shares
from models.errors import WorldloopError
from tests.helpers import wait_for
from tests.night_project import (
    RESIDUAL,
    config_edit,
    make_project,
    replay_night_args,
    run_harness,
)

ALL_CORES = sorted(range(os.cpu_count() or 1))

LEARNS_NOTHING = Proposal(
    hypothesis="a learning rate twice as small (learns nothing either)",
    edits=[config_edit("lr = 1e-30", "lr = 2e-30")],
)
RESIDUAL_AGAIN = Proposal(
    hypothesis="residual prediction, with one warm-up step",
    edits=[RESIDUAL, config_edit("warmup_steps = 0", "warmup_steps = 1")],
)
PARALLEL = [
    Proposal(hypothesis="residual prediction starts at the copy baseline", edits=[RESIDUAL]),
    LEARNS_NOTHING,
    RESIDUAL_AGAIN,
]
"""Asked for at once (two workers and a backlog of one), all on the baseline's commit: the first and the third
are the same improvement, so whichever is decided second is no better than the first kept."""


@pytest.fixture
def whole_machine() -> Iterator[list[int]]:
    """This process on every core for the test (the night's workers split them), as before after."""
    assert len(ALL_CORES) >= 2, "a 2-worker night needs a machine with two cores"
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, ALL_CORES)
    try:
        yield ALL_CORES
    finally:
        os.sched_setaffinity(0, before)


def span(trial: Trial) -> tuple[float, float]:
    start = trial.started_at.timestamp()
    return start, start + trial.train_s + trial.eval_s


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_a_two_worker_night_killed_with_two_runs_in_flight_resumes_and_decides_in_finish_order(
    small_cache: Path, tmp_path: Path, whole_machine: list[int]
):
    """`harness run --workers 2`, killed by kill -9 while two candidates train, then `--resume`: no run lost
    or doubled, and the night reads as one: decided in finish order, each run against the best then."""
    root = make_project(tmp_path / "project")
    replay = write_replay(tmp_path / "p.jsonl", PARALLEL)
    args = replay_night_args(root, "p", replay, small_cache, per_run="1s")
    paths = NightPaths(root, "p")
    proc = run_harness(
        *args,
        *("--baseline-seeds", "2", "--max-runs", "4", "--workers", "2", "--backlog", "0"),
        cores=whole_machine,
    )

    def two_training() -> bool:
        activity = NightActivity.read(paths) if paths.current.exists() else None
        return activity is not None and sum(r.phase == "train" for r in activity.runs) == 2

    wait_for(two_training)
    os.killpg(proc.pid, signal.SIGKILL)  # the harness and everything it started
    proc.wait()
    in_flight = sorted(p.parent.name for p in paths.runs.glob("*/pending.json"))
    assert in_flight == [run_id_for("p", 1), run_id_for("p", 2)]
    assert all(PendingRun.read(paths.run_dir(r)).record["commit"] for r in in_flight)
    before = Ledger(paths).read()
    assert [r.run_id for r in before] == [run_id_for("p", 0)]

    resumed = run_harness(
        *("--root", str(root), "--resume", "p", "--agent", "replay", "--replay", str(replay)),
        *("--max-runs", "4", "--workers", "2"),
        cores=whole_machine,
    )
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    for run_id in in_flight:
        assert f"{run_id} · resumed at" in out
    records = Ledger(paths).read()
    assert records[:1] == before
    assert sorted(r.run_id for r in records) == [run_id_for("p", i) for i in range(4)]  # none lost or twice
    by_id = {r.run_id: r for r in records}
    assert [by_id[run_id_for("p", i)].hypothesis for i in (1, 2, 3)] == [p.hypothesis for p in PARALLEL]
    info = NightInfo.read(paths)
    assert info.end_reason == "--max-runs 4 reached" and info.finished_at is not None and info.workers == 2

    # Decided as they finished: the ledger is in finish order, and each run was judged against the best then.
    assert [r.finished_at for r in records] == sorted(r.finished_at for r in records)
    residual = [by_id[run_id_for("p", i)] for i in (1, 3)]
    assert sorted(r.status for r in residual) == sorted([RunStatus.KEEP, RunStatus.DISCARD])
    kept = next(r for r in residual if r.status == RunStatus.KEEP)
    second = next(r for r in residual if r.status == RunStatus.DISCARD)
    assert records.index(second) > records.index(kept) and kept.run_id in second.reason
    assert by_id[run_id_for("p", 2)].status == RunStatus.DISCARD
    assert all(r.parent == run_id_for("p", 0) for r in records[1:])  # all proposed on the baseline

    # Both workers trained, at the same time: the baseline's two seeds side by side, then the candidates.
    assert {t.worker for r in records for t in r.trials} == {"w0", "w1"}
    first, other = by_id[run_id_for("p", 0)].trials
    assert first.worker != other.worker and overlap(span(first), span(other))

    # The branch tip is the best commit; every tried commit stays reachable; nothing is left in flight.
    repo = git.Repo(root)
    assert repo.heads["harness/p"].commit.hexsha == kept.commit
    for r in records[1:]:
        if r.status != RunStatus.KEEP:
            assert repo.git.rev_parse(f"refs/harness/p/{r.run_id}") == r.commit
    assert not list(paths.runs.glob("*/pending.json")) and not paths.current.exists()
    assert not (paths.runs / "trees").exists() or not any((paths.runs / "trees").iterdir())
    for r in records:  # every report with its figures: drawn by the painter, or on resume if the kill took it
        figures = reports.run_figures(r, paths)
        assert paths.report(r.run_id).exists() and set(figures) == {"cf", "error", "loss"}
        assert all(path.exists() for path in figures.values())
    summary = paths.summary.read_text()
    assert f"harness promote {kept.run_id}" in summary and "2 local workers" in summary


def test_too_many_workers_for_the_cores_is_one_line_before_the_night_starts(
    small_cache: Path, tmp_path: Path
):
    root = make_project(tmp_path / "project")
    too_many = len(os.sched_getaffinity(0)) + 1
    proc = run_harness(
        *replay_night_args(root, "w", write_replay(tmp_path / "p.jsonl", []), small_cache, per_run="1s"),
        *("--workers", str(too_many)),
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1 and f"--workers {too_many} needs" in out
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1
    assert not (root / "runs" / "w").exists() and "harness/w" not in [h.name for h in git.Repo(root).heads]


def test_local_workers_share_the_gpus_equally_and_a_run_sees_only_its_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    """On a 4-GPU workstation (here its CUDA_VISIBLE_DEVICES), two local workers get two GPUs each, and the
    subprocesses of a run see those alone; too few GPUs is one line naming the options."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert gpu_shares(2) == [["4", "5"], ["6", "7"]]
    assert gpu_shares(2, gpus_per_run=1) == [["4"], ["5"]]
    assert gpu_shares(3, gpus_per_run=0) == [[], [], []]  # CPU runs
    with pytest.raises(WorldloopError, match=r"--workers 5 needs 5 GPUs .*--gpus-per-run 0"):
        gpu_shares(5)
    with pytest.raises(WorldloopError, match="whole GPUs"):
        gpu_shares(2, gpus_per_run=0.5)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_shares(2) == [None, None]  # no GPU: the runs see the environment as it is

    (tmp_path / "probe.py").write_text(
        "import os\nprint('sees', os.environ.get('CUDA_VISIBLE_DEVICES', 'all'))\n"
    )
    for gpus, seen in ((["6", "7"], "6,7"), ([], ""), (None, "")):
        log = tmp_path / "probe.log"
        result = Executor(tmp_path, tmp_path, gpus=gpus)._run("probe", ["probe"], log, timeout_s=120)
        assert result.ok and log.read_text().split() == ["sees", *seen.split()], log.read_text()
