"""The replay agent: proposals read from a recorded file, one `Proposal` JSON object per line.

For tests and demos that must not depend on a model, a network or a sampler: the same file gives the same
night. The agent keeps no position of its own: run i (after the baseline, run 0) gets line i, whatever order
runs in flight side by side finish in, and a resumed night picks up at the right line (a run killed before
it was committed is proposed again under its id, as the loop expects).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydantic import ValidationError

from harness.agents.base import Agent, AgentContext, AgentError, AgentExhausted, Proposal
from harness.durable import atomic_write_text


class ReplayAgent(Agent):
    """Replays the proposals of a JSONL file in order; AgentExhausted once they are all used."""

    name = "replay"
    typical_s = 0.1

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.proposals = read_replay(self.path)  # read now: a bad file fails the night at its start

    def propose(self, context: AgentContext) -> Proposal:
        line = max(context.index, 1) - 1  # run 0, the baseline, never asks the agent
        if line >= len(self.proposals):
            raise AgentExhausted(f"{self.path}: all {len(self.proposals)} recorded proposals have been used")
        return self.proposals[line].model_copy(deep=True)


def read_replay(path: Path) -> list[Proposal]:
    """Every proposal of a replay file; blank lines are skipped, a bad line is an AgentError at file:line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise AgentError(f"{path}: no such replay file") from None
    proposals = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            proposals.append(Proposal.model_validate_json(line))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "line"
            raise AgentError(f"{path}:{number}: not a proposal ({where}: {first['msg']})") from None
    return proposals


def write_replay(path: Path, proposals: Iterable[Proposal]) -> Path:
    """Record proposals as a replay file (one JSON object per line), atomically."""
    return atomic_write_text(Path(path), "".join(p.model_dump_json() + "\n" for p in proposals))
