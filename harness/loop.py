"""The night: propose, commit, smoke, train, judge, keep or discard, report; until the budget ends.

Everything a run produces is written before its ledger line, and the ledger line is the commit point: a
kill -9 at any moment loses at most the run in flight, which `--resume` runs again under the same id. The
budget is a promise: a run starts only when its estimated time fits in what is left, and a run that goes
past its own budget plus grace is killed, so the night ends at most one grace period late.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pydantic_core import to_jsonable_python
from rich.console import Console

from harness import reports
from harness.agents.base import Agent, AgentContext, AgentError, AgentExhausted, Proposal
from harness.durable import atomic_write_text
from harness.executor import Executor, StepResult
from harness.judge import NoiseFloor, decide, mean_metrics, noise_floor
from harness.ledger import (
    PENDING_FILE,
    Ledger,
    LedgerError,
    NightInfo,
    PendingRun,
    RunningState,
    RunRecord,
    RunStatus,
    Timings,
    Trial,
    baseline_run,
    best_run,
    leaderboard,
    night_noise,
    now,
)
from harness.paths import NightPaths, run_id_for
from harness.pinned import ALLOWED_TEXT, extract_judge
from harness.secrets import RedactingStream
from harness.workspace import ProposalRejected, Workspace
from models.data import build_cache
from models.files import read_toml
from models.task import default_experiment, load_task

LOOP_FILE = "LOOP.md"
EXPERIMENTS = {kind: default_experiment(kind) for kind in ("dit", "gpt")}
"""Each model kind's default experiment; its task, as at the night's base, is what the kind is judged on."""
FEEDBACK_RUNS = 3  # latest runs shown to the agent in detail
MAX_AGENT_FAILURES = 3  # consecutive agent errors that end the night

DEFAULT_ESTIMATES = {"smoke_s": 5.0, "startup_s": 10.0, "overhead_s": 5.0}
"""Guesses for the first run's phases; after that the night uses what it measured."""

EVAL_TIMEOUT_S = 600.0
"""Wall clock allowed to one judging (val or test) before it counts as a timeout. Judging is outside the
budget and only a hung model should ever reach this: the baseline DiT's val judging took 101 s at one
thread beside three busy programs, and a wider, deeper candidate 150 s on a quiet machine, so the old
limit (120 s at 2m per run) failed good runs on a busy machine."""

TRAIN_SLACK = 3.0
"""A run's budget is the compute it gets (CPU time on CPU), so a run slowed by other programs takes longer in
wall time; it is killed only past this many budgets of wall time plus the grace (or at the night's end)."""


TRAIN_KEYS = (
    "samples",
    "steps",
    "clock",
    "cpu_seconds",
    "wall_seconds",
    "threads",
    "samples_per_s",
    "others_cores",
    "load_start",
    "load_end",
    "seed",
)
"""What a trial keeps of its training's metrics.json: enough to see at a glance that two seeds got the same
compute, and what else the machine was doing."""


def train_summary(directory: Path) -> dict:
    """The TRAIN_KEYS of a run directory's metrics.json (written by the run's own training code, so only
    shown, never judged); empty when training wrote none."""
    try:
        written = json.loads((directory / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: written[k] for k in TRAIN_KEYS if k in written} if isinstance(written, dict) else {}


def trial_seed(index: int, trial: int) -> int:
    """The training seed of a run's trial: distinct for every training of the night, fixed for --resume.
    The baseline's seeds are 0, 1, ...; the harness, not the experiment config, chooses seeds (a lucky
    seed is not an idea)."""
    return index * 1000 + trial


def model_kind(experiment: Path) -> str:
    """The `[model] kind` of an experiment TOML, read without validating the rest.

    The rest is the agent's business: it may have added fields that only the worktree's `models/config.py`
    knows, so the full check is the smoke step, which runs that code.
    """
    raw = read_toml(experiment, ProposalRejected)
    return str(raw.get("model", {}).get("kind", "dit"))


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
    baseline_seeds: int = 2
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
    noise: NoiseFloor

    @property
    def keep_below(self) -> float | None:
        return (
            None
            if self.best is None or self.best.primary is None
            else self.best.primary * (1 - self.noise.margin)
        )

    @property
    def guard_floor(self) -> float | None:
        return (
            None
            if self.best is None or self.best.guard is None
            else self.best.guard - self.noise.guard_tolerance
        )


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


def _typical(values: list[float], default: float) -> float:
    """What a phase takes, for the budget: the longest of its last five measurements (a guess before)."""
    return max(values[-5:]) if values else default


class NightEnded(Exception):
    """Raised inside the loop to stop it, with the reason the summary shows."""


class Night:
    """One night of one tag: owns the workspace, the executor and the ledger."""

    def __init__(self, settings: NightSettings, agent: Agent, console: Console | None = None) -> None:
        self.settings = settings
        self.agent = agent
        self.console = console or Console(file=RedactingStream(sys.stdout))
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
        s, paths = self.settings, self.paths
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
                baseline_seeds=s.baseline_seeds,
                base_commit=self.workspace.head,
                branch=self.workspace.branch,
                dataset=str(s.dataset),
            )
        self.info.write(paths)
        records = self.ledger.read()
        self._restore(records)
        used = sum(r.timings.total_s for r in records)
        self.deadline = time.monotonic() + max(0.0, self.info.budget_s - used)
        # The judge: the pinned files and experiment configs of the base commit, never the worktree's.
        judge = extract_judge(paths.root, self.info.base_commit, paths.runs / "judge")
        self.executor = Executor(self.workspace.path, s.dataset, on_tick=self._tick, judge_root=judge)
        for kind in s.model_kinds:
            task = load_task(judge / EXPERIMENTS[kind])
            build_cache(s.dataset, task.canvas, task.data.split())

    def _restore(self, records: list[RunRecord]) -> None:
        """After a kill: the branch back at the best commit, the run in flight forgotten (it runs again)."""
        best = best_run(records)
        target = best.commit if best and best.commit else self.info.base_commit
        if self.workspace.head != target or self.workspace.repo.is_dirty(untracked_files=True):
            if self.workspace.head != target and records:
                self.workspace.set_aside(
                    f"{run_id_for(self.settings.tag, len(records))}-interrupted", self.workspace.head
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
                if self.settings.max_runs is not None and len(records) >= self.settings.max_runs:
                    reason = f"--max-runs {self.settings.max_runs} reached"
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
        self.console.print(f"[bold]night {self.settings.tag} ended:[/bold] {reason}. Summary: {summary}")
        if not finished:
            self.console.print(f"continue it with `harness run --resume {self.settings.tag}`")

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def _estimate(self, records: list[RunRecord]) -> float:
        """Seconds the next run will take: the measured phases of earlier runs, or guesses at first.

        The baseline trains every one of its seeds; a candidate is counted for one seed: its confirmation
        starts only if it fits in what is left then.
        """
        agent = [r.timings.agent_s for r in records if not r.is_baseline]
        overhead = [r.timings.overhead_s for r in records]
        d = DEFAULT_ESTIMATES
        seeds = self.settings.baseline_seeds if not records else 1
        return (
            (0.0 if not records else _typical(agent, self.agent.typical_s))
            + _typical(overhead, d["overhead_s"] + d["smoke_s"])
            + seeds * self._trial_estimate(records)
        )

    def _trial_estimate(self, records: list[RunRecord]) -> float:
        """Seconds one seed takes: training (the budget and its startup, as measured) and the val judge."""
        trials = [t for r in records for t in r.trials if t.ok]
        d = DEFAULT_ESTIMATES
        return _typical([t.train_s for t in trials], self.settings.per_run_s + d["startup_s"]) + _typical(
            [t.eval_s for t in trials],
            5.0 + 0.03 * self.settings.eval_samples,  # ~20 s for the judge's 512 samples
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
        run = RunOutcome(run_id_for(self.settings.tag, index), index)
        run_dir = self.paths.run_dir(run.run_id)
        best = best_run(records)
        best_commit = best.commit if best and best.commit else self.info.base_commit
        self._announce(run, best)
        pending = self._resumable(run, run_dir)
        if pending is None:
            pending = self._prepare(run, records, run_dir, best, best_commit)
            if pending is None:
                return
        self._judge_seeds(run, pending, records, best, best_commit)

    def _resumable(self, run: RunOutcome, run_dir: Path) -> PendingRun | None:
        """A run killed after one of its seeds was judged goes on from there; any other starts over."""
        pending = PendingRun.read(run_dir) if run_dir.exists() else None
        if pending is None or not pending.trials or not pending.record.get("commit"):
            if run_dir.exists():
                shutil.rmtree(run_dir)  # a run killed before its ledger line: it starts over
            run_dir.mkdir(parents=True)
            return None
        self.workspace.reset(pending.record["commit"])
        run.timings = pending.timings
        self.console.print(
            f"  {run.run_id} · resumed at {pending.record['commit'][:7]} "
            f"after {len(pending.trials)} judged seed(s)",
            highlight=False,
        )
        return pending

    def _prepare(
        self,
        run: RunOutcome,
        records: list[RunRecord],
        run_dir: Path,
        best: RunRecord | None,
        best_commit: str,
    ) -> PendingRun | None:
        """Propose, apply, check, commit, smoke-test: a run ready to train, or None (recorded as rejected)."""
        proposal = self._propose(run, records, run_dir)
        if proposal is None:
            return None
        experiment = proposal.experiment or self.settings.experiment
        record = dict(
            run_id=run.run_id,
            index=run.index,
            tag=self.settings.tag,
            parent=best.run_id if best else None,
            hypothesis=proposal.hypothesis,
            rationale=proposal.rationale,
            experiment=experiment,
            tokens=proposal.tokens,
            agent_meta=proposal.meta,
            started_at=run.started_at,
        )
        self._phase(run, "validate", proposal.hypothesis)
        try:
            commit_sha, diff_stat = self._commit(proposal, run, run_dir, experiment, best_commit)
        except ProposalRejected as rejection:
            self.workspace.reset(best_commit)
            self._record(
                run, record, status=RunStatus.REJECTED, reason=str(rejection), error_tail=str(rejection)
            )
            return None
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
            return None
        return PendingRun(record=to_jsonable_python(record))

    def _judge_seeds(
        self,
        run: RunOutcome,
        pending: PendingRun,
        records: list[RunRecord],
        best: RunRecord | None,
        best_commit: str,
    ) -> None:
        """Train and judge the run's seeds, decide, record.

        The baseline trains `baseline_seeds` seeds: their spread is the noise floor. A candidate trains one;
        if it clears the bar against the best's mean, a second seed must confirm it (the mean of both must
        still clear the bar) before the branch advances; otherwise it is `unconfirmed`.
        """
        sha = pending.record["commit"]
        noise = night_noise(records)
        if run.index == 0:
            while len(pending.trials) < self.settings.baseline_seeds:
                trial, tail = self._trial(run, pending)
                if not trial.ok:
                    return self._fail_trial(run, pending, trial, tail, best_commit)
            own = noise_floor([self._seeds(pending)])
            seeds = [t.seed for t in pending.trials]
            reason = f"baseline: the unchanged code on seeds {seeds}, the reference for every later run"
            return self._decided(run, pending, RunStatus.KEEP, reason, own)

        if not pending.trials:
            trial, tail = self._trial(run, pending)
            if not trial.ok:
                return self._fail_trial(run, pending, trial, tail, best_commit)
        first = pending.trials[0]
        verdict = decide(first.metrics_val, best.metrics_val, best.run_id, noise)
        if not verdict.keep:
            self._set_aside(run, sha, best_commit)
            return self._decided(run, pending, RunStatus.DISCARD, verdict.reason, noise)
        if len(pending.trials) < 2:
            need = self._trial_estimate(records)
            if need > self.remaining():
                self._set_aside(run, sha, best_commit)
                reason = (
                    f"seed {first.seed} cleared the bar ({verdict.reason}), but confirming it with a "
                    f"second seed needs about {reports.fmt_duration(need)} and the night has "
                    f"{reports.fmt_duration(max(0.0, self.remaining()))} left"
                )
                return self._decided(run, pending, RunStatus.UNCONFIRMED, reason, noise)
            self.console.print(
                f"  {run.run_id} · cleared the bar on seed {first.seed}: confirming with another seed"
            )
            confirmation, tail = self._trial(run, pending)
            if not confirmation.ok:
                self._set_aside(run, sha, best_commit)
                reason = (
                    f"seed {first.seed} cleared the bar, but the confirmation run (seed {confirmation.seed}) "
                    f"failed: {confirmation.reason}"
                )
                return self._decided(run, pending, RunStatus.UNCONFIRMED, reason, noise, error_tail=tail)
        seeds = [t.seed for t in pending.trials]
        confirmed = decide(mean_metrics(self._seeds(pending)), best.metrics_val, best.run_id, noise)
        if not confirmed.keep:
            self._set_aside(run, sha, best_commit)
            reason = (
                f"seed {first.seed} cleared the bar; the mean of seeds {seeds} did not: {confirmed.reason}"
            )
            return self._decided(run, pending, RunStatus.UNCONFIRMED, reason, noise)
        self._decided(run, pending, RunStatus.KEEP, f"confirmed on seeds {seeds}: {confirmed.reason}", noise)

    def _trial(self, run: RunOutcome, pending: PendingRun) -> tuple[Trial, str]:
        """Train and judge one more seed of the run's commit (saved in pending.json once judged); returns
        it with the end of its failing log, if it failed."""
        number = len(pending.trials)
        seed = trial_seed(run.index, number)
        directory = self.paths.trial_dir(run.run_id, number, seed)
        if number > 0:
            shutil.rmtree(directory, ignore_errors=True)  # a seed killed half-way trains again
        experiment = pending.record["experiment"]
        label = pending.record["hypothesis"]
        self._phase(run, "train" if number == 0 else f"train seed {seed}", label)
        trained = self.executor.train(
            experiment,
            directory,
            self.settings.per_run_s,
            self.settings.grace,
            seed=seed,
            timeout_s=self._train_timeout(),
        )
        trial = Trial(
            seed=seed,
            directory=str(directory.relative_to(self.paths.runs)),
            train=train_summary(directory),
            cpu_s=trained.cpu_s,
            train_s=trained.seconds,
        )
        failed = None if trained.ok else trained
        if trained.ok:
            self._phase(run, "eval" if number == 0 else f"eval seed {seed}", label)
            judged, metrics = self._evaluate(directory, "val", pending)
            trial.eval_s = judged.seconds
            trial.metrics_val = metrics or {}
            failed = None if metrics is not None else judged
        if failed is not None:
            trial.ok, trial.status, trial.reason = False, failed.status, failed.reason
        if number == 0:
            run.timings.train_s += trial.train_s
            run.timings.eval_s += trial.eval_s
        else:
            run.timings.confirm_s += trial.train_s + trial.eval_s
        pending.trials.append(trial)
        pending.timings = run.timings
        if trial.ok:
            pending.write(self.paths.run_dir(run.run_id))
        return trial, "" if failed is None else failed.tail

    def _evaluate(self, directory: Path, split: str, pending: PendingRun) -> tuple[StepResult, dict | None]:
        """The pinned judge on one seed's run directory, on the night's task for the run's model kind."""
        task = EXPERIMENTS[pending.record["model_kind"]]
        return self.executor.evaluate(
            directory, split, self.settings.eval_samples, self._eval_timeout(), task=task
        )

    @staticmethod
    def _seeds(pending: PendingRun) -> list[dict]:
        return [t.metrics_val for t in pending.trials if t.ok]

    def _fail_trial(
        self, run: RunOutcome, pending: PendingRun, trial: Trial, tail: str, best_commit: str
    ) -> None:
        """A seed that crashed or timed out: the run is a crash or timeout, with that seed's log tail."""
        self._set_aside(run, pending.record["commit"], best_commit)
        reason = trial.reason if len(pending.trials) == 1 else f"seed {trial.seed}: {trial.reason}"
        self._record(
            run,
            pending.record,
            status=trial.status,
            reason=reason,
            error_tail=tail,
            trials=pending.trials,
            metrics_val=mean_metrics(self._seeds(pending)),
        )

    def _decided(
        self,
        run: RunOutcome,
        pending: PendingRun,
        status: RunStatus,
        reason: str,
        noise: NoiseFloor,
        error_tail: str | None = None,
    ) -> None:
        """Record a judged run; a kept one is judged on test too (every seed, averaged)."""
        test = None
        if status == RunStatus.KEEP:
            self._phase(run, "eval test", pending.record["hypothesis"])
            for number, trial in enumerate(pending.trials):
                if not trial.ok:
                    continue
                tested, trial.metrics_test = self._evaluate(
                    self.paths.runs / trial.directory, "test", pending
                )
                if number == 0:
                    run.timings.eval_s += tested.seconds
                else:
                    run.timings.confirm_s += tested.seconds
            tests = [t.metrics_test for t in pending.trials if t.metrics_test]
            test = mean_metrics(tests) if tests else None
        self._record(
            run,
            pending.record,
            status=status,
            reason=reason,
            metrics_val=mean_metrics(self._seeds(pending)),
            metrics_test=test,
            trials=pending.trials,
            noise=noise,
            error_tail=error_tail,
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
            self._note_model(proposal.meta)
            return proposal
        except AgentExhausted as done:
            raise NightEnded(f"the agent has nothing more to propose ({done})") from None
        except AgentError as err:
            self.agent_failures += 1
            self._note_model(err.meta)
            run.timings.agent_s = time.monotonic() - start
            record = dict(
                run_id=run.run_id,
                index=run.index,
                tag=self.settings.tag,
                hypothesis="(no proposal)",
                tokens=err.tokens,  # a failed proposal still cost what it cost
                agent_meta=err.meta,
            )
            self._record(
                run, record, status=RunStatus.REJECTED, reason=f"agent error: {err}", error_tail=str(err)
            )
            if self.agent_failures >= MAX_AGENT_FAILURES:
                raise NightEnded(f"the agent failed {self.agent_failures} times in a row: {err}") from None
            return None
        finally:
            run.timings.agent_s = time.monotonic() - start

    def _note_model(self, meta: dict) -> None:
        """night.json names the LLM that answered, when the night did not name one (`--model` left out)."""
        answered = meta.get("model")
        if self.info.agent_model is None and isinstance(answered, str) and answered:
            self.info.agent_model = answered
            self.info.write(self.paths)

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
        if kind not in self.settings.model_kinds:
            raise ProposalRejected(
                f"{experiment} trains a {kind}; this night trains {', '.join(self.settings.model_kinds)}"
            )
        return kind

    def _eval_timeout(self) -> float:
        return max(EVAL_TIMEOUT_S, 0.5 * self.settings.per_run_s)

    def _train_timeout(self) -> float:
        """Wall clock allowed to one training: TRAIN_SLACK budgets, never past the night's end, plus grace."""
        return min(TRAIN_SLACK * self.settings.per_run_s, max(0.0, self.remaining())) + self.settings.grace

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
        t.overhead_s = max(0.0, time.monotonic() - run.started - (t.total_s - t.overhead_s))
        final = final.model_copy(update={"timings": t, "finished_at": now()})
        with deferred_interrupt():
            self.ledger.append(final)
        (self.paths.run_dir(run.run_id) / PENDING_FILE).unlink(missing_ok=True)
        reports.render_summary(self.paths)
        self._report_result(final)

    # ------------------------------------------------------------------------------------ the agent

    def _context(self, run: RunOutcome, records: list[RunRecord], run_dir: Path) -> AgentContext:
        best, baseline = best_run(records), baseline_run(records)
        experiment = self.settings.experiment
        feedback = [
            reports.feedback(self.paths, r, records, root=self.paths.root) for r in records[-FEEDBACK_RUNS:]
        ]
        state = PromptState(
            tag=self.settings.tag,
            index=run.index,
            remaining_s=max(0.0, self.remaining()),
            per_run_s=self.settings.per_run_s,
            model_kinds=self.settings.model_kinds,
            experiment=experiment,
            experiment_text=(self.workspace.path / experiment).read_text(),
            best=best,
            baseline=baseline,
            board=leaderboard(records, top=10),
            tried=records,
            feedback=feedback,
            noise=night_noise(records),
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
            model_kinds=self.settings.model_kinds,
            per_run_s=self.settings.per_run_s,
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
        colors = {
            "keep": "green",
            "discard": "white",
            "unconfirmed": "magenta",
            "crash": "red",
            "timeout": "red",
            "rejected": "yellow",
        }
        color = colors[record.status.value]
        mse = f" · val mse {record.primary:.6g}" if record.primary is not None else ""
        self.console.print(
            f"  [{color}]{record.status.value}[/{color}]{mse} · {reports.one_line(record.reason, 120)}"
        )
