"""The overnight loop on a real git project: one night whose every proposal has a certain fate.

Real commits, real training subprocesses, the real judge. The project and the proposals are in
tests/night_project.py: its baseline is bad on purpose, so keep, discard, unconfirmed (one seed ruined or
crashing), rejected, crash and timeout are each a certain outcome. The loop as a process (kill -9 and resume,
Ctrl-C, the budget, secrets, the CLI) is tested in tests/test_night_process.py. The same night's runs are
promoted at the end (`harness promote`, `models.load_promoted`: round trip, own code, tampering).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import git
import numpy as np
import pytest
import torch

import models
from harness.ledger import Ledger, RunStatus, best_run
from harness.loop import trial_seed
from harness.memory import MemoryBuilder
from harness.paths import NightPaths, run_id_for
from harness.promote import promote
from models.checkpoint import load_run
from models.data import load_split
from models.promoted import MANIFEST, PromotedError, load_promoted
from models.world_model import to_tensor
from tests.helpers import assert_one_line_error, harness
from tests.night_project import EXPECTED, EXPERIMENT, KEEP, NOTE, REPEAT


@pytest.fixture
def night(loop_night: NightPaths) -> NightPaths:
    """The session's night (tests/conftest.py)."""
    return loop_night


def test_every_proposal_gets_its_fate(night: NightPaths):
    records = Ledger(night).read()
    assert [r.status.value for r in records] == EXPECTED
    assert [r.run_id for r in records] == [run_id_for("t", i) for i in range(len(EXPECTED))]
    keep, discard = records[KEEP], records[KEEP + 1]
    assert keep.primary < records[0].primary * 0.99 and discard.primary > keep.primary
    assert "models/evaluate.py: pinned" in records[5].reason
    assert "'..' is not allowed" in records[6].reason
    assert "git internals" in records[7].reason
    assert "NaN" in records[8].reason
    assert "hard timeout" in records[9].reason
    assert "a near-duplicate of t-004 (similarity 0.8" in records[REPEAT].reason
    for r in records:
        assert night.report(r.run_id).exists()
        # Every second of a run is accounted once: agent, training, judging, more seeds, harness.
        assert r.timings.total_s == pytest.approx((r.finished_at - r.started_at).total_seconds(), abs=1.0)
    summary = night.summary.read_text()
    assert f"harness promote {keep.run_id}" in summary


def test_keep_advances_the_branch_and_discard_leaves_a_ref(night: NightPaths):
    repo = git.Repo(night.root)
    records = Ledger(night).read()
    keep = records[KEEP]
    assert repo.heads["harness/t"].commit.hexsha == keep.commit
    assert "residual = true" in repo.git.show(f"{keep.commit}:{EXPERIMENT}")
    for r in records[1:]:
        ref = f"refs/harness/t/{r.run_id}"
        if r.status == RunStatus.KEEP:
            continue
        if r.status in (RunStatus.DISCARD, RunStatus.UNCONFIRMED, RunStatus.CRASH, RunStatus.TIMEOUT):
            assert repo.git.rev_parse(ref) == r.commit  # the tried commit stays reachable
        else:
            assert r.commit is None and not repo.git.for_each_ref(ref)  # rejected: never committed
    assert repo.active_branch.name == "main"  # the user's checkout never moved
    assert not repo.is_dirty(untracked_files=False)
    assert "print('hi')" not in (night.root / "models/evaluate.py").read_text()
    worktree = git.Repo(night.runs / "worktree")
    assert worktree.head.commit.hexsha == keep.commit and not worktree.is_dirty(untracked_files=True)
    assert not (night.root.parent / "outside.py").exists()


def test_rejected_proposals_cost_no_training(night: NightPaths):
    for r in Ledger(night).read()[5:8]:
        assert r.timings.train_s == 0 and not (night.run_dir(r.run_id) / "train.log").exists()


def test_the_baseline_trains_on_two_seeds_and_sets_the_noise_floor(night: NightPaths):
    baseline = Ledger(night).read()[0]
    assert baseline.status == RunStatus.KEEP
    assert [t.seed for t in baseline.trials] == [0, 1] and all(t.ok for t in baseline.trials)
    assert [t.directory for t in baseline.trials] == ["t-000", "t-000/seed-1"]
    assert (night.run_dir("t-000") / "seed-1" / "eval_val.json").exists()
    mses = [t.metrics_val["mse"] for t in baseline.trials]
    assert baseline.metrics_val["mse"] == pytest.approx(sum(mses) / 2)
    assert baseline.noise is not None and baseline.noise.dof == 1
    assert baseline.timings.confirm_s > 0  # the second seed is accounted as such
    assert all(t.train.get("seed") == t.seed for t in baseline.trials)  # the harness chose the seed
    assert all(t.metrics_test for t in baseline.trials) and baseline.metrics_test


def test_a_win_on_one_seed_that_the_second_does_not_repeat_is_unconfirmed(night: NightPaths):
    records = Ledger(night).read()
    ruined = records[1]
    assert ruined.status == RunStatus.UNCONFIRMED
    first, second = ruined.trials
    assert (first.seed, second.seed) == (trial_seed(1, 0), trial_seed(1, 1))
    best = records[0].metrics_val["mse"]
    assert (
        first.primary < best * 0.99 < best < second.primary
    )  # the first cleared the bar, the second ruined it
    assert ruined.primary == pytest.approx((first.primary + second.primary) / 2)
    assert "the mean of seeds [1000, 1001] did not" in ruined.reason
    assert ruined.metrics_test is None  # only kept runs are judged on test


def test_a_crashing_confirmation_leaves_the_run_unconfirmed(night: NightPaths):
    crashed = Ledger(night).read()[2]
    assert crashed.status == RunStatus.UNCONFIRMED
    assert crashed.trials[0].ok and not crashed.trials[1].ok
    assert crashed.trials[1].status == RunStatus.CRASH
    assert "the confirmation run (seed 2001) failed" in crashed.reason
    assert "boom on the confirmation seed" in crashed.error_tail


def test_a_confirmed_win_is_kept_on_the_mean_of_its_seeds(night: NightPaths):
    records = Ledger(night).read()
    kept = records[KEEP]
    assert "confirmed on seeds [3000, 3001]" in kept.reason
    assert all(t.ok and t.metrics_test for t in kept.trials)
    assert kept.metrics_test["mse"] == pytest.approx(sum(t.metrics_test["mse"] for t in kept.trials) / 2)
    assert kept.timings.confirm_s > 0
    # The floor is the baseline's: the ruined run's disagreeing seeds did not widen it for later runs.
    assert kept.noise == records[1].noise == records[0].noise
    for r in records[1:3]:  # unconfirmed: never the parent of a later run
        assert r.parent == "t-000"
    assert records[KEEP + 1].parent == kept.run_id


def test_unconfirmed_runs_show_in_every_view(night: NightPaths):
    rows = night.results_tsv.read_text().splitlines()
    assert [row.split("\t")[4] for row in rows[1:5]] == ["keep", "unconfirmed", "unconfirmed", "keep"]
    summary = night.summary.read_text()
    assert "2 unconfirmed" in summary and "| noise floor | noise floor σ" in summary
    assert "more seeds (noise floor, confirmations)" in summary
    report = night.report("t-001").read_text()
    assert "❔ unconfirmed" in report and "## Seeds" in report and "| 1001 |" in report
    prompt = (night.run_dir("t-002") / "prompt.md").read_text()
    assert "t-001 unconfirmed" in prompt and "on its first seed and then on the mean with a second" in prompt


def test_the_research_memory_reaches_every_later_prompt(night: NightPaths):
    """The harness's digest (keeps, dead ends by what they moved, open questions) and the agent's own note
    reach the prompts after them; runs/<tag>/memory.md holds the latest."""
    prompt = (night.run_dir("t-006") / "prompt.md").read_text()
    memory = prompt.split("## Research memory")[1].split("\n## ")[0]
    assert "- t-003 kept: residual prediction starts at the copy baseline (-" in memory
    assert "- residual: t-004 residual false: discard +" in memory
    assert "- t-001 unconfirmed: residual, but odd seeds are ruined (first seed -" in memory
    assert '- refused before any change: t-005 "grade more kindly": rejected' in memory
    assert (
        "- t-002 unconfirmed: residual, but odd seeds crash (first seed -99.2%, its second seed: crash)"
        in memory
    )
    assert f"- [N1] {NOTE} (agent, t-003)" in memory
    assert "[N1]" not in (night.run_dir("t-003") / "prompt.md").read_text()  # it joins once its run is in
    assert f"[N1] {NOTE}" in night.memory.read_text()
    assert "## Every run so far" not in prompt  # the prompt no longer lists every run


def test_a_repeated_change_is_sent_back_once_with_the_earlier_result_then_not_trained(night: NightPaths):
    """PROPOSALS[9] repeats t-004's change in other words: the agent hears what t-004 gave and is asked again;
    its second answer (a replay gives the same) repeats it too, and is recorded rejected without training.
    Every proposal that became a commit has its novelty in the ledger."""
    records = Ledger(night).read()
    repeat = records[REPEAT]
    assert repeat.status == RunStatus.REJECTED and repeat.hypothesis == "turn residual prediction off"
    assert "it was discard, val mse" in repeat.reason and repeat.similar_to == "t-004"
    assert repeat.sent_back is not None and repeat.sent_back.startswith("a near-duplicate of t-004")
    assert (
        "| repeats | 1 proposal sent back as near-duplicates of earlier runs, not trained; 1 repeated again"
        in (night.summary.read_text())
    )
    assert (
        repeat.novelty is not None and repeat.novelty < 0.15 and not repeat.trials and repeat.commit is None
    )
    prompt = (night.run_dir(repeat.run_id) / "prompt.md").read_text()
    assert "## Your first proposal for this run was sent back" in prompt
    assert "a near-duplicate of t-004" in prompt and "not trained: it was discard" in prompt
    memory = MemoryBuilder(night).render(records)  # as a next prompt would show it
    assert "t-010 residual false: rejected (a near-duplicate of t-004" in memory.split("### Dead ends")[1]
    assert records[0].novelty is None  # the baseline proposes nothing
    assert records[1].novelty == 1.0  # the first change is new
    assert 0.0 < records[3].novelty < 1.0 and records[3].similar_to in ("t-001", "t-002")  # residual again


def test_a_plateau_asks_for_a_structural_change_and_lists_what_may_be_revisited(night: NightPaths):
    """The night's plateau is 5 runs (tests/conftest.py): t-004 to t-008 kept nothing after t-003."""
    assert "## A plateau" not in (night.run_dir("t-008") / "prompt.md").read_text()
    prompt = (night.run_dir("t-009") / "prompt.md").read_text()
    plateau = prompt.split("## A plateau: 5 runs since the last kept improvement")[1].split("\n## ")[0]
    assert "Propose a structural change" in plateau
    assert (
        "- t-001: residual, but odd seeds are ruined (a near-miss: it cleared the bar on one seed" in plateau
    )
    assert "- t-002: residual, but odd seeds crash" in plateau and "t-004" not in plateau
    assert "| plateaus | t-004 to t-010 without a kept run" in night.summary.read_text()


# ------------------------------------------------------------ promoting the night's runs


def predictions(model: torch.nn.Module, dataset: Path, config) -> np.ndarray:
    split = load_split(dataset, config.canvas, "val", config.data.split())
    context = to_tensor(np.asarray(split.canvases[:2]))
    with torch.inference_mode():
        return model.predict(context, torch.arange(3).expand(2, -1), seed=0).numpy()


def test_promote_round_trip_loads_the_run_with_its_own_code(night: NightPaths, small_cache: Path):
    root = night.root
    done = promote(root, "t-003")
    manifest = json.loads((done.path / MANIFEST).read_text())
    assert manifest["run_id"] == "t-003" and manifest["commit"] == Ledger(night).read()[KEEP].commit
    assert manifest["metrics"]["val"]["mse"] == Ledger(night).read()[KEEP].primary
    assert manifest["metrics"]["test"]["split"] == "test"
    assert manifest["canvas"]["frame_width"] == 32
    assert {"run/ema.safetensors", "run/config.json", "code/models/dit.py"} <= set(manifest["files"])
    assert os.readlink(root / "checkpoints/best") == "t-003"

    promoted = models.load_promoted("best", root=root)
    assert promoted.run_id == "t-003"
    dit_module = type(promoted.model).__init__.__globals__
    assert dit_module["SNAPSHOT_MARK"] == "promoted-code"  # the snapshot's code built it
    import models.dit as installed

    assert not hasattr(installed, "SNAPSHOT_MARK")  # and the installed package is untouched
    direct, config = load_run(night.run_dir("t-003"))
    np.testing.assert_array_equal(
        predictions(promoted.model, small_cache, config), predictions(direct, small_cache, config)
    )


def test_a_discarded_run_gets_its_test_metrics_on_promotion(night: NightPaths):
    done = promote(night.root, "t-004", alias="tried")
    assert Ledger(night).read()[KEEP + 1].metrics_test is None
    test = done.manifest["metrics"]["test"]
    assert test["split"] == "test" and test["mse"] > 0
    assert (done.path / "run/eval_test.json").exists()
    assert os.readlink(night.root / "checkpoints/tried") == "t-004"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "run/ema.safetensors").write_bytes(b"\0" * 64), "was modified: run/ema.safetensors"),
        (lambda p: (p / "code/models/blocks.py").unlink(), "incomplete: code/models/blocks.py is missing"),
        (lambda p: (p / "code/models/extra.py").write_text("x = 1\n"), "does not list: code/models/extra.py"),
        (lambda p: (p / MANIFEST).unlink(), "manifest.json is missing"),
    ],
)
def test_a_tampered_or_incomplete_checkpoint_is_refused(night: NightPaths, damage, message: str):
    done = promote(night.root, "t-003", alias=None)
    damage(done.path)
    with pytest.raises(PromotedError, match=message):
        load_promoted(done.path)


def test_promote_cli(night: NightPaths):
    root = night.root
    result = harness("promote", "t-000", "--alias", "base", "--root", root)
    assert result.returncode == 0, result.stderr
    assert "promoted t-000" in result.stdout and os.readlink(root / "checkpoints/base") == "t-000"
    listing = harness("promote", "--list", "--root", root).stdout
    assert "t-000" in listing and "base" in listing
    assert_one_line_error(
        harness("promote", "t-404", "--root", root), "unknown run 't-404'", "known runs: t-000"
    )
    assert_one_line_error(harness("promote", "t-008", "--root", root), "t-008 cannot be promoted", "crash")
    best = best_run(Ledger(night).read()).run_id
    result = harness("promote", "--best", "--alias", "top", "--root", root)
    assert result.returncode == 0, result.stderr
    assert f"promoted {best}" in result.stdout and os.readlink(root / "checkpoints/top") == best
    assert_one_line_error(harness("promote", "--best", "--tag", "nope", "--root", root), "no night tagged")
    with pytest.raises(PromotedError, match="no promoted checkpoint 'nope'; promoted: "):
        load_promoted("nope", root=root)
