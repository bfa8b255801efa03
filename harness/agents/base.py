"""What every agent gets and gives: `propose(AgentContext) -> Proposal`.

An agent never touches git, the ledger or the budget. It reads the context (the rendered prompt, the night's
history, a read-only view of the worktree) and returns a hypothesis plus file edits; the workspace decides
whether the edits are allowed, applies them and commits them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.ledger import MemoryEdit, RunRecord, TokenUse
from models.errors import WorldloopError


class AgentError(WorldloopError):
    """The agent could not produce a usable proposal (API failure after retries, malformed reply...).

    A failed attempt may still have cost money: `tokens` is what it spent before failing (zero when nothing
    was spent or the agent cannot know) and `meta` what the agent knows about it (model, turns, session), so
    the ledger keeps a failed proposal's spend as it keeps a successful one's `Proposal.tokens` and `.meta`.
    """

    def __init__(
        self, message: str, *, tokens: TokenUse | None = None, meta: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.tokens = tokens if tokens is not None else TokenUse()
        self.meta: dict[str, Any] = dict(meta or {})


class AgentExhausted(AgentError):
    """The agent has nothing more to propose (a replay file ran out): the night ends cleanly."""


class FileEdit(BaseModel):
    """One change to one file, relative to the project root (posix separators).

    Either a whole-file write (`content`) or a search/replace block (`search` must occur exactly once in the
    current file; `replace` takes its place). `delete` removes the file.
    """

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1)
    content: str | None = None
    search: str | None = None
    replace: str | None = None
    delete: bool = False

    @model_validator(mode="after")
    def _one_mode(self) -> FileEdit:
        modes = [self.content is not None, self.search is not None, self.delete]
        if sum(modes) != 1:
            raise ValueError("an edit is exactly one of: content (whole file), search + replace, or delete")
        if self.search is not None and self.replace is None:
            raise ValueError("a search block needs its replace text (use an empty string to delete it)")
        if self.search == "":
            raise ValueError("search text must not be empty")
        return self


class Proposal(BaseModel):
    """One idea to try: what and why, the edits, and which experiment config to train."""

    model_config = ConfigDict(extra="forbid")

    hypothesis: str = Field(min_length=1, description="One sentence: what changes and what it should do.")
    rationale: str = ""
    edits: list[FileEdit] = Field(default_factory=list)
    experiment: str | None = Field(
        None, description="Experiment TOML to train, relative to the project (default: the night's own)."
    )
    memory: list[MemoryEdit] = Field(
        default_factory=list,
        description="Edits of the night's research memory: notes to add (bounded), earlier notes to forget.",
    )
    revisit: str | None = Field(
        None, description="The run id of a near-miss or an idea whose premise changed that this retries once."
    )
    tokens: TokenUse = Field(default_factory=TokenUse)
    meta: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Agent data kept in the ledger, JSON-serializable (e.g. the local agent's params). An LLM agent "
            "puts the model that actually answered under `model`, which may differ from `Agent.model` (an "
            "alias, or None when the CLI picked its own default)."
        ),
    )


@dataclass(frozen=True)
class InFlight:
    """A run proposed earlier and not judged yet: an agent should not propose the same idea again."""

    run_id: str
    hypothesis: str
    meta: dict[str, Any]  # what its agent attached to the proposal (the offline agent: its params)


@dataclass
class AgentContext:
    """What an agent sees before proposing run `run_id`."""

    run_id: str
    index: int
    workspace: Path  # a copy of the best commit's files: read files here, never write
    run_dir: Path  # runs/<tag>/<run-id>/: the agent may keep its transcript here (never a secret)
    prompt: str  # the night so far (prompts/propose.md.j2): leaderboard, last reports, failures, best config
    history: list[RunRecord]  # every finished run of the night, in order
    experiment: str  # the default experiment config for this run, relative to the workspace
    model_kinds: tuple[str, ...]  # kinds the night may train: ("dit",), ("gpt",) or ("dit", "gpt")
    per_run_s: float
    remaining_s: float
    allowed: str  # the allowlist in words, for prompts and error messages
    rules: str = ""  # LOOP.md: the same all night, so an LLM agent can cache it across runs
    extra: dict[str, Any] = field(default_factory=dict)
    in_flight: list[InFlight] = field(default_factory=list)  # runs training now (parallel nights)
    earlier: list[RunRecord] = field(default_factory=list)  # the runs of the nights this one continues


class Agent(ABC):
    """Proposes one experiment at a time."""

    name: str = "agent"
    model: str | None = (
        None  # the LLM asked for, when there is one; the one that answered is in Proposal.meta
    )
    typical_s: float = 30.0  # a guess at one proposal's time, for budgeting until the night has measured it
    concurrent: bool = False  # may `propose` run in several threads at once (a parallel night asks ahead)?

    @abstractmethod
    def propose(self, context: AgentContext) -> Proposal: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the agent holds (HTTP clients, subprocesses)."""
