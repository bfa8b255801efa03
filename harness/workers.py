"""Where a night's runs execute: the jobs a run is made of, and the workers that run them.

A run is a few jobs: its first seed (smoke step, training, the judge on val), a confirmation seed, the judge
on test once kept. A job is self-contained: the tree of the run's commit (harness/trees.py), the night's
dataset and pinned judge, a trial directory to fill. Workers run jobs side by side, each on its own share
of the machine, and hand back what happened; the night (harness/loop.py) alone decides, writes git and the
ledger. `LocalWorkers` runs N jobs at once on this machine; `RayWorkers` (harness/ray_workers.py) places
them on a Ray cluster.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from harness.executor import Executor, StepResult, split_cores, usable_cores, visible_gpus
from harness.ledger import now
from models.errors import WorldloopError
from models.openmp import DEFAULT_THREADS


@dataclass(frozen=True)
class Job:
    """One unit of a run's work on one worker.

    `train`: train `seed` for `budget_s` of compute into `directory`, then judge it on `split` (val). Without
    `train`, only the judge runs on an already trained `directory` (a kept run's test split). `smoke` puts
    the smoke step first (a run's first job): a failure there ends the job before any training.
    """

    run_id: str
    label: str  # the phase shown while it runs: train, train seed 1001, eval test, ...
    directory: Path  # the trial's run directory on the head node
    experiment: str
    task: str  # the experiment config, in the judge's tree, whose task the run is judged on
    eval_samples: int
    eval_timeout_s: float
    split: str = "val"
    seed: int | None = None
    train: bool = True
    smoke: bool = False
    budget_s: float = 0.0
    grace_s: float = 0.0
    train_timeout_s: float = 0.0


@dataclass
class JobResult:
    """What a job did: each step's result (None for a step it did not reach) and the judge's metrics."""

    worker: str
    started_at: datetime = field(default_factory=now)
    smoke: StepResult | None = None
    trained: StepResult | None = None
    judged: StepResult | None = None
    metrics: dict | None = None
    lost: str | None = None  # its worker died under it (twice, with Ray's retry): why

    @property
    def steps_s(self) -> float:
        """Seconds its subprocesses ran (the rest of a job's time is the worker's own overhead)."""
        return sum(s.seconds for s in (self.smoke, self.trained, self.judged) if s is not None)

    @property
    def failed(self) -> StepResult | None:
        """The step that failed, if one did."""
        for step in (self.smoke, self.trained, self.judged):
            if step is not None and not step.ok:
                return step
        if self.judged is not None and self.metrics is None:
            return self.judged
        return None


PhaseCallback = Callable[[str, str], None]  # (run id, phase): a job's steps as they start


def run_job(job: Job, executor: Executor, worker: str, on_phase: PhaseCallback | None = None) -> JobResult:
    """Run a job's steps in order with `executor` (bound to the run's tree and the worker's cores)."""
    result = JobResult(worker)

    def phase(name: str) -> None:
        if on_phase is not None:
            on_phase(job.run_id, name)

    if job.smoke:
        phase("smoke")
        result.smoke = executor.smoke(job.experiment, job.directory / "smoke.log")
        if not result.smoke.ok:
            return result
    if job.train:
        phase(job.label)
        result.trained = executor.train(
            job.experiment, job.directory, job.budget_s, job.grace_s, job.seed, job.train_timeout_s
        )
        if not result.trained.ok:
            return result
        phase(job.label.replace("train", "eval", 1))
    else:
        phase(job.label)
    result.judged, result.metrics = executor.evaluate(
        job.directory, job.split, job.eval_samples, job.eval_timeout_s, task=job.task
    )
    return result


class Workers(Protocol):
    """What the night needs of an executor: run a job of a run whose tree is at a path, N at a time."""

    name: str
    count: int
    job_overheads: list[float]  # per finished job: its wall time on the head minus its steps' (benchmarks)

    def free(self) -> int: ...

    def submit(self, job: Job, tree: Path) -> Future[JobResult]: ...

    def describe(self) -> str: ...

    def forget(self, tree: Path) -> None: ...

    def close(self, cancel: bool = False) -> None: ...


def worker_shares(count: int, cpus_per_run: int | None = None) -> list[list[int]]:
    """The cores of `count` local workers: equal shares of this process's cores (`split_cores`), or
    `cpus_per_run` each. WorldloopError, naming the options, when the machine has too few."""
    cores = usable_cores()
    k = cpus_per_run or len(cores) // max(count, 1)
    if count < 1 or k < 1 or count * k > len(cores):
        raise WorldloopError(
            f"--workers {count}"
            + (f" x --cpus-per-run {cpus_per_run}" if cpus_per_run else "")
            + f" needs {count * max(k, 1)} cores; this process may use {len(cores)}"
        )
    return split_cores(cores[: count * k], count)


def gpu_shares(count: int, gpus_per_run: float | None = None) -> list[list[str] | None]:
    """The GPUs of `count` local workers: equal shares of the visible GPUs (`visible_gpus`), or
    `gpus_per_run` each (0: none, the runs train on CPU); None each on a machine without GPUs (the runs see
    the environment as it is). Equal, as the cores are: runs on unequal hardware are not comparable.
    WorldloopError, naming the options, when the machine has too few."""
    gpus = visible_gpus()
    if gpus_per_run is None:
        if not gpus:
            return [None] * count
        per = len(gpus) // max(count, 1)
    elif gpus_per_run != int(gpus_per_run) or gpus_per_run < 0:
        raise WorldloopError(f"--gpus-per-run {gpus_per_run:g}: local workers take whole GPUs (0 for none)")
    else:
        per = int(gpus_per_run)
    if (gpus_per_run is None and per == 0) or per * count > len(gpus):
        raise WorldloopError(
            f"--workers {count} needs {count * max(per, 1)} GPUs ({max(per, 1)} each); this process may use "
            f"{len(gpus)}: fewer workers, or --gpus-per-run 0 to train on CPU"
        )
    return [gpus[i * per : (i + 1) * per] for i in range(count)]


@dataclass(frozen=True)
class _Slot:
    name: str
    cores: list[int]
    gpus: list[str] | None = None


@dataclass
class LocalWorkers:
    """`count` jobs at once on this machine, each on its own equal share of the cores (`split_cores`, or
    `cpus_per_run` each), with `threads` training threads. A job is a thread here that only waits on its
    subprocesses (forked from the one fork server): the cores are its subprocesses'."""

    dataset: Path
    judge_root: Path
    count: int = 1
    cpus_per_run: int | None = None
    gpus_per_run: float | None = None
    threads: int = DEFAULT_THREADS
    on_phase: PhaseCallback | None = None
    name: str = "local"
    _slots: list[_Slot] = field(init=False)
    _free: queue.SimpleQueue = field(init=False)
    _pool: ThreadPoolExecutor = field(init=False)
    _cancel: threading.Event = field(init=False)
    job_overheads: list[float] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        shares = worker_shares(self.count, self.cpus_per_run)
        gpus = gpu_shares(self.count, self.gpus_per_run)
        self._slots = [_Slot(f"w{i}", share, gpus[i]) for i, share in enumerate(shares)]
        self._free = queue.SimpleQueue()
        for slot in self._slots:
            self._free.put(slot)
        self._pool = ThreadPoolExecutor(self.count, thread_name_prefix="worker")
        self._cancel = threading.Event()

    def free(self) -> int:
        return self._free.qsize()

    def describe(self) -> str:
        shares = ", ".join(
            f"{s.name} cores {','.join(map(str, s.cores))}" + (f" GPUs {','.join(s.gpus)}" if s.gpus else "")
            for s in self._slots
        )
        return f"{self.count} local worker{'s' * (self.count > 1)} ({shares})"

    def submit(self, job: Job, tree: Path) -> Future[JobResult]:
        """Start `job` on a free worker (the caller checks `free()` first)."""
        slot = self._free.get_nowait()

        def work() -> JobResult:
            start = time.monotonic()
            try:
                executor = Executor(
                    tree,
                    self.dataset,
                    cores=slot.cores,
                    judge_root=self.judge_root,
                    threads=self.threads,
                    cancel=self._cancel,
                    gpus=slot.gpus,
                )
                result = run_job(job, executor, slot.name, self.on_phase)
                self.job_overheads.append(time.monotonic() - start - result.steps_s)
                return result
            finally:
                self._free.put(slot)

        return self._pool.submit(work)

    def forget(self, tree: Path) -> None:
        """A recorded run's tree: nothing of it is kept here (the night removes the directory)."""

    def close(self, cancel: bool = False) -> None:
        """Wait for the jobs running; with `cancel`, kill their subprocesses first (Ctrl-C, a fatal error)."""
        if cancel:
            self._cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
