"""The replay agent: recorded proposals in order, resumed at the right line, errors that name file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.agents.base import AgentContext, AgentError, AgentExhausted, FileEdit, Proposal
from harness.agents.replay import ReplayAgent, read_replay, write_replay
from harness.ledger import RunRecord, RunStatus, TokenUse
from tests.helpers import agent_context

PROPOSALS = [
    Proposal(
        hypothesis="Raise the learning rate to 2e-3",
        rationale="the loss was still falling fast at the end",
        edits=[FileEdit(path="experiments/dit.toml", search="lr = 1e-3", replace="lr = 2e-3")],
        tokens=TokenUse(input_tokens=10, output_tokens=5, cost_usd=0.01),
        meta={"note": 1},
    ),
    Proposal(
        hypothesis="Try the GPT",
        edits=[FileEdit(path="models/notes.md", content="# notes\n")],
        experiment="experiments/gpt.toml",
    ),
    Proposal(hypothesis="Delete the notes", edits=[FileEdit(path="models/notes.md", delete=True)]),
]


def record(index: int, status: RunStatus = RunStatus.DISCARD) -> RunRecord:
    return RunRecord(run_id=f"r{index:03d}", index=index, tag="t", hypothesis="h", status=status)


def context(tmp_path: Path, history: list[RunRecord]) -> AgentContext:
    return agent_context(tmp_path, history, run_dir=tmp_path / "run")


def test_proposals_come_back_in_order_then_the_agent_is_exhausted(tmp_path: Path):
    agent = ReplayAgent(write_replay(tmp_path / "night.jsonl", PROPOSALS))
    assert agent.name == "replay" and agent.model is None
    history = [record(0, RunStatus.KEEP)]
    for expected in PROPOSALS:
        assert agent.propose(context(tmp_path, history)) == expected
        history.append(record(len(history), RunStatus.REJECTED))  # a rejected run used its proposal too
    with pytest.raises(AgentExhausted, match=r"night.jsonl: all 3 recorded proposals have been used"):
        agent.propose(context(tmp_path, history))


def test_a_resumed_night_picks_up_at_the_right_line(tmp_path: Path):
    path = write_replay(tmp_path / "night.jsonl", PROPOSALS)
    history = [record(0, RunStatus.KEEP), record(1), record(2, RunStatus.CRASH)]
    assert ReplayAgent(path).propose(context(tmp_path, history)) == PROPOSALS[2]
    assert ReplayAgent(path).propose(context(tmp_path, history[:1])) == PROPOSALS[0]
    assert ReplayAgent(path).propose(context(tmp_path, [])) == PROPOSALS[0]


def test_run_i_gets_line_i_whatever_order_runs_in_flight_finish_in(tmp_path: Path):
    """A parallel night asks for runs 2 and 3 while run 1 still trains, and records them as they finish."""
    path = write_replay(tmp_path / "night.jsonl", PROPOSALS)
    agent = ReplayAgent(path)
    baseline = [record(0, RunStatus.KEEP)]
    assert [agent.propose(agent_context(tmp_path, baseline, index=i)) for i in (3, 1, 2)] == [
        PROPOSALS[2],
        PROPOSALS[0],
        PROPOSALS[1],
    ]


def test_a_proposal_handed_out_is_a_copy(tmp_path: Path):
    agent = ReplayAgent(write_replay(tmp_path / "night.jsonl", PROPOSALS))
    agent.propose(context(tmp_path, [record(0)])).meta["note"] = 2
    assert agent.propose(context(tmp_path, [record(0)])).meta == {"note": 1}


def test_blank_lines_are_skipped(tmp_path: Path):
    path = tmp_path / "night.jsonl"
    path.write_text("\n" + PROPOSALS[0].model_dump_json() + "\n\n  \n" + PROPOSALS[1].model_dump_json())
    assert read_replay(path) == PROPOSALS[:2]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", r"night.jsonl:3: not a proposal \(line: Invalid JSON"),
        ('{"rationale": "no hypothesis"}', r"night.jsonl:3: not a proposal \(hypothesis: Field required\)"),
        ('{"hypothesis": "h", "extra": 1}', r"night.jsonl:3: not a proposal \(extra: Extra inputs"),
        (
            '{"hypothesis": "h", "edits": [{"path": "a.py"}]}',
            r"night.jsonl:3: not a proposal \(edits.0: Value error, an edit is exactly one of",
        ),
    ],
)
def test_a_bad_line_is_named_by_file_and_line(tmp_path: Path, bad: str, message: str):
    path = tmp_path / "night.jsonl"
    path.write_text(PROPOSALS[0].model_dump_json() + "\n\n" + bad + "\n")
    with pytest.raises(AgentError, match=message) as caught:
        ReplayAgent(path)
    assert str(caught.value).startswith(f"{path}:3: ")


def test_a_missing_file_is_an_agent_error(tmp_path: Path):
    with pytest.raises(AgentError, match=r"missing.jsonl: no such replay file"):
        ReplayAgent(tmp_path / "missing.jsonl")
