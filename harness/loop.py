"""The night: propose, commit, smoke, train, judge, keep or discard, report; until the budget ends.

Up to `--workers` runs are in flight at once, asynchronously: when a run's seed is judged it is decided
against the best at that moment, and the next run starts on the freed worker; proposals are asked for ahead
(`--backlog`), each on the best commit of its time, with the runs in flight in its prompt. One thread, this
one, writes git, the ledger and the reports; workers (harness/workers.py) only run a run's jobs in the tree
of its commit (harness/trees.py) and hand back what happened; agents propose in threads of their own.

Everything a run produces is written before its ledger line, and the ledger line is the commit point; a
run's commit and judged seeds are in its `pending.json` from the moment it is committed, so a kill -9 at any
moment loses no run: `--resume` runs the runs that were in flight again under their ids, from their commits
and the seeds already judged. The budget is a promise: a run starts only when its estimated time fits in
what is left, and a run that goes past its own budget plus grace is killed, so the night ends at most one
grace period late. The ledger lists runs in the order they were decided.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import git
from pydantic_core import to_jsonable_python
from rich.console import Console

from harness import reports
from harness.agents.base import Agent, AgentContext, AgentError, AgentExhausted, InFlight, Proposal
from harness.durable import atomic_write_text
from harness.executor import StepResult
from harness.judge import NoiseFloor, decide, mean_metrics, noise_floor
from harness.ledger import (
    PENDING_FILE,
    Ledger,
    LedgerError,
    NightActivity,
    NightInfo,
    PendingRun,
    RunningState,
    RunRecord,
    RunStatus,
    Timings,
    TokenUse,
    Trial,
    baseline_run,
    best_run,
    leaderboard,
    night_noise,
    now,
)
from harness.memory import NOTE_CHARS, MemoryBuilder
from harness.nights import continuation, night_chain
from harness.novelty import NearDuplicate, Novelty, NoveltyIndex
from harness.painter import Painter
from harness.paths import NightPaths, run_id_for
from harness.pinned import ALLOWED_TEXT, extract_judge
from harness.plateau import PlateauState, night_plateau, revisit_candidates, runs_since_keep
from harness.secrets import RedactingStream
from harness.steering import Steering, steering_for
from harness.trees import export_tree
from harness.workers import (
    Job,
    JobResult,
    LocalWorkers,
    PhaseCallback,
    Workers,
    gpu_shares,
    worker_shares,
)
from harness.workspace import ProposalRejected, Workspace
from models.data import build_cache
from models.errors import WorldloopError
from models.files import read_toml
from models.task import load_task

LOOP_FILE = "LOOP.md"
FEEDBACK_RUNS = 3  # latest runs shown to the agent in detail
MAX_AGENT_FAILURES = 3  # consecutive agent errors that end the night

DEFAULT_ESTIMATES = {"smoke_s": 5.0, "startup_s": 10.0, "overhead_s": 5.0}
"""Guesses for the first run's phases; after that the night uses what it measured."""

EVAL_TIMEOUT_S = 600.0
"""Wall clock allowed to one judging (val or test) before it counts as a timeout. Judging is outside the
budget and only a hung model should ever reach this: the baseline DiT's val judging took 101 s at one
thread beside three busy programs, and a wider, deeper candidate 150 s on a quiet machine, so the old
limit (120 s at 2m per run) failed good runs on a busy machine."""

SUMMARY_EVERY_S = 10.0
"""The summary is rewritten after a run at most this often (and always when the night ends): it reads and
renders the whole ledger and draws the progress plot on the night's one thread (0.13 s of CPU at 280 runs
before the plot's 0.3 s, growing with the night), while many workers, or seconds-long runs, finish runs
faster than anyone reads it."""

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


def default_backlog(workers: int) -> int:
    """Proposals asked for ahead of a free worker. One worker asks when it is free, so every proposal sees
    the result before it (as a night always did); N workers keep about N/2 ready, so a worker rarely waits
    on the agent while most proposals still see the results before them. Measured (benchmarks/large_night.py,
    8 workers, runs of 6 minutes, an agent of 60-120 s): workers busy 84% with no backlog, 95% with 2, 98%
    with 4 (N/2), 99% with 8; past N/2 little is won while every proposal asked ahead sees fewer results."""
    return 0 if workers <= 1 else max(1, workers // 2)


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
    workers: int = 1
    cpus_per_run: int | None = None
    backlog: int | None = None
    executor: str = "local"
    address: str | None = None  # the Ray cluster's (executor "ray"); None starts a local one
    storage: Path | None = None  # a filesystem every Ray node shares: trial directories travel through it
    gpus_per_run: float | None = None  # each run's GPUs (default: local workers share the machine's equally)
    experiment: str | None = None  # `--experiment`: the one kind's config in place of experiments/<kind>.toml
    continues: str | None = None  # `--continue`: start from that night's best commit, with what it learned
    plateau_after: int | None = None  # `--plateau`: runs without a keep that make a plateau

    @property
    def proposals_ahead(self) -> int:
        """Proposals asked for beyond the free workers (`--backlog`, default_backlog)."""
        return default_backlog(self.workers) if self.backlog is None else self.backlog

    @property
    def grace(self) -> float:
        return default_grace(self.per_run_s) if self.grace_s is None else self.grace_s


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
    memory: str  # the research memory, bounded (harness/memory.py)
    feedback: list[str]
    noise: NoiseFloor
    steering: Steering  # the researcher's guidance and notes (harness/steering.py)
    repeat: str = ""  # why this run's first proposal was sent back (a near-duplicate), for its second try
    plateau: PlateauState | None = None  # runs without a keep past plateau_after: ask for a structural change
    note_chars: int = NOTE_CHARS  # the most an agent's memory note may hold
    in_flight: list[tuple[str, str]] = field(default_factory=list)  # (run id, hypothesis) not judged yet

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


@dataclass
class Flight:
    """A run between its proposal and its ledger line, with what the loop knows of it so far."""

    run: RunOutcome
    best: RunRecord | None  # the best run when it was proposed: its parent
    base_commit: str  # the commit it is proposed on (the best's, or the night's base)
    hypothesis: str = ""
    proposal: Future | None = None  # the agent's answer, while it is being asked
    proposal_tree: Path | None = None  # the best commit's files, which the agent reads while it proposes
    # (shared with the other proposals on the same commit: agents read it, never write it)
    pending: PendingRun | None = None  # set once committed (pending.json)
    steering: list[str] = field(default_factory=list)  # the researcher's notes its prompt showed
    sent_back: NearDuplicate | None = None  # its first proposal repeated an earlier run: asked once more
    novelty: Novelty | None = None  # its proposal against the earlier ones, once committed
    revisit_of: str | None = None  # the earlier run its proposal retries on purpose (harness/plateau.py)
    spent: TokenUse = field(default_factory=TokenUse)  # what a proposal sent back had cost
    tree: Path | None = None  # its commit's files, where its jobs run
    queued: list[Job] = field(default_factory=list)  # jobs waiting for a worker
    running: int = 0  # jobs on workers
    tests: int = 0  # test-split jobs still out, once its keep is decided
    verdict: str = ""  # a kept run's reason, while its test split is judged
    noise: NoiseFloor | None = None  # the noise floor its keep was decided with
    phase: str = "agent"
    phase_started: float = field(default_factory=time.monotonic)

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def is_baseline(self) -> bool:
        return self.run.index == 0


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
    """Raised inside the loop to stop it at once, with the reason the summary shows."""


TICK_S = 1.0  # how often the live progress line is redrawn while nothing happens


class Night:
    """One night of one tag: owns the workspace, the workers, the ledger and every decision."""

    def __init__(
        self,
        settings: NightSettings,
        agent: Agent,
        console: Console | None = None,
        make_workers: Callable[[Path, PhaseCallback], Workers] | None = None,
    ) -> None:
        """`make_workers(judge, on_phase)`: the night's workers, given its pinned judge and where their jobs'
        phases go; by default those of `settings.executor` (benchmarks/large_night.py simulates them)."""
        self.settings = settings
        self.make_workers = make_workers
        self.agent = agent
        self.console = console or Console(file=RedactingStream(sys.stdout))
        self.paths = NightPaths(Path(settings.root).resolve(), settings.tag)
        self.ledger = Ledger(self.paths)
        self.info: NightInfo | None = None
        self.workspace: Workspace | None = None
        self.workers: Workers | None = None
        self.deadline = 0.0
        self.spent_before = 0.0  # seconds of the budget spent before this process took the night over
        self.started = time.monotonic()
        self.agent_failures = 0
        self.records: list[RunRecord] = []
        self.flights: dict[str, Flight] = {}
        self.jobs: dict[Future, tuple[Flight, Job]] = {}
        self.stop_reason: str | None = None
        self._agents: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # current.json and the phases: written by worker threads and this one
        self._status = None  # the live line of a terminal
        self.painter: Painter | None = None  # draws the figures of a night of several workers
        self.memory = MemoryBuilder(self.paths)  # the research memory every prompt shows
        self.novelty = NoveltyIndex()  # every proposal against the earlier ones
        self.earlier: list[RunRecord] = []  # the runs of the nights this one continues
        self._base_trees: dict[str, tuple[Path, int]] = {}  # commit: its tree, the proposals reading it
        self._summary_at = -SUMMARY_EVERY_S  # when the summary was last rewritten (monotonic)

    # ------------------------------------------------------------------------------------ setup

    def _start(self) -> None:
        s, paths = self.settings, self.paths
        if self.make_workers is None:  # too few cores or GPUs, or no Ray: said before the night is created
            if s.executor == "local":
                worker_shares(s.workers, s.cpus_per_run)
                gpu_shares(s.workers, s.gpus_per_run)
            else:
                import harness.ray_workers  # noqa: F401
        if s.experiment and not s.resume:  # the night starts from the last commit, and judges on its task
            try:
                git.Repo(paths.root).git.cat_file("-e", f"HEAD:{s.experiment}")
            except git.GitCommandError:
                raise WorldloopError(
                    f"{s.experiment} is not committed: a night starts from the last commit"
                ) from None
            except (git.InvalidGitRepositoryError, git.NoSuchPathError):
                pass  # not a project: Workspace.create says so
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
            start = continuation(paths.root, s.continues).commit if s.continues else "HEAD"
            self.workspace = Workspace.create(paths.root, s.tag, worktree, start=start)
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
                workers=s.workers,
                executor=s.executor,
                experiment=s.experiment,
                continues=s.continues,
                plateau_after=s.plateau_after,
            )
        self.info.write(paths)
        self.earlier = night_chain(paths.root, self.info.continues)  # what the nights before it tried
        self.records = self.ledger.read()
        self._restore()
        self.spent_before = self.info.spent_s if self.info.spent_s is not None else self._summed()
        self.started = time.monotonic()
        self.deadline = self.started + max(0.0, self.info.budget_s - self.spent_before)
        # The judge: the pinned files and experiment configs of the base commit, never the worktree's.
        judge = extract_judge(paths.root, self.info.base_commit, paths.runs / "judge")
        for kind in s.model_kinds:
            task = load_task(judge / self.info.experiment_of(kind))
            build_cache(s.dataset, task.canvas, task.data.split())
        self.workers = self._make_workers(judge)
        if s.workers > 1 or s.executor != "local":
            self.console.print(f"workers: {self.workers.describe()}", highlight=False)
        workers = s.workers + s.proposals_ahead if getattr(self.agent, "concurrent", False) else 1
        self._agents = ThreadPoolExecutor(workers, thread_name_prefix="agent")
        if s.workers > 1:  # one worker's night waits on its one run anyway: it draws its figures itself
            self.painter = Painter(paths.runs / "painter.log")
        self._draw_missing_figures()

    def _draw_missing_figures(self) -> None:
        """A night killed before its figures were drawn (its painter went with it) gets them on resume."""
        for record in self.records:
            if any(not path.exists() for path in reports.run_figures(record, self.paths).values()):
                reports.render_run(self.paths, record, self.records, painter=self.painter)

    def _make_workers(self, judge: Path) -> Workers:
        s = self.settings
        if self.make_workers is not None:
            return self.make_workers(judge, self._on_phase)
        if s.executor == "ray":
            from harness.ray_workers import RayWorkers

            return RayWorkers(
                s.dataset,
                judge,
                s.workers,
                s.cpus_per_run,
                s.gpus_per_run or 0.0,
                s.address,
                self._on_phase,
                storage=s.storage,
            )
        return LocalWorkers(
            s.dataset, judge, s.workers, s.cpus_per_run, s.gpus_per_run, on_phase=self._on_phase
        )

    def _summed(self) -> float:
        """The budget a night spent, for a night written before night.json kept it: its runs' own time."""
        return sum(r.timings.total_s for r in self.records)

    def _restore(self) -> None:
        """After a kill: the branch back at the best commit; a commit made for a run that never got its
        pending.json is set aside (its proposal is asked for again)."""
        best = best_run(self.records)
        target = best.commit if best and best.commit else self.info.base_commit
        if self.workspace.head != target or self.workspace.repo.is_dirty(untracked_files=True):
            if self.workspace.head != target and self.records:
                self.workspace.set_aside(f"interrupted-{self.workspace.head[:7]}", self.workspace.head)
            self.workspace.reset(target)
        self.paths.current.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------- the loop

    def run(self) -> NightInfo:
        """Run the night to its end; returns its NightInfo (with end_reason)."""
        self._start()
        try:
            with self._spinner():
                reason = self._fly()
        except NightEnded as end:
            self._close(cancel=True)
            reason = str(end)
        except KeyboardInterrupt:
            self._close(cancel=True, drop_figures=True)
            self._finish("interrupted (Ctrl-C)", finished=False)
            raise
        except BaseException:
            self._close(cancel=True, drop_figures=True)
            raise
        self._close(cancel=False)
        self._finish(reason, finished=True)
        return self.info

    def _close(self, cancel: bool, drop_figures: bool = False) -> None:
        """Workers ended (their subprocesses killed, with `cancel`); agents still thinking are left to end
        on their own (their answers are not used); the painter's figures drawn (or, with `drop_figures`,
        those not started dropped: a Ctrl-C ends the night in seconds)."""
        if self.workers is not None:
            self.workers.close(cancel=cancel)
        if self._agents is not None:
            self._agents.shutdown(wait=False, cancel_futures=True)
        if self.painter is not None:
            for failure in self.painter.close(wait=not drop_figures):
                self.console.print(f"[yellow]note:[/yellow] could not draw {failure}", highlight=False)
            if drop_figures:
                self.console.print("figures not drawn yet were dropped: `harness report <run-id>` draws them")
            self.painter = None

    def _fly(self) -> str:
        """Keep the workers busy until the night must end; returns why it ended."""
        self._resume_flights()
        while True:
            self._ask_for_proposals()
            self._dispatch()
            if not self.flights:
                return self.stop_reason or "budget spent"
            self._wait_and_handle()

    def _wait_and_handle(self) -> None:
        futures = [*self.jobs, *(f.proposal for f in self.flights.values() if f.proposal is not None)]
        if not futures:  # runs in flight with nothing running or queued for them would wait forever
            stuck = ", ".join(f"{f.run_id} ({f.phase})" for f in self.flights.values())
            raise RuntimeError(f"no job or proposal is out, yet runs are in flight: {stuck}")
        done, _ = wait(futures, timeout=TICK_S, return_when=FIRST_COMPLETED)
        for future in sorted(done, key=self._order):
            if future in self.jobs:
                flight, job = self.jobs.pop(future)
                flight.running -= 1
                if flight.run_id in self.flights:  # not recorded meanwhile
                    self._job_done(flight, job, future.result())
            else:
                flight = next(f for f in self.flights.values() if f.proposal is future)
                flight.proposal = None
                self._proposal_done(flight, future)
        self._tick()

    def _order(self, future: Future) -> int:
        """What ended within one wait is handled in run order: decisions do not hang on thread timing."""
        if future in self.jobs:
            return self.jobs[future][0].run.index
        flight = next((f for f in self.flights.values() if f.proposal is future), None)
        return flight.run.index if flight else 0

    # ------------------------------------------------------------------------- starting runs

    def _next_index(self) -> int:
        used = {r.index for r in self.records} | {f.run.index for f in self.flights.values()}
        return next(i for i in range(len(used) + 1) if i not in used)

    def _best(self) -> tuple[RunRecord | None, str]:
        best = best_run(self.records)
        return best, best.commit if best and best.commit else self.info.base_commit

    def _stop(self, reason: str) -> None:
        """No new run from now on; the runs in flight finish. The first reason is the night's."""
        if self.stop_reason is None:
            self.stop_reason = reason

    def _ask_for_proposals(self) -> None:
        """Ask the agent for proposals while fewer runs are in flight than workers + backlog (none until the
        baseline is decided: every proposal sees it)."""
        s = self.settings
        while self.stop_reason is None:
            if s.max_runs is not None and len(self.records) + len(self.flights) >= s.max_runs:
                if not self.flights:
                    self._stop(f"--max-runs {s.max_runs} reached")
                return
            baseline_done = any(r.is_baseline for r in self.records)
            if not baseline_done and self.flights:
                return
            if len(self.flights) >= (s.workers + s.proposals_ahead if baseline_done else 1):
                return
            if not self._fits():
                if not self.flights:
                    self._stop("budget spent")
                return
            self._new_flight(baseline=not baseline_done)

    def _new_flight(self, baseline: bool) -> None:
        index = 0 if baseline else self._next_index()
        run = RunOutcome(run_id_for(self.settings.tag, index), index)
        best, best_commit = self._best()
        flight = Flight(run, best, best_commit)
        self.flights[run.run_id] = flight
        run_dir = self.paths.run_dir(run.run_id)
        if run_dir.exists():
            shutil.rmtree(run_dir)  # a run killed before it was committed: it starts over
        run_dir.mkdir(parents=True)
        self._announce(flight)
        if baseline:
            proposal = Proposal(
                hypothesis="baseline: the code and configs of the night's base commit, unchanged",
                rationale="Every later run is judged against the best run, starting from this one.",
            )
            self._prepare(flight, proposal)
            return
        self._phase(flight, "agent")
        context = self._context(flight)
        flight.proposal = self._agents.submit(self._propose, context)

    def _propose(self, context: AgentContext) -> tuple[Proposal | AgentError, float]:
        """The agent's answer (in a thread of its own) and how long it took: a proposal, or its error."""
        start = time.monotonic()
        try:
            answer: Proposal | AgentError = self.agent.propose(context)
        except AgentError as err:
            answer = err
        return answer, time.monotonic() - start

    def _proposal_done(self, flight: Flight, future: Future) -> None:
        run = flight.run
        if flight.proposal_tree is not None:
            self._release_base_tree(flight.base_commit)
            flight.proposal_tree = None
        answer, seconds = future.result()
        run.timings.agent_s += seconds  # a proposal sent back as a repeat is asked twice
        if isinstance(answer, AgentExhausted):
            del self.flights[run.run_id]  # never a run: its id is the next one's
            shutil.rmtree(self.paths.run_dir(run.run_id), ignore_errors=True)
            self._stop(f"the agent has nothing more to propose ({answer})")
            return
        if isinstance(answer, AgentError):
            err = answer
            self.agent_failures += 1
            self._note_model(err.meta)
            record = dict(
                run_id=run.run_id,
                index=run.index,
                tag=self.settings.tag,
                parent=flight.best.run_id if flight.best else None,
                hypothesis="(no proposal)",
                tokens=err.tokens,  # a failed proposal still cost what it cost
                agent_meta=err.meta,
                steering=flight.steering,
                started_at=run.started_at,
            )
            self._record(
                flight, record, status=RunStatus.REJECTED, reason=f"agent error: {err}", error_tail=str(err)
            )
            if self.agent_failures >= MAX_AGENT_FAILURES:
                self._stop(f"the agent failed {self.agent_failures} times in a row: {err}")
            return
        self.agent_failures = 0
        self._note_model(answer.meta)
        self._prepare(flight, answer)

    def _prepare(self, flight: Flight, proposal: Proposal) -> None:
        """Apply, check and commit a proposal on its base commit, then queue its first job (smoke step,
        first seed); a proposal that does not become a commit is recorded as rejected."""
        run, run_dir = flight.run, self.paths.run_dir(flight.run_id)
        experiment = proposal.experiment or self._experiment
        flight.hypothesis = proposal.hypothesis
        eligible = {r.run_id for r, _ in revisit_candidates(self.records, best_run(self.records))}
        flight.revisit_of = proposal.revisit if proposal.revisit in eligible else None
        record = dict(
            run_id=run.run_id,
            index=run.index,
            tag=self.settings.tag,
            parent=flight.best.run_id if flight.best else None,
            hypothesis=proposal.hypothesis,
            rationale=proposal.rationale,
            experiment=experiment,
            tokens=proposal.tokens + flight.spent,
            sent_back=str(flight.sent_back) if flight.sent_back else None,
            revisit_of=flight.revisit_of,
            agent_meta=proposal.meta,
            memory=proposal.memory,
            steering=flight.steering,
            started_at=run.started_at,
        )
        self._phase(flight, "validate")
        try:
            commit_sha, diff_stat = self._commit(proposal, flight, experiment)
        except NearDuplicate as repeat:
            self.workspace.reset(self._best()[1])
            if flight.sent_back is None:  # once: the agent hears what the earlier run gave, and tries again
                flight.sent_back, flight.spent = repeat, flight.spent + proposal.tokens
                self.console.print(f"  {flight.run_id} · sent back: {repeat}", highlight=False)
                self._phase(flight, "agent")
                flight.proposal = self._agents.submit(self._propose, self._context(flight))
                return
            record.update(novelty=repeat.novelty.score, similar_to=repeat.novelty.closest)
            self._record(
                flight, record, status=RunStatus.REJECTED, reason=str(repeat), error_tail=str(repeat)
            )
            return
        except ProposalRejected as rejection:
            self.workspace.reset(self._best()[1])
            self._record(
                flight, record, status=RunStatus.REJECTED, reason=str(rejection), error_tail=str(rejection)
            )
            return
        record.update(commit=commit_sha, diff_stat=diff_stat, model_kind=self._kind(experiment))
        if flight.novelty is not None:
            record.update(novelty=flight.novelty.score, similar_to=flight.novelty.closest)
        flight.pending = PendingRun(record=to_jsonable_python(record), timings=run.timings)
        flight.pending.write(run_dir)
        self._queue_trials(flight)

    def _commit(self, proposal: Proposal, flight: Flight, experiment: str) -> tuple[str, str]:
        """The proposal as a commit on its base (the baseline is the base commit itself), kept under
        refs/harness/<tag>/<run-id>; the branch stays at the best commit."""
        run, run_dir = flight.run, self.paths.run_dir(flight.run_id)
        if flight.is_baseline:
            return self.info.base_commit, ""
        self.workspace.reset(flight.base_commit)
        try:
            changed = self.workspace.apply(proposal)
            tasks = {kind: self.info.experiment_of(kind) for kind in self.settings.model_kinds}
            self.workspace.check(changed, base_commit=self.info.base_commit, tasks=tasks)
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
        atomic_write_text(run_dir / reports.PROPOSAL_DIFF, commit.diff + "\n")  # a repeat's too: the memory
        flight.novelty = self._novelty(flight, commit.diff, proposal.hypothesis)  # NearDuplicate: not kept
        self.workspace.set_aside(run.run_id, commit.sha)
        self.workspace.reset(self._best()[1])
        return commit.sha, commit.diff_stat

    def _novelty(self, flight: Flight, diff: str, hypothesis: str) -> Novelty:
        """The proposal against every earlier one of the night (recorded, or in flight and committed); a
        near-duplicate is NearDuplicate, with what the run it repeats gave."""
        run_dir = self.paths.run_dir
        earlier = [(NightPaths(self.paths.root, r.tag).run_dir(r.run_id), r.hypothesis) for r in self.earlier]
        earlier += [(run_dir(r.run_id), r.hypothesis) for r in self.records]
        earlier += [
            (run_dir(f.run_id), f.hypothesis) for f in self.flights.values() if f is not flight and f.pending
        ]
        novelty = self.novelty.compare(diff, hypothesis, earlier)
        if novelty.duplicate and novelty.closest != flight.revisit_of:  # a revisit repeats on purpose, once
            repeated = next((r for r in self.earlier + self.records if r.run_id == novelty.closest), None)
            raise NearDuplicate(novelty, repeated)
        return novelty

    @property
    def _experiment(self) -> str:
        """The experiment config a proposal changes unless it names another: the first kind's."""
        return self.info.experiment_of(self.settings.model_kinds[0])

    def _kind(self, experiment: str) -> str:
        kind = model_kind(self.workspace.path / experiment)
        if kind not in self.settings.model_kinds:
            raise ProposalRejected(
                f"{experiment} trains a {kind}; this night trains {', '.join(self.settings.model_kinds)}"
            )
        return kind

    def _resume_flights(self) -> None:
        """The runs a killed night had in flight, each from its commit and the seeds it had judged."""
        known = {r.run_id for r in self.records}
        for pending_file in sorted(self.paths.runs.glob(f"*/{PENDING_FILE}")):
            pending = PendingRun.read(pending_file.parent)
            run_id = pending.record.get("run_id") if pending else None
            if pending is None or run_id in known or not pending.record.get("commit"):
                continue
            run = RunOutcome(run_id, int(pending.record["index"]), timings=pending.timings)
            best, best_commit = self._best()
            flight = Flight(run, best, best_commit, hypothesis=pending.record.get("hypothesis", ""))
            flight.pending = pending
            self.flights[run_id] = flight
            self.console.print(
                f"  {run_id} · resumed at {pending.record['commit'][:7]} after {len(pending.trials)} judged "
                "seed(s)",
                highlight=False,
            )
            wanted = self.settings.baseline_seeds if flight.is_baseline else 1
            if len(pending.trials) >= wanted:
                self._judged(flight)  # decided again against the best now (a confirmation, or its test split)
            else:
                self._queue_trials(flight)

    # ---------------------------------------------------------------------------------------- jobs

    def _queue_trials(self, flight: Flight) -> None:
        """The seeds a run still needs: the baseline's all (side by side when workers allow), a
        candidate's first (with the smoke step)."""
        wanted = self.settings.baseline_seeds if flight.is_baseline else 1
        first = not flight.pending.trials
        for number in range(len(flight.pending.trials), wanted):
            flight.queued.append(self._trial_job(flight, number, smoke=first and number == 0))

    def _trial_job(self, flight: Flight, number: int, smoke: bool = False) -> Job:
        seed = trial_seed(flight.run.index, number)
        directory = self.paths.trial_dir(flight.run_id, number, seed)
        if number > 0:
            shutil.rmtree(directory, ignore_errors=True)  # a seed killed half-way trains again
        label = "train" if number == 0 else f"train seed {seed}"
        s = self.settings
        return self._job(
            flight, label, directory, seed=seed, smoke=smoke, budget_s=s.per_run_s, grace_s=s.grace
        )

    def _job(self, flight: Flight, label: str, directory: Path, **fields: object) -> Job:
        """A job of `flight`'s: its experiment, judged on the night's task for its model kind. A training's
        wall-clock limit is set when it starts (`_dispatch`)."""
        record = flight.pending.record
        return Job(
            run_id=flight.run_id,
            label=label,
            directory=directory,
            experiment=record["experiment"],
            task=self.info.experiment_of(record["model_kind"]),
            eval_samples=self.settings.eval_samples,
            eval_timeout_s=self._eval_timeout(),
            **fields,
        )

    def _dispatch(self) -> None:
        """Hand queued jobs to free workers, the oldest run's first (a confirmation before a new run)."""
        for flight in sorted(self.flights.values(), key=lambda f: f.run.index):
            while flight.queued and self.workers.free() > 0:
                job = flight.queued.pop(0)
                if job.train:  # its wall-clock limit as it starts: never past the night's end plus the grace
                    job = replace(job, train_timeout_s=self._train_timeout())
                future = self.workers.submit(job, self._tree(flight))  # the judge runs its model there too
                flight.running += 1
                self.jobs[future] = (flight, job)

    def _tree(self, flight: Flight) -> Path:
        if flight.tree is None:
            flight.tree = export_tree(
                self.workspace.repo,
                flight.pending.record["commit"],
                self.paths.runs / "trees" / flight.run_id,
            )
        return flight.tree

    def _job_done(self, flight: Flight, job: Job, result: JobResult) -> None:
        if not job.train:  # a kept run's test split (a lost one leaves its test metrics missing)
            number = next(
                i
                for i, t in enumerate(flight.pending.trials)
                if self.paths.runs / t.directory == job.directory
            )
            trial = flight.pending.trials[number]
            trial.metrics_test = result.metrics
            seconds = result.judged.seconds if result.judged else 0.0
            if number == 0:
                flight.run.timings.eval_s += seconds
            else:
                flight.run.timings.confirm_s += seconds
            flight.tests -= 1
            if flight.tests == 0:
                self._kept(flight)
            return
        if result.smoke is not None and not result.smoke.ok:
            self._record(
                flight,
                flight.pending.record,
                status=RunStatus.REJECTED,
                reason=f"smoke step failed: {result.smoke.reason}",
                error_tail=result.smoke.tail,
            )
            return
        trial = self._trial(flight, job, result)
        failed = result.failed
        if result.lost is not None:
            trial.ok, trial.status = False, RunStatus.LOST
            trial.reason = f"its worker died twice under it ({result.lost})"
        elif failed is not None:
            trial.ok, trial.status, trial.reason = False, failed.status, failed.reason
        flight.pending.trials.append(trial)
        flight.pending.trials.sort(key=lambda t: t.seed)
        flight.pending.timings = flight.run.timings
        if trial.ok:
            flight.pending.write(self.paths.run_dir(flight.run_id))
        if flight.running or flight.queued:
            return  # the baseline's other seeds are still training
        self._judged(flight, "" if failed is None else failed.tail)

    def _trial(self, flight: Flight, job: Job, result: JobResult) -> Trial:
        trained = result.trained or StepResult(False, 0.0)
        judged = result.judged
        trial = Trial(
            seed=job.seed,
            directory=str(job.directory.relative_to(self.paths.runs)),
            train=train_summary(job.directory),
            cpu_s=trained.cpu_s,
            train_s=trained.seconds,
            eval_s=judged.seconds if judged else 0.0,
            metrics_val=result.metrics or {},
            worker=result.worker,
            started_at=result.started_at,
        )
        t = flight.run.timings
        if job.label == "train":
            t.train_s += trial.train_s
            t.eval_s += trial.eval_s
        else:
            t.confirm_s += trial.train_s + trial.eval_s
        return trial

    # ------------------------------------------------------------------------------------ decisions

    def _judged(self, flight: Flight, tail: str = "") -> None:
        """Every seed asked for is judged (or one failed): decide, or ask for a confirmation.

        The baseline trains `baseline_seeds` seeds: their spread is the noise floor. A candidate trains one;
        if it clears the bar against the best's mean (the best now, not when it was proposed), a second seed
        must confirm it (the mean of both must still clear the bar against the best then) before the branch
        advances; otherwise it is `unconfirmed`.
        """
        pending = flight.pending
        failed = next((t for t in pending.trials if not t.ok), None)
        if flight.is_baseline:
            if failed is not None:
                return self._fail_trial(flight, failed, tail)
            seeds = [t.seed for t in pending.trials]
            reason = f"baseline: the unchanged code on seeds {seeds}, the reference for every later run"
            return self._decided(flight, RunStatus.KEEP, reason, noise_floor([self._seeds(pending)]))
        noise = night_noise(self.records)
        best = best_run(self.records)
        first = pending.trials[0]
        if not first.ok:
            return self._fail_trial(flight, first, tail)
        verdict = decide(first.metrics_val, best.metrics_val, best.run_id, noise)
        if not verdict.keep:
            return self._decided(flight, RunStatus.DISCARD, verdict.reason, noise)
        if len(pending.trials) < 2:
            need = self._trial_estimate()
            if need > self.remaining():
                reason = (
                    f"seed {first.seed} cleared the bar ({verdict.reason}), but confirming it with a "
                    f"second seed needs about {reports.fmt_duration(need)} and the night has "
                    f"{reports.fmt_duration(max(0.0, self.remaining()))} left"
                )
                return self._decided(flight, RunStatus.UNCONFIRMED, reason, noise)
            self.console.print(
                f"  {flight.run_id} · cleared the bar on seed {first.seed}: confirming with another seed"
            )
            flight.queued.append(self._trial_job(flight, 1))
            return
        confirmation = pending.trials[1]
        if not confirmation.ok:
            reason = (
                f"seed {first.seed} cleared the bar, but the confirmation run (seed {confirmation.seed}) "
                f"failed: {confirmation.reason}"
            )
            return self._decided(flight, RunStatus.UNCONFIRMED, reason, noise, error_tail=tail)
        seeds = [t.seed for t in pending.trials]
        confirmed = decide(mean_metrics(self._seeds(pending)), best.metrics_val, best.run_id, noise)
        if not confirmed.keep:
            reason = (
                f"seed {first.seed} cleared the bar; the mean of seeds {seeds} did not: {confirmed.reason}"
            )
            return self._decided(flight, RunStatus.UNCONFIRMED, reason, noise)
        self._decided(flight, RunStatus.KEEP, f"confirmed on seeds {seeds}: {confirmed.reason}", noise)

    @staticmethod
    def _seeds(pending: PendingRun) -> list[dict]:
        return [t.metrics_val for t in pending.trials if t.ok]

    def _fail_trial(self, flight: Flight, trial: Trial, tail: str) -> None:
        """A seed that crashed or timed out: the run is a crash or timeout, with that seed's log tail."""
        pending = flight.pending
        reason = trial.reason if len(pending.trials) == 1 else f"seed {trial.seed}: {trial.reason}"
        self._record(
            flight,
            pending.record,
            status=trial.status,
            reason=reason,
            error_tail=tail,
            trials=pending.trials,
            metrics_val=mean_metrics(self._seeds(pending)),
        )

    def _decided(
        self,
        flight: Flight,
        status: RunStatus,
        reason: str,
        noise: NoiseFloor,
        error_tail: str | None = None,
    ) -> None:
        """Record a judged run; a kept one is judged on test first (every seed, side by side)."""
        if status != RunStatus.KEEP:
            return self._record(
                flight,
                flight.pending.record,
                status=status,
                reason=reason,
                metrics_val=mean_metrics(self._seeds(flight.pending)),
                trials=flight.pending.trials,
                noise=noise,
                error_tail=error_tail,
            )
        flight.verdict, flight.noise = reason, noise
        for trial in flight.pending.trials:
            if trial.ok:
                test = self._job(
                    flight, "eval test", self.paths.runs / trial.directory, split="test", train=False
                )
                flight.queued.append(test)
                flight.tests += 1

    def _kept(self, flight: Flight) -> None:
        """A keep whose test split is judged: it becomes the best, unless a run kept meanwhile beat it."""
        pending = flight.pending
        metrics = mean_metrics(self._seeds(pending))
        noise = flight.noise
        best = best_run(self.records)
        status, reason = RunStatus.KEEP, flight.verdict
        if best is not None and not flight.is_baseline:  # the best may have changed since the decision
            again = decide(metrics, best.metrics_val, best.run_id, noise)
            if not again.keep:
                status = RunStatus.DISCARD
                reason = f"{flight.verdict}; but {best.run_id} was kept meanwhile: {again.reason}"
        tests = [t.metrics_test for t in pending.trials if t.metrics_test]
        if status == RunStatus.KEEP and not flight.is_baseline:
            self.workspace.reset(pending.record["commit"])  # the branch tip is the best commit
            self.workspace.repo.git.update_ref("-d", f"refs/harness/{self.settings.tag}/{flight.run_id}")
        self._record(
            flight,
            pending.record,
            status=status,
            reason=reason,
            metrics_val=metrics,
            metrics_test=mean_metrics(tests) if tests else None,
            trials=pending.trials,
            noise=noise,
        )

    def _record(self, flight: Flight, record: dict, **fields: object) -> None:
        """Write the run's report, then its ledger line (the commit point), then the summary."""
        run = flight.run
        self._phase(flight, "report")
        record = {k: v for k, v in record.items() if k not in fields}
        final = RunRecord(**{**record, **fields}, timings=run.timings, finished_at=now())
        reports.render_run(self.paths, final, [*self.records, final], painter=self.painter)
        t = run.timings
        t.overhead_s = max(0.0, time.monotonic() - run.started - (t.total_s - t.overhead_s))
        final = final.model_copy(update={"timings": t, "finished_at": now()})
        with deferred_interrupt():
            self.ledger.append(final)
            self.records.append(final)
            self.info.spent_s = self.spent()
            self.info.write(self.paths)
        (self.paths.run_dir(run.run_id) / PENDING_FILE).unlink(missing_ok=True)
        del self.flights[run.run_id]
        if flight.tree is not None:
            self.workers.forget(flight.tree)
            shutil.rmtree(flight.tree, ignore_errors=True)
        with self._lock:
            self._write_activity()
        if time.monotonic() - self._summary_at >= SUMMARY_EVERY_S:
            reports.render_summary(self.paths, painter=self.painter)
            self._summary_at = time.monotonic()
        self._report_result(final)
        if final.is_baseline and final.status != RunStatus.KEEP:  # every later run is judged against it
            raise NightEnded(f"the baseline run failed ({final.reason}); fix it before a night")

    def _finish(self, reason: str, finished: bool) -> None:
        self.paths.current.unlink(missing_ok=True)
        self.info.end_reason = reason
        self.info.finished_at = now() if finished else None
        self.info.spent_s = self.spent()
        self.info.write(self.paths)
        summary = reports.render_summary(self.paths)
        self.console.print(f"[bold]night {self.settings.tag} ended:[/bold] {reason}. Summary: {summary}")
        if not finished:
            self.console.print(f"continue it with `harness run --resume {self.settings.tag}`")

    # ----------------------------------------------------------------------------------- the budget

    def spent(self) -> float:
        """Seconds of the budget spent: before this process, and since it took the night over."""
        return self.spent_before + (time.monotonic() - self.started)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def _estimate(self) -> float:
        """Seconds the next run will take: the measured phases of earlier runs, or guesses at first.

        The baseline trains every one of its seeds (side by side when workers allow); a candidate is
        counted for one seed: its confirmation starts only if it fits in what is left then.
        """
        records = self.records
        agent = [r.timings.agent_s for r in records if not r.is_baseline]
        overhead = [r.timings.overhead_s for r in records]
        d = DEFAULT_ESTIMATES
        seeds = 1 if records else -(-self.settings.baseline_seeds // self.settings.workers)
        return (
            (0.0 if not records else _typical(agent, self.agent.typical_s))
            + _typical(overhead, d["overhead_s"] + d["smoke_s"])
            + seeds * self._trial_estimate()
        )

    def _trial_estimate(self) -> float:
        """Seconds one seed takes: training (the budget and its startup, as measured) and the val judge."""
        trials = [t for r in self.records for t in r.trials if t.ok]
        d = DEFAULT_ESTIMATES
        return _typical([t.train_s for t in trials], self.settings.per_run_s + d["startup_s"]) + _typical(
            [t.eval_s for t in trials],
            5.0 + 0.03 * self.settings.eval_samples,  # ~20 s for the judge's 512 samples
        )

    def _fits(self) -> bool:
        need, left = self._estimate(), self.remaining()
        if need > left:
            self.console.print(
                f"[yellow]{reports.fmt_duration(left)} left, a run needs about {reports.fmt_duration(need)}: "
                "starting no more runs[/yellow]"
            )
            return False
        return True

    def _eval_timeout(self) -> float:
        return max(EVAL_TIMEOUT_S, 0.5 * self.settings.per_run_s)

    def _train_timeout(self) -> float:
        """Wall clock allowed to one training: TRAIN_SLACK budgets, never past the night's end, plus grace."""
        return min(TRAIN_SLACK * self.settings.per_run_s, max(0.0, self.remaining())) + self.settings.grace

    # ------------------------------------------------------------------------------------ the agent

    def _note_model(self, meta: dict) -> None:
        """night.json names the LLM that answered, when the night did not name one (`--model` left out)."""
        answered = meta.get("model")
        if self.info.agent_model is None and isinstance(answered, str) and answered:
            self.info.agent_model = answered
            self.info.write(self.paths)

    def _context(self, flight: Flight) -> AgentContext:
        """What the agent sees for one proposal: the night so far, the runs in flight, and the tree of the
        best commit now (a copy of its own commit's files: no run or other proposal changes it under it)."""
        run, records = flight.run, self.records
        run_dir = self.paths.run_dir(run.run_id)
        tree = flight.proposal_tree = self._base_tree(flight.base_commit)
        best, baseline = best_run(records), baseline_run(records)
        experiment = self._experiment
        feedback = [
            reports.feedback(self.paths, r, records, root=self.paths.root) for r in records[-FEEDBACK_RUNS:]
        ]
        in_flight = [f for f in self.flights.values() if f is not flight and f.hypothesis]
        steering = steering_for(self.paths)
        flight.steering = steering.seen
        state = PromptState(
            tag=self.settings.tag,
            index=run.index,
            remaining_s=max(0.0, self.remaining()),
            per_run_s=self.settings.per_run_s,
            model_kinds=self.settings.model_kinds,
            experiment=experiment,
            experiment_text=(tree / experiment).read_text(),
            best=best,
            baseline=baseline,
            board=leaderboard(records, top=10),
            memory=self.memory.write(self.earlier + records),
            steering=steering,
            repeat=str(flight.sent_back) if flight.sent_back else "",
            plateau=self._plateau(records, best),
            feedback=feedback,
            noise=night_noise(records),
            in_flight=[(f.run_id, f.hypothesis) for f in in_flight],
        )
        loop_file = tree / LOOP_FILE
        loop_text = loop_file.read_text() if loop_file.exists() else ""
        prompt = reports.render_template("propose.md.j2", s=state)
        atomic_write_text(run_dir / "prompt.md", f"{loop_text}\n\n{prompt}")
        return AgentContext(
            run_id=run.run_id,
            index=run.index,
            workspace=tree,
            run_dir=run_dir,
            prompt=prompt,
            history=list(records),
            experiment=experiment,
            model_kinds=self.settings.model_kinds,
            per_run_s=self.settings.per_run_s,
            remaining_s=max(0.0, self.remaining()),
            allowed=ALLOWED_TEXT,
            rules=loop_text,
            earlier=self.earlier,
            in_flight=[
                InFlight(
                    f.run_id, f.hypothesis, (f.pending.record.get("agent_meta") or {}) if f.pending else {}
                )
                for f in in_flight
            ],
        )

    def _plateau(self, records: list[RunRecord], best: RunRecord | None) -> PlateauState | None:
        after = self.settings.plateau_after or night_plateau(self.info)
        since = runs_since_keep(records)
        return PlateauState(since, after, revisit_candidates(records, best)) if since >= after else None

    def _base_tree(self, commit: str) -> Path:
        """The files of `commit` for the agents proposing on it: one read-only copy for all of them (128
        proposals asked at once on the same best commit exported it 128 times, 25 ms each on the one
        thread), removed when the last of them has answered."""
        tree, users = self._base_trees.get(commit, (None, 0))
        if tree is None:
            tree = export_tree(self.workspace.repo, commit, self.paths.runs / "trees" / f"base-{commit[:12]}")
        self._base_trees[commit] = (tree, users + 1)
        return tree

    def _release_base_tree(self, commit: str) -> None:
        tree, users = self._base_trees.pop(commit)
        if users > 1:
            self._base_trees[commit] = (tree, users - 1)
        else:
            shutil.rmtree(tree, ignore_errors=True)

    # ------------------------------------------------------------------------------------ progress

    def _on_phase(self, run_id: str, phase: str) -> None:
        """A job's step starts (called from a worker's thread)."""
        flight = self.flights.get(run_id)
        if flight is not None:
            self._phase(flight, phase)

    def _phase(self, flight: Flight, phase: str) -> None:
        with self._lock:
            flight.phase, flight.phase_started = phase, time.monotonic()
            self._write_activity()
        if phase != "report":
            self.console.print(
                f"  {flight.run_id} · {phase}"
                + (f" · {reports.one_line(flight.hypothesis, 90)}" if phase == "validate" else "")
            )

    def _write_activity(self) -> None:
        states = [
            RunningState(run_id=f.run_id, phase=f.phase, hypothesis=f.hypothesis, started_at=f.run.started_at)
            for f in sorted(list(self.flights.values()), key=lambda f: f.run.index)  # a snapshot: see _lock
        ]
        NightActivity(runs=states).write(self.paths)

    @contextmanager
    def _spinner(self) -> Iterator[None]:
        """A live line under the log (terminals only: logs stay clean): every run in flight, its phase and
        how long it has been in it."""
        if not self.console.is_terminal:
            yield
            return
        with self.console.status("") as status:
            self._status = status
            try:
                yield
            finally:
                self._status = None

    def _tick(self) -> None:
        if self._status is None:
            return
        clock = time.monotonic()
        with self._lock:
            parts = [
                f"{f.run_id} {f.phase} {reports.fmt_duration(clock - f.phase_started)}"
                for f in sorted(self.flights.values(), key=lambda f: f.run.index)
            ]
        left = reports.fmt_duration(max(0.0, self.remaining()))
        self._status.update(" · ".join([*parts, f"{left} of the night left"]))

    def _announce(self, flight: Flight) -> None:
        left = reports.fmt_duration(max(0.0, self.remaining()))
        total = reports.fmt_duration(self.info.budget_s)
        best = flight.best
        best_text = (
            f"best {best.primary:.6g} ({best.run_id})" if best and best.primary is not None else "no best yet"
        )
        self.console.print(f"[bold]run {flight.run_id}[/bold] · {left} of {total} left · {best_text}")

    def _report_result(self, record: RunRecord) -> None:
        colors = {
            "keep": "green",
            "discard": "white",
            "unconfirmed": "magenta",
            "crash": "red",
            "timeout": "red",
            "rejected": "yellow",
            "lost": "red",
        }
        color = colors[record.status.value]
        mse = f" · val mse {record.primary:.6g}" if record.primary is not None else ""
        who = f"{record.run_id} " if self.settings.workers > 1 else ""
        self.console.print(
            f"  {who}[{color}]{record.status.value}[/{color}]{mse} · {reports.one_line(record.reason, 120)}"
        )
