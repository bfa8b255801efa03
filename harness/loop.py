"""The night: propose, commit, smoke, train, judge, keep or discard, report; until the budget ends.

Everything a run produces is written before its ledger line, and the ledger line is the commit point: a
kill -9 at any moment loses at most the run in flight, which `--resume` runs again under the same id. The
budget is a promise: a run starts only when its estimated time fits in what is left, and a run that goes
past its own budget plus grace is killed, so the night ends at most one grace period late.
"""

from __future__ import annotations

import shutil
import signal
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from harness import reports
from harness.agents.base import Agent, AgentContext, AgentError, AgentExhausted, Proposal
from harness.executor import Executor, StepResult
from harness.files import atomic_write_text
from harness.judge import GUARD_TOLERANCE, NOISE_MARGIN, decide
from harness.ledger import (
    FAILED,
    Ledger,
    LedgerError,
    NightInfo,
    RunningState,
    RunRecord,
    RunStatus,
    Timings,
    baseline_run,
    best_run,
    leaderboard,
    now,
)
from harness.paths import NightPaths, run_id_for
from harness.workspace import ALLOWED_TEXT, ProposalRejected, Workspace
from models.config import ExperimentConfig
from models.data import build_cache
from models.errors import WorldloopError

LOOP_FILE = "LOOP.md"
EXPERIMENTS = {"dit": "experiments/dit.toml", "gpt": "experiments/gpt.toml"}
FEEDBACK_RUNS = 3  # latest runs shown to the agent in detail
MAX_AGENT_FAILURES = 3  # consecutive agent errors that end the night

DEFAULT_ESTIMATES = {"smoke_s": 5.0, "startup_s": 10.0, "overhead_s": 5.0}
"""Guesses for the first run's phases; after that the night uses what it measured."""


def model_kind(experiment: Path) -> str:
    """The `[model] kind` of an experiment TOML, read without validating the rest.

    The rest is the agent's business: it may have added fields that only the worktree's `models/config.py`
    knows, so the full check is the smoke step, which runs that code.
    """
    try:
        raw = tomllib.loads(Path(experiment).read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ProposalRejected(f"{experiment.name}: cannot read it ({err})") from None
    return str(raw.get("model", {}).get("kind", "dit"))


def task_config(experiment: Path) -> ExperimentConfig:
    """The task part of an experiment (its [canvas] and [data] sections, pinned for the night)."""
    try:
        raw = tomllib.loads(Path(experiment).read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise WorldloopError(f"{experiment}: cannot read the experiment config ({err})") from None
    return ExperimentConfig.model_validate({k: raw[k] for k in ("canvas", "data") if k in raw})


def default_grace(per_run_s: float) -> float:
    """Time past the training budget before a run is killed: startup, saving, the val loss."""
    return 30.0 + 0.1 * per_run_s


@dataclass
class NightSettings:
    root: Path
    tag: str
    budget_s: float
    per_run_s: float
    dataset: Path
    model_kinds: tuple[str, ...] = ("dit",)
    grace_s: float | None = None
    max_runs: int | None = None
    eval_samples: int = 512
    resume: bool = False

    @property
    def grace(self) -> float:
        return default_grace(self.per_run_s) if self.grace_s is None else self.grace_s

    @property
    def experiment(self) -> str:
        return EXPERIMENTS[self.model_kinds[0]]


@dataclass
class PromptState:
    """What the propose template shows (prompts/propose.md.j2)."""

    tag: str
    index: int
    remaining_s: float
    per_run_s: float
    model_kinds: tuple[str, ...]
    experiment: str
    experiment_text: str
    best: RunRecord | None
    baseline: RunRecord | None
    board: list[RunRecord]
    tried: list[RunRecord]
    feedback: list[str]

    @property
    def keep_below(self) -> float | None:
        return (
            None if self.best is None or self.best.primary is None else self.best.primary * (1 - NOISE_MARGIN)
        )

    @property
    def guard_floor(self) -> float | None:
        return None if self.best is None or self.best.guard is None else self.best.guard - GUARD_TOLERANCE


@dataclass
class RunOutcome:
    """A run as it goes: filled in phase by phase, then frozen into a RunRecord."""

    run_id: str
    index: int
    started: float = field(default_factory=time.monotonic)
    started_at: object = field(default_factory=now)
    timings: Timings = field(default_factory=Timings)


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C until the block is done: a ledger line and the git state it describes go together."""
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt


class NightEnded(Exception):
    """Raised inside the loop to stop it, with the reason the summary shows."""


class Night:
    """One night of one tag: owns the workspace, the executor and the ledger."""

    def __init__(self, settings: NightSettings, agent: Agent, console: Console | None = None) -> None:
        self.s = settings
        self.agent = agent
        self.console = console or Console()
        self.paths = NightPaths(Path(settings.root).resolve(), settings.tag)
        self.ledger = Ledger(self.paths)
        self.info: NightInfo | None = None
        self.workspace: Workspace | None = None
        self.executor: Executor | None = None
        self.deadline = 0.0
        self.agent_failures = 0
        self._status = None  # the live line of a terminal, while a subprocess runs
        self._label = ""

    # ------------------------------------------------------------------------------------ setup

    def _start(self) -> None:
        s, paths = self.s, self.paths
        worktree = paths.runs / "worktree"
        existing = NightInfo.read(paths)
        if s.resume:
            if existing is None:
                raise LedgerError(f"nothing to resume: no night tagged {s.tag!r} under {paths.runs.parent}")
            self.info = existing.model_copy(update={"finished_at": None, "end_reason": None})
            self.workspace = Workspace.open(paths.root, s.tag, worktree)
        else:
            if existing is not None or paths.ledger.exists():
                raise LedgerError(f"night {s.tag!r} exists already: continue it with --resume {s.tag}")
            self.workspace = Workspace.create(paths.root, s.tag, worktree)
            if self.workspace.uncommitted_in_project():
                self.console.print(
                    "[yellow]note:[/yellow] uncommitted changes under models/ or experiments/ are not "
                    "part of the night: it starts from the last commit"
                )
            self.info = NightInfo(
                tag=s.tag,
                budget_s=s.budget_s,
                per_run_s=s.per_run_s,
                agent=self.agent.name,
                agent_model=self.agent.model,
                model_kind="+".join(s.model_kinds),
                base_commit=self.workspace.head,
                branch=self.workspace.branch,
                dataset=str(s.dataset),
            )
        self.info.write(paths)
        records = self.ledger.read()
        self._restore(records)
        used = sum(r.timings.total_s for r in records)
        self.deadline = time.monotonic() + max(0.0, self.info.budget_s - used)
        self.executor = Executor(self.workspace.path, s.dataset, on_tick=self._tick)
        for kind in s.model_kinds:
            task = task_config(self.workspace.path / EXPERIMENTS[kind])
            build_cache(s.dataset, task.canvas, task.data.split())

    def _restore(self, records: list[RunRecord]) -> None:
        """After a kill: the branch back at the best commit, the run in flight forgotten (it runs again)."""
        best = best_run(records)
        target = best.commit if best and best.commit else self.info.base_commit
        if self.workspace.head != target or self.workspace.repo.is_dirty(untracked_files=True):
            if self.workspace.head != target and records:
                self.workspace.set_aside(
                    f"{run_id_for(self.s.tag, len(records))}-interrupted", self.workspace.head
                )
            self.workspace.reset(target)
        self.paths.current.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------- the loop

    def run(self) -> NightInfo:
        """Run the night to its end; returns its NightInfo (with end_reason)."""
        self._start()
        reason = "budget spent"
        try:
            while True:
                records = self.ledger.read()
                if self.s.max_runs is not None and len(records) >= self.s.max_runs:
                    reason = f"--max-runs {self.s.max_runs} reached"
                    break
                if not self._fits(records):
                    break
                with self._spinner():
                    self._one_run(records)
                if not records:  # that was the baseline: every later run is judged against it
                    baseline = self.ledger.read()[0]
                    if baseline.status != RunStatus.KEEP:
                        raise NightEnded(
                            f"the baseline run failed ({baseline.reason}); fix it before a night"
                        )
        except NightEnded as end:
            reason = str(end)
        except KeyboardInterrupt:
            reason = "interrupted (Ctrl-C)"
            self._finish(reason, finished=False)
            raise
        self._finish(reason, finished=True)
        return self.info

    def _finish(self, reason: str, finished: bool) -> None:
        self.paths.current.unlink(missing_ok=True)
        self.info.end_reason = reason
        self.info.finished_at = now() if finished else None
        self.info.write(self.paths)
        summary = reports.render_summary(self.paths)
        self.console.print(f"[bold]night {self.s.tag} ended:[/bold] {reason}. Summary: {summary}")
        if not finished:
            self.console.print(f"continue it with `harness run --resume {self.s.tag}`")

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def _estimate(self, records: list[RunRecord]) -> float:
        """Seconds the next run will take: the measured phases of earlier runs, or guesses at first."""

        def typical(values: list[float], default: float) -> float:
            return max(values[-5:]) if values else default

        trained = [r for r in records if r.timings.train_s > 0 and r.status not in FAILED]
        startup = [max(0.0, r.timings.train_s - self.s.per_run_s) for r in trained]
        agent = [r.timings.agent_s for r in records if not r.is_baseline]
        eval_s = [r.timings.eval_s for r in records if r.timings.eval_s > 0]
        overhead = [r.timings.overhead_s for r in records]
        d = DEFAULT_ESTIMATES
        return (
            (0.0 if not records else typical(agent, self.agent.typical_s))
            + typical(overhead, d["overhead_s"] + d["smoke_s"])
            + self.s.per_run_s
            + typical(startup, d["startup_s"])
            + typical(eval_s, 5.0 + 0.03 * self.s.eval_samples)  # about 20 s for the judge's 512 samples
        )

    def _fits(self, records: list[RunRecord]) -> bool:
        need, left = self._estimate(records), self.remaining()
        if need > left:
            self.console.print(
                f"[yellow]{reports.fmt_duration(left)} left, a run needs about {reports.fmt_duration(need)}: "
                "stopping here[/yellow]"
            )
            return False
        return True

    # -------------------------------------------------------------------------------------- one run

    def _one_run(self, records: list[RunRecord]) -> None:
        index = len(records)
        run = RunOutcome(run_id_for(self.s.tag, index), index)
        run_dir = self.paths.run_dir(run.run_id)
        if run_dir.exists():
            shutil.rmtree(run_dir)  # a run killed before its ledger line: it starts over
        run_dir.mkdir(parents=True)
        best = best_run(records)
        best_commit = best.commit if best and best.commit else self.info.base_commit
        self._announce(run, best)

        proposal = self._propose(run, records, run_dir)
        if proposal is None:
            return
        experiment = proposal.experiment or self.s.experiment
        record = dict(
            run_id=run.run_id,
            index=index,
            tag=self.s.tag,
            parent=best.run_id if best else None,
            hypothesis=proposal.hypothesis,
            rationale=proposal.rationale,
            experiment=experiment,
            tokens=proposal.tokens,
            agent_meta=proposal.meta,
            started_at=run.started_at,
        )
        # ---- apply, check, commit, smoke
        self._phase(run, "validate", proposal.hypothesis)
        try:
            commit_sha, diff_stat = self._commit(proposal, run, run_dir, experiment, best_commit)
        except ProposalRejected as rejection:
            self.workspace.reset(best_commit)
            self._record(
                run, record, status=RunStatus.REJECTED, reason=str(rejection), error_tail=str(rejection)
            )
            return
        record.update(commit=commit_sha, diff_stat=diff_stat, model_kind=self._kind(experiment))
        smoke = self.executor.smoke(experiment, run_dir / "smoke.log")
        if not smoke.ok:
            self._set_aside(run, commit_sha, best_commit)
            self._record(
                run,
                record,
                status=RunStatus.REJECTED,
                reason=f"smoke step failed: {smoke.reason}",
                error_tail=smoke.tail,
            )
            return
        # ---- train
        self._phase(run, "train", proposal.hypothesis)
        trained = self.executor.train(experiment, run_dir, self.s.per_run_s, self.s.grace)
        run.timings.train_s = trained.seconds
        if not trained.ok:
            self._fail(run, record, trained, commit_sha, best_commit)
            return
        # ---- judge
        self._phase(run, "eval", proposal.hypothesis)
        judged, metrics = self.executor.evaluate(run_dir, "val", self.s.eval_samples, self._eval_timeout())
        run.timings.eval_s += judged.seconds
        if metrics is None:
            self._fail(run, record, judged, commit_sha, best_commit)
            return
        decision = decide(metrics, best.metrics_val if best else None, best.run_id if best else None)
        test = None
        if decision.keep:
            tested, test = self.executor.evaluate(run_dir, "test", self.s.eval_samples, self._eval_timeout())
            run.timings.eval_s += tested.seconds
        else:
            self._set_aside(run, commit_sha, best_commit)
        self._record(
            run,
            record,
            status=RunStatus.KEEP if decision.keep else RunStatus.DISCARD,
            reason=decision.reason,
            metrics_val=metrics,
            metrics_test=test,
        )

    def _propose(self, run: RunOutcome, records: list[RunRecord], run_dir: Path) -> Proposal | None:
        if run.index == 0:
            return Proposal(
                hypothesis="baseline: the code and configs of the night's base commit, unchanged",
                rationale="Every later run is judged against the best run, starting from this one.",
            )
        self._phase(run, "agent", "")
        context = self._context(run, records, run_dir)
        start = time.monotonic()
        try:
            proposal = self.agent.propose(context)
            self.agent_failures = 0
            return proposal
        except AgentExhausted as done:
            raise NightEnded(f"the agent has nothing more to propose ({done})") from None
        except AgentError as err:
            self.agent_failures += 1
            run.timings.agent_s = time.monotonic() - start
            record = dict(run_id=run.run_id, index=run.index, tag=self.s.tag, hypothesis="(no proposal)")
            self._record(
                run, record, status=RunStatus.REJECTED, reason=f"agent error: {err}", error_tail=str(err)
            )
            if self.agent_failures >= MAX_AGENT_FAILURES:
                raise NightEnded(f"the agent failed {self.agent_failures} times in a row: {err}") from None
            return None
        finally:
            run.timings.agent_s = time.monotonic() - start

    def _commit(
        self, proposal: Proposal, run: RunOutcome, run_dir: Path, experiment: str, best_commit: str
    ) -> tuple[str, str]:
        """Apply and check the proposal, then commit it; the baseline is the base commit itself."""
        if run.index == 0:
            return self.workspace.head, ""
        try:
            changed = self.workspace.apply(proposal)
            self.workspace.check(changed, base_commit=self.info.base_commit)
            if not experiment.startswith("experiments/") or not (self.workspace.path / experiment).is_file():
                raise ProposalRejected(f"experiment config {experiment} does not exist in experiments/")
            self._kind(experiment)
            message = proposal.hypothesis.strip() + (
                "\n\n" + proposal.rationale.strip() if proposal.rationale else ""
            )
            commit = self.workspace.commit(message + f"\n\nworldloop run {run.run_id}")
        except ProposalRejected:
            diff, _ = self.workspace.diff_of_worktree()
            if diff:
                atomic_write_text(run_dir / reports.PROPOSAL_DIFF, diff + "\n")
            raise
        atomic_write_text(run_dir / reports.PROPOSAL_DIFF, commit.diff + "\n")
        return commit.sha, commit.diff_stat

    def _kind(self, experiment: str) -> str:
        kind = model_kind(self.workspace.path / experiment)
        if kind not in self.s.model_kinds:
            raise ProposalRejected(
                f"{experiment} trains a {kind}; this night trains {', '.join(self.s.model_kinds)}"
            )
        return kind

    def _eval_timeout(self) -> float:
        return max(120.0, 0.5 * self.s.per_run_s)

    def _fail(self, run: RunOutcome, record: dict, step: StepResult, sha: str, best_commit: str) -> None:
        self._set_aside(run, sha, best_commit)
        self._record(run, record, status=step.status, reason=step.reason, error_tail=step.tail)

    def _set_aside(self, run: RunOutcome, sha: str | None, best_commit: str) -> None:
        if run.index > 0:
            self.workspace.set_aside(run.run_id, sha)
            self.workspace.reset(best_commit)

    def _record(self, run: RunOutcome, record: dict, **fields: object) -> None:
        """Write the run's report, then its ledger line (the commit point), then the summary."""
        self._phase(run, "report", str(record.get("hypothesis", "")))
        final = RunRecord(**{**record, **fields}, timings=run.timings, finished_at=now())
        records = [*self.ledger.read(), final]
        reports.render_run(self.paths, final, records)
        t = run.timings
        t.overhead_s = max(0.0, time.monotonic() - run.started - t.agent_s - t.train_s - t.eval_s)
        final = final.model_copy(update={"timings": t, "finished_at": now()})
        with deferred_interrupt():
            self.ledger.append(final)
        reports.render_summary(self.paths)
        self._report_result(final)

    # ------------------------------------------------------------------------------------ the agent

    def _context(self, run: RunOutcome, records: list[RunRecord], run_dir: Path) -> AgentContext:
        best, baseline = best_run(records), baseline_run(records)
        experiment = self.s.experiment
        feedback = [
            reports.feedback(self.paths, r, records, root=self.paths.root) for r in records[-FEEDBACK_RUNS:]
        ]
        state = PromptState(
            tag=self.s.tag,
            index=run.index,
            remaining_s=max(0.0, self.remaining()),
            per_run_s=self.s.per_run_s,
            model_kinds=self.s.model_kinds,
            experiment=experiment,
            experiment_text=(self.workspace.path / experiment).read_text(),
            best=best,
            baseline=baseline,
            board=leaderboard(records, top=10),
            tried=records,
            feedback=feedback,
        )
        loop_file = self.workspace.path / LOOP_FILE
        loop_text = loop_file.read_text() if loop_file.exists() else ""
        prompt = reports.render_template("propose.md.j2", s=state)
        atomic_write_text(run_dir / "prompt.md", f"{loop_text}\n\n{prompt}")
        return AgentContext(
            run_id=run.run_id,
            index=run.index,
            workspace=self.workspace.path,
            run_dir=run_dir,
            prompt=prompt,
            history=records,
            experiment=experiment,
            model_kinds=self.s.model_kinds,
            per_run_s=self.s.per_run_s,
            remaining_s=max(0.0, self.remaining()),
            allowed=ALLOWED_TEXT,
            rules=loop_text,
        )

    # ------------------------------------------------------------------------------------ progress

    def _phase(self, run: RunOutcome, phase: str, hypothesis: str) -> None:
        state = RunningState(run_id=run.run_id, phase=phase, hypothesis=hypothesis, started_at=run.started_at)
        state.write(self.paths)
        self._label = run.run_id
        if phase != "report":
            self.console.print(
                f"  {run.run_id} · {phase}"
                + (f" · {reports.one_line(hypothesis, 90)}" if phase == "validate" else "")
            )

    @contextmanager
    def _spinner(self) -> Iterator[None]:
        """A live line under the log while a subprocess runs (terminals only: logs stay clean)."""
        if not self.console.is_terminal:
            yield
            return
        with self.console.status("") as status:
            self._status = status
            try:
                yield
            finally:
                self._status = None

    def _tick(self, what: str, elapsed: float) -> None:
        if self._status is not None:
            left = reports.fmt_duration(max(0.0, self.remaining()))
            self._status.update(
                f"{self._label} · {what} {reports.fmt_duration(elapsed)} · {left} of the night left"
            )

    def _announce(self, run: RunOutcome, best: RunRecord | None) -> None:
        left = reports.fmt_duration(max(0.0, self.remaining()))
        total = reports.fmt_duration(self.info.budget_s)
        best_text = (
            f"best {best.primary:.6g} ({best.run_id})" if best and best.primary is not None else "no best yet"
        )
        self.console.print(f"[bold]run {run.run_id}[/bold] · {left} of {total} left · {best_text}")

    def _report_result(self, record: RunRecord) -> None:
        colors = {"keep": "green", "discard": "white", "crash": "red", "timeout": "red", "rejected": "yellow"}
        color = colors[record.status.value]
        mse = f" · val mse {record.primary:.6g}" if record.primary is not None else ""
        self.console.print(
            f"  [{color}]{record.status.value}[/{color}]{mse} · {reports.one_line(record.reason, 120)}"
        )
