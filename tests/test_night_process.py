"""The loop as a process: kill -9 and resume (in the middle of a confirmation), Ctrl-C, the budget kept,
an anthropic night over HTTP that leaves its API key in no file, a failing baseline, a failed proposal's
spend, the CLI's one-line errors. Real `harness run` subprocesses on the tiny project of
tests/night_project.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import git

from harness.agents.base import Agent, AgentContext, AgentError, FileEdit, Proposal
from harness.agents.replay import ReplayAgent, write_replay
from harness.ledger import Ledger, NightActivity, NightInfo, PendingRun, RunStatus, TokenUse
from harness.loop import Night, trial_seed
from harness.paths import NightPaths, run_id_for
from tests.fake_messages_api import FakeMessagesAPI, message, overloaded, tool_use_block, usage
from tests.helpers import assert_one_line_error, harness, processes_using, wait_for
from tests.night_project import (
    BASE_CONFIG,
    EXPERIMENT,
    KEEP,
    PROPOSALS,
    commit_all,
    config_edit,
    loss_edit,
    make_project,
    replay_night_args,
    run_harness,
    tiny_night,
)
from tests.test_parallel import ALL_CORES


def test_kill_9_in_a_confirmation_then_resume_loses_nothing_and_counts_nothing_twice(
    small_cache: Path, tmp_path: Path
):
    root = make_project(tmp_path / "project")
    proposals = [PROPOSALS[KEEP - 1]]
    replay = write_replay(tmp_path / "p.jsonl", proposals)
    args = replay_night_args(root, "k", replay, small_cache, per_run="1s")
    paths = NightPaths(root, "k")
    proc = run_harness(*args, "--max-runs", "2")

    def confirming_run_one() -> bool:
        activity = NightActivity.read(paths) if paths.current.exists() else None
        state = activity.run("k-001") if activity is not None else None
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
        "--root", str(root), "--resume", "k", "--agent", "replay", "--replay", str(replay), "--max-runs", "2"
    )
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "k-001 · resumed at" in out
    records = Ledger(paths).read()
    assert [r.run_id for r in records] == [run_id_for("k", i) for i in range(2)]
    assert [r.hypothesis for r in records[1:]] == [p.hypothesis for p in proposals]
    assert [r.status for r in records] == [RunStatus.KEEP, RunStatus.KEEP]
    run = records[1]
    assert [t.seed for t in run.trials] == [1000, 1001] and run.commit == pending.record["commit"]
    assert run.trials[0].metrics_val == pending.trials[0].metrics_val  # the judged seed was not redone
    assert (run_dir / "model.safetensors").stat().st_mtime_ns == weights
    assert not (run_dir / "pending.json").exists()
    assert git.Repo(root).heads["harness/k"].commit.hexsha == run.commit
    info = NightInfo.read(paths)
    assert info.finished_at is not None and not paths.current.exists()
    assert len(paths.results_tsv.read_text().splitlines()) == 1 + 2


class Thinking(ReplayAgent):
    """A replay agent that thinks `seconds` of wall time, sleeping, before each proposal (as an LLM's reply
    takes seconds): the night's clock runs while the machine does no work."""

    def __init__(self, path: Path, seconds: float) -> None:
        super().__init__(path)
        self.seconds = seconds

    def propose(self, context: AgentContext) -> Proposal:
        time.sleep(self.seconds)
        return super().propose(context)


def test_the_budget_is_kept_within_one_grace(small_cache: Path, tmp_path: Path):
    """The budget ends while runs are in flight or being proposed; the night stops within one grace. The
    agent thinks 8 s a proposal: a night of tiny runs otherwise trains one after another for the whole
    budget (17 runs in 30 s, ~50 CPU-s), where three show the same (16-20 CPU-s; 24-25 at 3 s)."""
    root = make_project(tmp_path / "project")
    learns_nothing = [  # each trained (a repeat would be sent back, not trained), none kept
        Proposal(hypothesis=f"lr {i + 2}e-30", edits=[config_edit("lr = 1e-30", f"lr = {i + 2}e-30")])
        for i in range(50)
    ]
    replay = write_replay(tmp_path / "p.jsonl", learns_nothing)
    budget, grace = 30.0, 10.0
    settings = tiny_night(root, "b", small_cache, budget_s=budget, grace_s=grace, baseline_seeds=1)
    start = time.monotonic()
    info = Night(settings, Thinking(replay, seconds=8.0)).run()
    elapsed = time.monotonic() - start
    records = Ledger(NightPaths(root, "b")).read()
    assert info.end_reason == "budget spent" and len(records) >= 1
    assert sum(r.timings.total_s for r in records) <= budget + grace
    assert elapsed <= budget + grace


def test_an_anthropic_night_over_http_leaves_the_api_key_in_no_file(small_cache: Path, tmp_path: Path):
    """`harness run --agent anthropic` against the fake Messages API with a canary key: a proposal comes
    after an overloaded (529) reply; the agent writes the key into a hypothesis, and a training prints its
    environment. The key reaches no training, file, commit or line of output. While the night runs, the
    researcher steers it (`harness steer`): the note reaches the very next prompt sent to the API, beside
    the standing GUIDANCE.md every prompt carries, and the ledger and summary say which runs saw it."""
    canary = "sk-ant-canary-" + os.urandom(8).hex()
    root = make_project(tmp_path / "project")
    (root / "GUIDANCE.md").write_text("Keep each change small enough to explain in one sentence.\n")
    steered = threading.Event()  # run 1's first request waits for the note (its prompt is already sent)
    leak = (
        "import os\nprint(dict(os.environ))\nraise RuntimeError(os.environ.get('ANTHROPIC_API_KEY', 'none'))"
    )

    def propose(hypothesis: str, edit: FileEdit) -> dict:
        return tool_use_block(
            "propose", {"hypothesis": hypothesis, "edits": [edit.model_dump(exclude_none=True)]}
        )

    with FakeMessagesAPI() as api:
        first = message([tool_use_block("read_file", {"path": EXPERIMENT})], usage_=usage(2000, 50, 3000, 0))
        api.enqueue(
            dataclasses.replace(first, gate=steered),
            overloaded(),
            message(  # learns nothing either: discarded
                [propose(f"leak {canary} in the hypothesis", config_edit("lr = 1e-30", "lr = 2e-30"))],
                usage_=usage(300, 120, 0, 3000),
            ),
            message([propose("print the environment", loss_edit(leak))], usage_=usage(400, 80, 0, 3000)),
        )
        proc = run_harness(
            *("--root", str(root), "--tag", "a", "--budget", "10m", "--per-run", "1s", "--grace", "15s"),
            *("--agent", "anthropic", "--model", "claude-sonnet-5-5", "--dataset", str(small_cache)),
            *("--eval-samples", "32", "--max-runs", "3", "--baseline-seeds", "1"),
            env={"ANTHROPIC_API_KEY": canary, "ANTHROPIC_BASE_URL": api.url},
        )
        wait_for(lambda: api.message_requests() or proc.poll() is not None)
        sent = harness("steer", "Try the learning rate next.", "--root", root, "--tag", "a")
        steered.set()
        out, _ = proc.communicate(timeout=300)
        requests = api.message_requests()
    assert sent.returncode == 0 and "note S1 for night a" in sent.stdout, sent.stderr
    assert proc.returncode == 0, out
    records = Ledger(NightPaths(root, "a")).read()
    assert [r.status.value for r in records] == ["keep", "discard", "crash"]
    prompts = [r["messages"][0]["content"][0]["text"] for r in requests]
    assert all("Keep each change small enough" in p for p in prompts)
    assert "Try the learning rate next." not in prompts[0] and "S1, " in prompts[3]  # the very next prompt
    guidance = next(s for s in records[1].steering if s.startswith("GUIDANCE.md@"))
    assert records[1].steering == [guidance] and records[2].steering == ["S1", guidance]
    steering = (root / "reports/summary.md").read_text().split("## Steering")[1]
    assert "S1: Try the learning rate next." in steering and "1 run saw it, from [a-002]" in steering
    run = records[1]
    assert run.tokens.input_tokens == 2300 and run.tokens.output_tokens == 170 and run.tokens.cost_usd > 0
    assert len(requests) == 4  # the 529 was retried
    system = requests[0]["system"]
    assert "LOOP.md" in system[0]["text"] and system[0]["cache_control"] == {"type": "ephemeral"}
    assert "# The night so far" in requests[0]["messages"][0]["content"][0]["text"]
    assert "RuntimeError: none" in records[2].error_tail  # the training process never had the key
    assert canary not in out
    for path in root.rglob("*"):
        if path.is_file():
            assert canary.encode() not in path.read_bytes(), f"{path} holds the key"
    history = git.Repo(root).git.log("--all", "-p")
    assert canary not in history and "[redacted]" in history
    cost = sum(r.tokens.cost_usd for r in records)
    assert (
        f"**${cost:.2f}**" in (root / "reports/summary.md").read_text()
    )  # the night's API cost, at a glance


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
    assert_one_line_error(
        harness(*common, "--dataset", small_cache, "--storage", tmp_path), "--storage is for --executor ray"
    )
    assert_one_line_error(
        harness(*common, "--dataset", small_cache, "--executor", "ray", "--storage", tmp_path / "nfs"),
        f"--storage {tmp_path / 'nfs'}: no such directory",
    )
    for experiment, words in (
        ("experiments/nope.toml", ["--experiment experiments/nope.toml", "no such file"]),
        ("models/dit.py", ["under experiments/"]),
    ):
        assert_one_line_error(harness(*common, "--dataset", small_cache, "--experiment", experiment), *words)
    assert_one_line_error(
        harness(*common, "--dataset", small_cache, "--experiment", EXPERIMENT, "--model-kind", "gpt"),
        "trains a dit; --model-kind says gpt",
    )
    (root / "experiments/later.toml").write_text(BASE_CONFIG)
    assert_one_line_error(
        harness(*common, "--dataset", small_cache, "--experiment", "experiments/later.toml", "--tag", "u"),
        "experiments/later.toml is not committed",
    )
    assert not (root / "runs" / "u").exists()  # said before the night was created
    assert_one_line_error(harness("run", "--root", root, "--resume", "never"), "nothing to resume", "'never'")
    not_git = tmp_path / "plain"
    shutil.copytree(root / "models", not_git / "models")
    assert_one_line_error(harness("run", "--root", not_git, "--dataset", small_cache), "not a git repository")


def test_a_night_on_another_experiment_trains_it_and_is_judged_on_its_task(small_cache: Path, tmp_path: Path):
    """`--experiment experiments/small.toml` (16 px frames where experiments/dit.toml has 32): the baseline
    trains it and the judge scores it on its canvas (on dit.toml's, it would refuse the checkpoint); runs
    change it, and a change of its [canvas] is refused against it."""
    root = make_project(tmp_path / "project")
    small = "experiments/small.toml"
    (root / small).write_text(BASE_CONFIG.replace("frame_width = 32", "frame_width = 16"))
    commit_all(root, "a smaller canvas")
    proposals = [
        Proposal(hypothesis="lr halved", edits=[FileEdit(path=small, search="1e-30", replace="5e-31")]),
        Proposal(hypothesis="wider frames", edits=[FileEdit(path=small, search="= 16", replace="= 24")]),
    ]
    settings = tiny_night(root, "x", small_cache, max_runs=3, experiment=small)
    Night(settings, ReplayAgent(write_replay(tmp_path / "p.jsonl", proposals))).run()
    paths = NightPaths(root, "x")
    baseline, lower, wider = Ledger(paths).read()
    assert NightInfo.read(paths).experiment == small
    assert baseline.status == RunStatus.KEEP and baseline.metrics_val["mse"] > 0
    assert json.loads((paths.run_dir("x-000") / "config.json").read_text())["canvas"]["frame_width"] == 16
    assert lower.experiment == small and lower.status == RunStatus.DISCARD
    assert wider.status == RunStatus.REJECTED and f"must stay as in {small}" in wider.reason


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


def test_ctrl_c_with_two_runs_in_flight_ends_them_and_leaves_the_ledger_whole(
    small_cache: Path, tmp_path: Path
):
    """Ctrl-C while both workers train (the baseline's two seeds): both trainings end, nothing half-decided
    reaches the ledger, and the night says how to continue (one worker takes the same path: it is the
    same workers' cancel, with one job in flight)."""
    root = make_project(tmp_path / "project")
    replay = write_replay(tmp_path / "p.jsonl", [PROPOSALS[KEEP - 1]])
    args = replay_night_args(root, "c", replay, small_cache, per_run="30s")
    paths = NightPaths(root, "c")
    proc = run_harness(*args, "--baseline-seeds", "2", "--workers", "2", cores=ALL_CORES)
    wait_for(lambda: len(processes_using(paths.run_dir("c-000"))) == 2)  # both trainings, writing their logs
    proc.send_signal(signal.SIGINT)  # the harness only, as a terminal's Ctrl-C reaches it
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "continue it with `harness run --resume c`" in out
    info = NightInfo.read(paths)
    assert info.end_reason == "interrupted (Ctrl-C)" and info.finished_at is None
    assert Ledger(paths).read() == [] and not paths.current.exists()
    assert processes_using(paths.run_dir("c-000")) == []  # the trainings it had started are gone


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
