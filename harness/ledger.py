"""The night's ledger: one RunRecord per experiment, appended to `runs/<tag>/ledger.jsonl`.

The ledger is the source of truth for reports, the summary, `harness status` and `--resume`. It is written
one fsynced line at a time; a line torn by a kill is dropped on read and cut before the next append, so a
crash loses at most the record being written. `results.tsv` mirrors it in the format autoresearch users know.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.durable import append_line, atomic_write_text
from harness.judge import GUARD_METRIC, PRIMARY_METRIC, Metrics, NoiseFloor, noise_floor, value
from harness.paths import NightPaths, night_tags
from models.errors import WorldloopError


class LedgerError(WorldloopError):
    """A ledger that cannot be read, or a run id that is not in it."""


def now() -> datetime:
    return datetime.now(UTC)


class RunStatus(StrEnum):
    KEEP = "keep"  # better than the best by the margin, confirmed by a second seed: the branch advanced
    DISCARD = "discard"  # trained and judged, not better: the branch was reset
    UNCONFIRMED = "unconfirmed"  # its first seed cleared the bar, the mean with a second did not: reset
    CRASH = "crash"  # training or evaluation failed (exception, NaN, bad exit)
    TIMEOUT = "timeout"  # killed at the hard timeout
    REJECTED = "rejected"  # never trained: outside the allowlist, did not apply, compile or smoke-train
    LOST = "lost"  # its worker (a process, a node) died twice under it: never judged


EVALUATED = (RunStatus.KEEP, RunStatus.DISCARD, RunStatus.UNCONFIRMED)
FAILED = (RunStatus.CRASH, RunStatus.TIMEOUT, RunStatus.REJECTED, RunStatus.LOST)


class Timings(BaseModel):
    """Seconds of wall clock spent on one run, by who spent them."""

    model_config = ConfigDict(extra="forbid")

    agent_s: float = 0.0
    train_s: float = 0.0  # the first seed's training
    eval_s: float = 0.0  # the first seed's judging (val, and test for a kept run)
    confirm_s: float = 0.0  # more seeds of the same code: the baseline's noise floor and confirmations
    overhead_s: float = 0.0  # everything else: git, validation, smoke step, reports, ledger

    @property
    def total_s(self) -> float:
        return self.agent_s + self.train_s + self.eval_s + self.confirm_s + self.overhead_s

    def __add__(self, other: Timings) -> Timings:
        return Timings(**{k: getattr(self, k) + getattr(other, k) for k in Timings.model_fields})


class TokenUse(BaseModel):
    """What the agent's proposal cost (zero for the offline agents)."""

    model_config = ConfigDict(extra="forbid")

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: TokenUse) -> TokenUse:
        return TokenUse(**{k: getattr(self, k) + getattr(other, k) for k in TokenUse.model_fields})


class Trial(BaseModel):
    """One training of a run's commit with one seed, and its judgement.

    A run has one trial, or several: the baseline trains on `--baseline-seeds` seeds (the noise floor), and
    a candidate that clears the bar is trained again with another seed before it is kept.
    """

    model_config = ConfigDict(extra="forbid")

    seed: int
    directory: str  # relative to runs/<tag>/
    ok: bool = True  # trained and judged
    status: RunStatus | None = None  # CRASH or TIMEOUT when not ok
    reason: str = ""
    metrics_val: Metrics = Field(default_factory=dict)
    metrics_test: Metrics | None = None
    train: dict[str, Any] = Field(default_factory=dict)  # what training reported (metrics.json)
    cpu_s: float | None = None  # CPU time of the training process, measured by the harness
    train_s: float = 0.0  # wall clock of training and judging
    eval_s: float = 0.0
    worker: str = ""  # the worker it trained on (w0, w1, ... or a Ray node)
    started_at: datetime | None = None  # when its worker started it

    @property
    def primary(self) -> float | None:
        return value(self.metrics_val, PRIMARY_METRIC) if self.ok else None


MemorySection = Literal["principle", "dead end", "question"]


class MemoryEdit(BaseModel):
    """An agent's edit of the night's research memory (harness/memory.py), sent with a proposal and kept in
    its run's record: `add` a note to a `section`, or `forget` an earlier note by its id ("N3")."""

    model_config = ConfigDict(extra="forbid")

    add: str | None = None
    section: MemorySection = "principle"
    forget: str | None = None

    @model_validator(mode="after")
    def _one(self) -> MemoryEdit:
        if (self.add is None) == (self.forget is None):
            raise ValueError(
                "a memory edit is exactly one of: add (a note, in its section) or forget (an id)"
            )
        if self.add is not None and not self.add.strip():
            raise ValueError("a memory note must not be empty")
        return self


class RunRecord(BaseModel):
    """One experiment of the night, as the ledger keeps it."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    index: int = Field(ge=0)  # 0 is the night's baseline
    tag: str
    parent: str | None = None  # the run whose code this one started from (the best at the time)
    commit: str | None = None  # None when the proposal never became a commit
    model_kind: str | None = None
    experiment: str | None = None  # the experiment config it trained, relative to the project
    hypothesis: str
    rationale: str = ""
    diff_stat: str = ""
    status: RunStatus
    reason: str = ""  # why it was kept, discarded, or failed, in one line
    metrics_val: Metrics = Field(default_factory=dict)  # the mean over its judged seeds
    metrics_test: Metrics | None = None
    trials: list[Trial] = Field(default_factory=list)  # one per seed trained, in order
    noise: NoiseFloor | None = None  # the noise floor its decision used
    timings: Timings = Field(default_factory=Timings)
    tokens: TokenUse = Field(default_factory=TokenUse)
    agent_meta: dict[str, Any] = Field(default_factory=dict)  # what the agent wants back (e.g. its params)
    memory: list[MemoryEdit] = Field(default_factory=list)  # the agent's edits of the research memory
    steering: list[str] = Field(default_factory=list)  # what its prompt showed: notes S1.., GUIDANCE.md@v
    novelty: float | None = None  # 1 - its similarity to the closest earlier proposal (harness/novelty.py)
    similar_to: str | None = None  # that closest earlier run
    sent_back: str | None = None  # why its first proposal was sent back to the agent (a near-duplicate)
    revisit_of: str | None = None  # the earlier run it retries on purpose (harness/plateau.py)
    error_tail: str | None = None
    started_at: datetime = Field(default_factory=now)
    finished_at: datetime = Field(default_factory=now)

    @property
    def is_baseline(self) -> bool:
        return self.index == 0

    @property
    def primary(self) -> float | None:
        """Val value of the primary metric; None for runs without an evaluation."""
        return value(self.metrics_val, PRIMARY_METRIC) if self.status in EVALUATED else None

    @property
    def guard(self) -> float | None:
        return value(self.metrics_val, GUARD_METRIC) if self.status in EVALUATED else None

    @property
    def seed_metrics(self) -> list[Metrics]:
        """Val metrics of each judged seed: a group of same-code runs for the noise floor."""
        return [t.metrics_val for t in self.trials if t.ok and t.metrics_val]

    @property
    def short_commit(self) -> str:
        return self.commit[:7] if self.commit else "-"

    @property
    def title(self) -> str:
        """The hypothesis on one line, for tables and plots."""
        return " ".join(self.hypothesis.split())


class NightInfo(BaseModel):
    """A night's settings, written when it starts (and updated when it ends): `runs/<tag>/night.json`."""

    model_config = ConfigDict(extra="forbid")

    tag: str
    started_at: datetime = Field(default_factory=now)
    finished_at: datetime | None = None
    end_reason: str | None = None
    budget_s: float
    per_run_s: float
    agent: str
    agent_model: str | None = None
    model_kind: str = "dit"
    baseline_seeds: int = 2
    base_commit: str | None = None
    branch: str | None = None
    dataset: str | None = None
    workers: int = 1  # runs in flight at once
    executor: str = "local"
    spent_s: float | None = None  # wall clock of the budget spent so far (None: an older night's file)
    experiment: str | None = None  # `--experiment`: its kind's config in place of experiments/<kind>.toml
    continues: str | None = None  # `--continue`: the night whose best run this one started from
    plateau_after: int | None = (
        None  # `--plateau`: runs without a keep that make a plateau (else its default)
    )

    def experiment_of(self, kind: str) -> str:
        """The experiment config a model kind trains with by default this night, and whose task (canvas,
        data) its runs are judged on: `--experiment` for the night's one kind, else the kind's default."""
        from models.task import default_experiment  # not at import: it loads the dataset code (0.3 s)

        return self.experiment if self.experiment and self.model_kind == kind else default_experiment(kind)

    def write(self, paths: NightPaths) -> None:
        atomic_write_text(paths.night, self.model_dump_json(indent=2) + "\n")

    @classmethod
    def read(cls, paths: NightPaths) -> NightInfo | None:
        return _read_model(cls, paths.night)


class RunningState(BaseModel):
    """One run in flight and its phase."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    phase: str  # agent | validate | smoke | train | eval | train seed N | eval test | report
    hypothesis: str = ""
    started_at: datetime = Field(default_factory=now)
    phase_started_at: datetime = Field(default_factory=now)


class NightActivity(BaseModel):
    """What the loop is doing right now: `runs/<tag>/current.json`, rewritten at each phase change, with
    every run in flight (one per worker, and those waiting for the agent or a worker)."""

    model_config = ConfigDict(extra="forbid")

    runs: list[RunningState] = Field(default_factory=list)
    pid: int = Field(default_factory=os.getpid)

    def write(self, paths: NightPaths) -> None:
        atomic_write_text(paths.current, self.model_dump_json(indent=2) + "\n")

    @classmethod
    def read(cls, paths: NightPaths) -> NightActivity | None:
        return _read_model(cls, paths.current)

    def run(self, run_id: str) -> RunningState | None:
        return next((r for r in self.runs if r.run_id == run_id), None)

    def alive(self) -> bool:
        """Is the loop that wrote this still running? (A kill -9 leaves the file behind.)"""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class PendingRun(BaseModel):
    """A run between its commit and its ledger line: `runs/<tag>/<run-id>/pending.json`.

    Rewritten after each judged seed, so that `--resume` after a kill in the middle of a confirmation (or of
    the baseline's second seed) goes on from the commit and the seeds already judged instead of training
    them again. A run killed before its first seed was judged starts over, as before.
    """

    model_config = ConfigDict(extra="forbid")

    record: dict[str, Any]  # the RunRecord fields known so far (JSON form)
    trials: list[Trial] = Field(default_factory=list)
    timings: Timings = Field(default_factory=Timings)

    def write(self, run_dir: Path) -> None:
        atomic_write_text(Path(run_dir) / PENDING_FILE, self.model_dump_json(indent=2) + "\n")

    @classmethod
    def read(cls, run_dir: Path) -> PendingRun | None:
        return _read_model(cls, Path(run_dir) / PENDING_FILE)


PENDING_FILE = "pending.json"

M = TypeVar("M", bound=BaseModel)


def _read_model(cls: type[M], path: Path) -> M | None:
    if not path.exists():
        return None
    try:
        return cls.model_validate_json(path.read_text())
    except ValidationError as err:
        raise LedgerError(f"{path} is not a valid {cls.__name__}: {err.errors()[0]['msg']}") from None


class Ledger:
    """The append-only record of one night."""

    def __init__(self, paths: NightPaths) -> None:
        self.paths = paths

    @property
    def path(self) -> Path:
        return self.paths.ledger

    def read(self) -> list[RunRecord]:
        """Every complete record, in order. A torn last line (a killed write) is skipped."""
        if not self.path.exists():
            return []
        # What follows the last newline is empty, or a line whose append was killed: never committed.
        complete = self.path.read_bytes().split(b"\n")[:-1]
        records: list[RunRecord] = []
        for number, line in enumerate(complete, start=1):
            if not line.strip():
                continue
            try:
                records.append(RunRecord.model_validate_json(line))
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "line"
                raise LedgerError(
                    f"{self.path}:{number}: not a run record ({where}: {first['msg']})"
                ) from None
        return records

    def append(self, record: RunRecord) -> None:
        """Add a record (refusing a run id already in the ledger), then refresh results.tsv."""
        records = self.read()
        if any(r.run_id == record.run_id for r in records):
            raise LedgerError(f"{record.run_id} is already in {self.path}")
        append_line(self.path, record.model_dump_json())
        self.write_results_tsv([*records, record])

    def write_results_tsv(self, records: list[RunRecord] | None = None) -> Path:
        """`run_id commit mse cf_acc status description`, tab-separated, one row per record."""
        rows = ["\t".join(["run_id", "commit", PRIMARY_METRIC, GUARD_METRIC, "status", "description"])]
        for r in self.read() if records is None else records:
            mse, guard = r.primary, r.guard
            rows.append(
                "\t".join(
                    [
                        r.run_id,
                        r.short_commit,
                        f"{mse:.6g}" if mse is not None else "",
                        f"{guard:.4f}" if guard is not None else "",
                        r.status.value,
                        r.title.replace("\t", " "),
                    ]
                )
            )
        return atomic_write_text(self.paths.results_tsv, "\n".join(rows) + "\n")


# --------------------------------------------------------------------------------------- reading a night


def best_run(records: list[RunRecord]) -> RunRecord | None:
    """The run to promote: the kept run with the lowest val primary metric (the earliest on a tie)."""
    kept = [r for r in records if r.status == RunStatus.KEEP and r.primary is not None]
    return min(kept, key=lambda r: (r.primary, r.index)) if kept else None


def night_noise(records: list[RunRecord]) -> NoiseFloor:
    """The night's noise floor: the spread of its baseline's seeds.

    Only the baseline's: its seeds are trained before anything is judged, while a confirmation pair is
    chosen by its first seed (an unconfirmed pair for disagreeing, a confirmed one for agreeing), so pooling
    those would bias the floor, and one seed-unstable idea would widen the margin for every later run.
    """
    baseline = baseline_run(records)
    return noise_floor([baseline.seed_metrics] if baseline and baseline.status in EVALUATED else [])


def baseline_run(records: list[RunRecord]) -> RunRecord | None:
    return next((r for r in records if r.is_baseline), None)


def leaderboard(records: list[RunRecord], top: int = 10) -> list[RunRecord]:
    """Judged runs (kept and discarded) by val primary metric, best first; ties go to the earlier run."""
    judged = [r for r in records if r.primary is not None]
    return sorted(judged, key=lambda r: (r.primary, r.index))[:top]


def best_before(records: list[RunRecord], record: RunRecord) -> RunRecord | None:
    """The best run at the time `record` was judged: what it had to beat (the ledger lists runs in the
    order they were decided, which a parallel night does not run in index order)."""
    position = next((i for i, r in enumerate(records) if r.run_id == record.run_id), len(records))
    return best_run(records[:position])


def find_run(root: Path, run_id: str) -> tuple[NightPaths, RunRecord]:
    """Look a run id up in every night's ledger; an unknown id lists the known ones."""
    known: list[str] = []
    for tag in night_tags(root):
        paths = NightPaths(root, tag)
        for record in Ledger(paths).read():
            if record.run_id == run_id:
                return paths, record
            known.append(record.run_id)
    if not known:
        raise LedgerError(f"unknown run {run_id!r}: there are no runs under {Path(root) / 'runs'}")
    shown = ", ".join(known[-20:]) + (f" (and {len(known) - 20} older)" if len(known) > 20 else "")
    raise LedgerError(f"unknown run {run_id!r}; known runs: {shown}")


def load_metrics(path: Path) -> Metrics | None:
    """An `eval_<split>.json`, or None when the run has not been evaluated on that split."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise LedgerError(f"{path}: not valid JSON ({err.msg})") from None
