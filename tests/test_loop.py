"""The overnight loop on a real git project: real commits, real training subprocesses, real judging.

The project (tests/night_project.py) is a copy of this repository's `models/` with a tiny DiT config whose
baseline is bad on purpose, so keep and discard are certain outcomes of the real judge: "residual = true" is
a sure gain on every seed. Edits of models/train.py make odd seeds (every confirmation seed: the harness
trains run i on seeds 1000 i, 1000 i + 1) save a ruined model or crash, so confirmed, unconfirmed and a
crashing confirmation are certain outcomes too.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import git
import pytest

from harness.agents.anthropic_agent import AnthropicAgent
from harness.agents.base import Agent, AgentContext, AgentError, FileEdit, Proposal
from harness.agents.replay import ReplayAgent, write_replay
from harness.ledger import Ledger, NightInfo, PendingRun, RunningState, RunStatus, TokenUse
from harness.loop import Night, trial_seed
from harness.paths import NightPaths, run_id_for
from tests.fake_messages_api import FakeMessagesAPI, message, overloaded, tool_use_block, usage
from tests.helpers import ROOT, assert_one_line_error, harness
from tests.night_project import BASE_CONFIG, EXPERIMENT, commit_all, config_edit, make_project, tiny_night

LOSS_LINE = "    def loss(self, canvases: Tensor, actions: Tensor) -> Tensor:\n"


def loss_edit(body: str) -> FileEdit:
    """Code run at the top of DiT.loss: after the smoke step's single call, it misbehaves."""
    injected = "        self.calls = getattr(self, 'calls', 0) + 1\n        if self.calls > 3:\n" + "".join(
        f"            {line}\n" for line in body.splitlines()
    )
    return FileEdit(path="models/dit.py", search=LOSS_LINE, replace=LOSS_LINE + injected)


SAVE_LINE = "    save_weights(model, out / WEIGHTS_FILE)\n"


def odd_seeds(body: str) -> FileEdit:
    """An edit of models/train.py running `body` before the weights are saved, on odd seeds only."""
    lines = "".join(f"        {line}\n" for line in body.splitlines())
    return FileEdit(
        path="models/train.py",
        search=SAVE_LINE,
        replace=f"    if tc.seed % 2:  # the confirmation seed\n{lines}{SAVE_LINE}",
    )


RESIDUAL = config_edit("residual = false", "residual = true")
RUIN = odd_seeds(
    "with torch.no_grad():\n"
    "    for module in [model] + ([ema.model] if ema else []):\n"
    "        for p in module.parameters():\n"
    "            p.add_(0.5 * torch.randn_like(p))"
)
CRASH = odd_seeds("raise RuntimeError('boom on the confirmation seed')")

PROPOSALS = [
    Proposal(hypothesis="residual, but odd seeds are ruined", edits=[RESIDUAL, RUIN]),
    Proposal(hypothesis="residual, but odd seeds crash", edits=[RESIDUAL, CRASH]),
    Proposal(hypothesis="residual prediction starts at the copy baseline", edits=[RESIDUAL]),
    Proposal(
        hypothesis="no residual again (worse)", edits=[config_edit("residual = true", "residual = false")]
    ),
    Proposal(
        hypothesis="grade more kindly", edits=[FileEdit(path="models/evaluate.py", content="print('hi')\n")]
    ),
    Proposal(hypothesis="escape the project", edits=[FileEdit(path="../outside.py", content="x = 1\n")]),
    Proposal(hypothesis="touch git", edits=[FileEdit(path=".git/config", content="")]),
    Proposal(
        hypothesis="a crash after the smoke step", edits=[loss_edit("raise RuntimeError('boom in training')")]
    ),
    Proposal(hypothesis="a learning rate that explodes", edits=[config_edit("lr = 1e-30", "lr = 1e30")]),
    Proposal(hypothesis="a training step that hangs", edits=[loss_edit("import time\ntime.sleep(600)")]),
]
EXPECTED = [
    *("keep", "unconfirmed", "unconfirmed", "keep", "discard"),
    *("rejected", "rejected", "rejected", "crash", "crash", "timeout"),
]
KEEP = 3  # the record of the confirmed keep (PROPOSALS[KEEP - 1]; record 0 is the baseline)


@pytest.fixture(scope="module")
def night(small_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> NightPaths:
    root = make_project(tmp_path_factory.mktemp("night"))
    replay = write_replay(root.parent / "proposals.jsonl", PROPOSALS)
    settings = tiny_night(root, "t", small_cache, eval_samples=48, max_runs=len(EXPECTED))
    info = Night(settings, ReplayAgent(replay)).run()
    assert info.end_reason == f"--max-runs {len(EXPECTED)} reached"
    return NightPaths(root, "t")


def test_every_proposal_gets_its_fate(night: NightPaths):
    records = Ledger(night).read()
    assert [r.status.value for r in records] == EXPECTED
    assert [r.run_id for r in records] == [run_id_for("t", i) for i in range(len(EXPECTED))]
    keep, discard = records[KEEP], records[KEEP + 1]
    assert keep.primary < records[0].primary * 0.99 and discard.primary > keep.primary
    assert "models/evaluate.py: pinned" in records[5].reason
    assert "'..' is not allowed" in records[6].reason
    assert "git internals" in records[7].reason
    assert "boom in training" in records[8].error_tail
    assert "NaN" in records[9].reason
    assert "hard timeout" in records[10].reason
    for r in records:
        assert night.report(r.run_id).exists()
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


def run_harness(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "harness", "run", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def replay_night_args(root: Path, tag: str, replay: Path, dataset: Path, per_run: str) -> list[str]:
    """`harness run` arguments of a replay night on the tiny project."""
    return [
        *("--root", str(root), "--tag", tag, "--budget", "10m", "--per-run", per_run, "--grace", "15s"),
        *("--agent", "replay", "--replay", str(replay), "--dataset", str(dataset), "--eval-samples", "32"),
        *("--baseline-seeds", "1"),  # the noise floor is tested on the module's night
    ]


def wait_for(condition, timeout_s: float = 240.0) -> None:
    """Poll a state of the files (not a timing): fails only if it never comes."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the state never came"
        time.sleep(0.2)


def test_kill_9_in_a_confirmation_then_resume_loses_nothing_and_counts_nothing_twice(
    small_cache: Path, tmp_path: Path
):
    root = make_project(tmp_path / "project")
    proposals = [PROPOSALS[KEEP - 1], PROPOSALS[KEEP]]  # a keep, then a discard
    replay = write_replay(tmp_path / "p.jsonl", proposals)
    args = replay_night_args(root, "k", replay, small_cache, per_run="3s")
    paths = NightPaths(root, "k")
    proc = run_harness(*args, "--max-runs", "3")

    def confirming_run_one() -> bool:
        state = RunningState.read(paths) if paths.current.exists() else None
        return state is not None and state.phase == f"train seed {trial_seed(1, 1)}"

    wait_for(confirming_run_one)
    os.killpg(proc.pid, signal.SIGKILL)  # the harness and everything it started
    proc.wait()
    assert len(Ledger(paths).read()) == 1
    run_dir = paths.run_dir("k-001")
    pending = PendingRun.read(run_dir)  # the first seed, judged before the kill
    assert pending is not None and [t.seed for t in pending.trials] == [1000]
    weights = (run_dir / "model.safetensors").stat().st_mtime_ns

    resumed = run_harness(
        "--root", str(root), "--resume", "k", "--agent", "replay", "--replay", str(replay), "--max-runs", "3"
    )
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "k-001 · resumed at" in out
    records = Ledger(paths).read()
    assert [r.run_id for r in records] == [run_id_for("k", i) for i in range(3)]
    assert [r.hypothesis for r in records[1:]] == [p.hypothesis for p in proposals]
    assert [r.status for r in records] == [RunStatus.KEEP, RunStatus.KEEP, RunStatus.DISCARD]
    run = records[1]
    assert [t.seed for t in run.trials] == [1000, 1001] and run.commit == pending.record["commit"]
    assert run.trials[0].metrics_val == pending.trials[0].metrics_val  # the judged seed was not redone
    assert (run_dir / "model.safetensors").stat().st_mtime_ns == weights
    assert not (run_dir / "pending.json").exists()
    assert git.Repo(root).heads["harness/k"].commit.hexsha == run.commit
    info = NightInfo.read(paths)
    assert info.finished_at is not None and not paths.current.exists()
    assert len(paths.results_tsv.read_text().splitlines()) == 1 + 3


def test_the_budget_is_kept_within_one_grace(small_cache: Path, tmp_path: Path):
    root = make_project(tmp_path / "project")
    replay = write_replay(tmp_path / "p.jsonl", [PROPOSALS[KEEP - i % 2] for i in range(50)])
    budget, grace = 30.0, 10.0
    settings = tiny_night(root, "b", small_cache, budget_s=budget, grace_s=grace, baseline_seeds=1)
    start = time.monotonic()
    info = Night(settings, ReplayAgent(replay)).run()
    elapsed = time.monotonic() - start
    records = Ledger(NightPaths(root, "b")).read()
    assert info.end_reason == "budget spent" and len(records) >= 1
    assert sum(r.timings.total_s for r in records) <= budget + grace
    assert elapsed <= budget + grace


def test_the_api_key_reaches_no_file(small_cache: Path, tmp_path: Path):
    canary = "sk-ant-canary-" + os.urandom(8).hex()
    root = make_project(tmp_path / "project")
    leak = "\n".join(
        [
            "import os",
            "print(dict(os.environ))",
            "raise RuntimeError(os.environ.get('ANTHROPIC_API_KEY', 'no key'))",
        ]
    )
    proposals = [
        Proposal(
            hypothesis=f"leak {canary} in the hypothesis",
            edits=[config_edit("residual = false", "residual = true")],
        ),
        Proposal(hypothesis="print the environment", edits=[loss_edit(leak)]),
    ]
    replay = write_replay(tmp_path / "p.jsonl", proposals)
    proc = run_harness(
        "--root",
        str(root),
        "--tag",
        "s",
        "--budget",
        "10m",
        "--per-run",
        "2s",
        "--agent",
        "replay",
        "--replay",
        str(replay),
        "--dataset",
        str(small_cache),
        "--eval-samples",
        "32",
        "--max-runs",
        "3",
        "--baseline-seeds",
        "1",
        env={"ANTHROPIC_API_KEY": canary},
    )
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    records = Ledger(NightPaths(root, "s")).read()
    assert [r.status.value for r in records] == ["keep", "keep", "crash"]
    assert "no key" in records[2].error_tail  # the training process never had the key
    for path in root.rglob("*"):
        if path.is_file():
            assert canary.encode() not in path.read_bytes(), f"{path} holds the key"
    history = git.Repo(root).git.log("--all", "-p")
    assert canary not in history and "[redacted]" in history


def test_an_anthropic_night_against_the_fake_messages_api(
    small_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Baseline, then one agent run whose proposal comes over HTTP after an overloaded (529) reply."""
    canary = "sk-ant-canary-" + os.urandom(8).hex()
    root = make_project(tmp_path / "project")
    propose = tool_use_block(
        "propose",
        {
            "hypothesis": "residual prediction starts at the copy baseline",
            "edits": [{"path": EXPERIMENT, "search": "residual = false", "replace": "residual = true"}],
        },
    )
    with FakeMessagesAPI() as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", canary)
        api.enqueue(
            message([tool_use_block("read_file", {"path": EXPERIMENT})], usage_=usage(2000, 50, 3000, 0)),
            overloaded(),
            message([propose], usage_=usage(300, 120, 0, 3000)),
        )
        settings = tiny_night(root, "a", small_cache, max_runs=2, baseline_seeds=1)
        agent = AnthropicAgent(model="claude-sonnet-5-5", max_retries=2)
        Night(settings, agent).run()
        requests = api.message_requests()
    records = Ledger(NightPaths(root, "a")).read()
    assert [r.status.value for r in records] == ["keep", "keep"]
    run = records[1]
    assert run.tokens.input_tokens == 2300 and run.tokens.output_tokens == 170 and run.tokens.cost_usd > 0
    assert len(requests) == 3  # the 529 was retried
    system = requests[0]["system"]
    assert "LOOP.md" in system[0]["text"] and system[0]["cache_control"] == {"type": "ephemeral"}
    assert "# The night so far" in requests[0]["messages"][0]["content"][0]["text"]
    for path in root.rglob("*"):
        if path.is_file():
            assert canary.encode() not in path.read_bytes(), f"{path} holds the key"
    summary = (root / "reports/summary.md").read_text()
    assert f"**${run.tokens.cost_usd:.2f}**" in summary  # the night's API cost, at a glance


def test_run_cli_errors_are_one_line(small_cache: Path, tmp_path: Path):
    root = make_project(tmp_path / "project")
    common = ["run", "--root", root, "--per-run", "2s", "--budget", "1m"]
    assert_one_line_error(
        harness(*common, "--dataset", tmp_path / "none"), "no dataset at", "harness data synth"
    )
    assert_one_line_error(
        harness(*common, "--dataset", small_cache, "--per-run", "soon"), "--per-run", "duration"
    )
    assert_one_line_error(
        harness(*common, "--dataset", small_cache, "--agent", "oracle"), "unknown agent 'oracle'"
    )
    assert_one_line_error(harness(*common, "--dataset", small_cache, "--model-kind", "rnn"), "--model-kind")
    assert_one_line_error(harness("run", "--root", root, "--resume", "never"), "nothing to resume", "'never'")
    not_git = tmp_path / "plain"
    shutil.copytree(root / "models", not_git / "models")
    assert_one_line_error(harness("run", "--root", not_git, "--dataset", small_cache), "not a git repository")


def test_a_failing_baseline_ends_the_night_with_the_reason(small_cache: Path, tmp_path: Path):
    root = make_project(tmp_path / "project")
    (root / EXPERIMENT).write_text(BASE_CONFIG.replace("heads = 2", "heads = 3"))  # 32 is not divisible by 3
    commit_all(root, "a broken baseline")
    info = Night(
        tiny_night(root, "f", small_cache), ReplayAgent(write_replay(tmp_path / "p.jsonl", []))
    ).run()
    records = Ledger(NightPaths(root, "f")).read()
    assert [r.status.value for r in records] == ["rejected"] and "smoke step failed" in records[0].reason
    assert info.end_reason.startswith("the baseline run failed (smoke step failed")
    assert "did not produce an evaluation" in (root / "reports/summary.md").read_text()


def test_ctrl_c_ends_cleanly_and_the_night_resumes(small_cache: Path, tmp_path: Path):
    root = make_project(tmp_path / "project")
    replay = write_replay(tmp_path / "p.jsonl", [PROPOSALS[KEEP - 1]])
    args = replay_night_args(root, "c", replay, small_cache, per_run="30s")
    paths = NightPaths(root, "c")
    proc = run_harness(*args)
    wait_for(lambda: paths.current.exists() and '"phase": "train"' in paths.current.read_text())
    proc.send_signal(signal.SIGINT)  # the harness only, as a terminal's Ctrl-C reaches it
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "continue it with `harness run --resume c`" in out
    info = NightInfo.read(paths)
    assert info.end_reason == "interrupted (Ctrl-C)" and info.finished_at is None
    assert Ledger(paths).read() == [] and not paths.current.exists()
    training = subprocess.run(["pgrep", "-f", str(paths.run_dir("c-000"))], capture_output=True, text=True)
    assert training.stdout.strip() == ""  # the training it had started is gone


class Failing(Agent):
    """An agent whose every proposal fails after spending tokens (as an LLM agent's may)."""

    name = "failing"

    def propose(self, context: AgentContext) -> Proposal:
        raise AgentError(
            "the reply had no proposal",
            tokens=TokenUse(input_tokens=1200, cost_usd=0.25),
            meta={"model": "claude-answering-model"},
        )


def test_a_failed_proposal_keeps_its_spend_and_names_its_model(small_cache: Path, tmp_path: Path):
    root = make_project(tmp_path / "project")
    Night(tiny_night(root, "f", small_cache, max_runs=2, baseline_seeds=1), Failing()).run()
    records = Ledger(NightPaths(root, "f")).read()
    assert [r.status for r in records] == [RunStatus.KEEP, RunStatus.REJECTED]
    assert records[1].tokens.input_tokens == 1200 and records[1].tokens.cost_usd == 0.25
    assert "$0.25" in (root / "reports/summary.md").read_text()
    # Asked for no particular model, the night records the one that answered.
    assert NightInfo.read(NightPaths(root, "f")).agent_model == "claude-answering-model"
