"""Running the agent's code: the smoke step, training and the judge, each a subprocess in the worktree.

Each gets a hard timeout (its whole process group is killed), an environment without secrets, and its
output in a log file in the run directory; a failure comes back as a status and the log's tail, never as an
exception, so the night goes on.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from harness.forkserver import ForkServer, limit_this_process, server_for
from harness.ledger import RunStatus
from harness.secrets import clean_env, redact
from models.errors import EXIT_NAN
from models.openmp import DEFAULT_THREADS, WAIT_POLICY
from models.predictor import ATTACHED_ENV

TAIL_LINES = 30
KILL_WAIT_S = 5.0  # from SIGTERM to SIGKILL
REAP_WAIT_S = 30.0  # for a killed process to be reaped
POLL_S = 0.05  # how often the harness looks whether a subprocess ended
CPU_KILL_MARGIN_S = 5  # past the CPU limit's SIGXCPU, SIGKILL: for a training that ignores SIGXCPU
FORKSERVER_ENV = "WORLDLOOP_FORKSERVER"
"""Set to 0 to start every subprocess as a fresh interpreter (Popen) instead of forking it from the fork
server (harness/forkserver.py): slower by an `import torch` each, and otherwise the same."""
CPU_LIMIT_REASON = "training used more CPU time than its budget"
MIN_CPU_ALLOWANCE_S = 30.0  # CPU-s a training may always use outside its budget (see Executor.cpu_limit)


class Cancelled(Exception):
    """The executor's `cancel` event was set (Ctrl-C, the night ending): its subprocess was killed."""


@dataclass
class StepResult:
    """How a subprocess ended: ok, or a crash/timeout with the reason and the end of its log."""

    ok: bool
    seconds: float
    status: RunStatus | None = None  # CRASH or TIMEOUT when not ok
    reason: str = ""
    tail: str = ""
    cpu_s: float | None = None  # CPU time of the subprocess (all its threads), from its rusage
    code: int | None = None  # its exit code (negative: the signal that killed it); None when timed out


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    if not path.exists():
        return ""
    text = path.read_text(errors="replace")
    return "\n".join(text.rstrip().splitlines()[-lines:])


GPU_ENV = "CUDA_VISIBLE_DEVICES"


def visible_gpus() -> list[str]:
    """The GPUs this process may give its runs: CUDA_VISIBLE_DEVICES when it is set, else those `nvidia-smi
    -L` lists (none without an NVIDIA driver). Found without torch: the harness never initializes CUDA."""
    if GPU_ENV in os.environ:
        return [g.strip() for g in os.environ[GPU_ENV].split(",") if g.strip() not in ("", "-1")]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, _ in enumerate(line for line in listed.splitlines() if line.startswith("GPU "))]


def usable_cores() -> list[int]:
    """The cores this process may run on (every core, where the OS does not say)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def split_cores(cores: Sequence[int], workers: int) -> list[list[int]]:
    """The cores of `workers` parallel runs: equal shares, in order (2 runs on 2 cores get one each).

    Shares are equal because a run's CPU budget is its per-core budget times its cores, and a run with more
    threads trains fewer samples per CPU-second: unequal shares would make parallel runs unfair. Cores left
    over (5 cores, 2 runs) stay with the harness.
    """
    if workers < 1:
        raise ValueError(f"need at least one worker, got {workers}")
    if workers > len(cores):
        raise ValueError(f"{workers} parallel runs need at least {workers} cores; there are {len(cores)}")
    share = len(cores) // workers
    return [list(cores[i * share : (i + 1) * share]) for i in range(workers)]


class _Child(Protocol):
    """A started subprocess: its pid (also its process group) and a way to learn how it ended."""

    pid: int

    def poll(self, timeout_s: float = 0.0) -> tuple[int, float | None] | None:
        """(exit code, CPU seconds) once it has ended, else None after waiting up to `timeout_s`."""
        ...


@dataclass
class _PopenChild:
    """A subprocess started by Popen: reaped here with wait4, which Popen does not use, for its rusage."""

    proc: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self, timeout_s: float = 0.0) -> tuple[int, float | None] | None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            except ChildProcessError:  # reaped already (by Popen's own bookkeeping)
                return self.proc.returncode if self.proc.returncode is not None else -signal.SIGKILL, None
            if pid:
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                return self.proc.returncode, usage.ru_utime + usage.ru_stime
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))


@dataclass
class _ForkedChild:
    """A subprocess forked by the fork server, which reaps it and reports its end."""

    server: ForkServer
    pid: int

    def poll(self, timeout_s: float = 0.0) -> tuple[int, float | None] | None:
        try:
            return self.server.poll(self.pid, timeout_s)
        except OSError:  # the server died, and the kernel killed its forks with it (PR_SET_PDEATHSIG)
            return -signal.SIGKILL, None


def _kill_group(child: _Child) -> tuple[int, float | None]:
    """SIGTERM the process group, then SIGKILL what is left: no training outlives its timeout. Returns how
    the child ended: its exit code and CPU seconds."""
    for sig, wait_s in ((signal.SIGTERM, KILL_WAIT_S), (signal.SIGKILL, REAP_WAIT_S)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:  # the group is gone; the child ended (and may wait to be reaped)
            wait_s = REAP_WAIT_S
        if (ended := child.poll(wait_s)) is not None:
            return ended
    return -signal.SIGKILL, None


class Executor:
    """Runs `python -m models.*` in the worktree (so the agent's code is what runs) on the night's dataset."""

    def __init__(
        self,
        worktree: Path,
        dataset: Path,
        python: str = sys.executable,
        cores: Sequence[int] | None = None,
        judge_root: Path | None = None,
        threads: int = DEFAULT_THREADS,
        cancel: threading.Event | None = None,
        gpus: Sequence[str] | None = None,
    ) -> None:
        """`cores`: the CPU cores every subprocess may run on (default: the harness's own affinity; the
        scheduler puts a one-thread training on the least busy of them); parallel executors get disjoint ones
        from `split_cores`. `threads`: the training's threads, at most one per core (DEFAULT_THREADS says
        why one). `judge_root`: the tree the judge runs from, a snapshot of the pinned files
        (harness.pinned.extract_judge); None, the worktree itself (for a tree nobody else edits). `cancel`:
        set from another thread, it kills the subprocess running and raises Cancelled in its caller. `gpus`:
        the GPUs its subprocesses see (CUDA_VISIBLE_DEVICES; empty: none, they run on CPU); None leaves the
        environment's."""
        self.gpus = None if gpus is None else list(gpus)
        self.cancel = cancel
        self.judge_root = None if judge_root is None else Path(judge_root)
        self.worktree = Path(worktree)
        self.dataset = Path(dataset).resolve()
        self.python = python
        allowed = usable_cores()
        self.cores = sorted(set(cores)) if cores is not None else allowed
        if not self.cores or not set(self.cores) <= set(allowed):
            raise ValueError(
                f"cores {list(cores or [])} are not a non-empty subset of this process's {allowed}"
            )
        if threads < 1:
            raise ValueError(f"a run needs at least one thread, got {threads}")
        self.threads = min(threads, len(self.cores))
        if self._forking():
            with contextlib.suppress(OSError):  # a server that cannot start is reported at the first run
                server_for(self.python, self._env())  # its imports overlap what the caller does before it

    @property
    def judge_device(self) -> str:
        """Where the judge runs the model: the run's GPU when it has one (a 224 px model on CPU would take
        longer to judge than to train), else the CPU."""
        return "cuda" if self.gpus else "cpu"

    @staticmethod
    def _forking() -> bool:
        return os.environ.get(FORKSERVER_ENV, "1") != "0"

    def thread_env(self) -> dict[str, str]:
        """The subprocesses' thread settings: `threads` of them (torch's and numpy's BLAS), waiting as
        WAIT_POLICY says. With one thread the fork server has no thread but its main one when it forks."""
        threads = str(self.threads)
        names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
        return {**dict.fromkeys(names, threads), **WAIT_POLICY}

    def _env(self) -> dict[str, str]:
        """The subprocesses' environment, without their PYTHONPATH: no secrets, the thread settings."""
        env = clean_env({"PYTHONUNBUFFERED": "1", **self.thread_env()})
        env.pop("OMP_WAIT_POLICY", None)  # WAIT_POLICY decides how threads wait, not the harness's env
        return env

    def _start(
        self,
        args: list[str],
        log: Path,
        cpu_limit_s: float | None,
        predictor: tuple[Path, Path] | None = None,
    ) -> _Child:
        """`python -m ARGS` in the worktree on this executor's cores, in a process group of its own (a
        timeout kills every child too): forked from the fork server, or a fresh interpreter when
        FORKSERVER_ENV says 0. `predictor`: for the judge, (run directory, tree) of the predictor
        (`models.serve` in that tree) the server forks beside it, so that the judge need not start one
        (models/predictor.ATTACHED_ENV)."""
        base_env = self._env()
        gpus = {} if self.gpus is None else {GPU_ENV: ",".join(self.gpus)}  # a run's own, not its server's
        env = {**base_env, **gpus, "PYTHONPATH": str(self.worktree)}
        if self._forking():
            companion = None
            if predictor is not None:
                run_dir, root = (str(path.resolve()) for path in predictor)
                companion = {
                    "module": "models.serve",
                    "args": [run_dir, "--device", self.judge_device],  # as the judge would start it
                    "cwd": root,
                    "env": {**base_env, **gpus, "PYTHONPATH": root},
                    "announce_env": ATTACHED_ENV,
                }
            try:
                server = server_for(self.python, base_env)
                margin = CPU_KILL_MARGIN_S
                cwd = str(self.worktree)
                pid = server.spawn(
                    args[0], args[1:], cwd, env, str(log), self.cores, cpu_limit_s, margin, companion
                )
                return _ForkedChild(server, pid)
            except OSError as err:  # no server (it would not start, or died): a fresh interpreter does it
                print(f"warning: the fork server failed ({err}); starting {args[0]} as a fresh interpreter")
        with open(log, "w") as out:
            return _PopenChild(
                subprocess.Popen(
                    [self.python, "-m", *args],
                    cwd=self.worktree,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                    preexec_fn=lambda: limit_this_process(self.cores, cpu_limit_s, CPU_KILL_MARGIN_S),
                )
            )

    def _run(
        self,
        what: str,
        args: list[str],
        log: Path,
        timeout_s: float,
        cpu_limit_s: float | None = None,
        predictor: tuple[Path, Path] | None = None,
    ) -> StepResult:
        """`python -m ARGS` on this executor's cores, killed past `timeout_s` of wall time or (SIGXCPU, from
        the kernel) past `cpu_limit_s` of CPU time; its CPU time comes back in `cpu_s`."""
        log.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        child = self._start(args, log, cpu_limit_s, predictor)
        try:
            while (ended := child.poll(POLL_S)) is None:
                if self.cancel is not None and self.cancel.is_set():
                    raise Cancelled(what)
                elapsed = time.monotonic() - start
                if elapsed >= timeout_s:
                    _, cpu_s = _kill_group(child)
                    return StepResult(
                        False,
                        time.monotonic() - start,
                        RunStatus.TIMEOUT,
                        f"{what} passed its hard timeout of {timeout_s:.0f}s and was killed",
                        redact(log_tail(log)),
                        cpu_s,
                    )
        except BaseException:  # Ctrl-C or anything else: never leave a training behind
            _kill_group(child)
            raise
        code, cpu_s = ended
        seconds = time.monotonic() - start
        if code == 0:
            return StepResult(True, seconds, cpu_s=cpu_s, code=0)
        tail = redact(log_tail(log))
        over_cpu = cpu_limit_s is not None and (
            code == -signal.SIGXCPU
            or (code == -signal.SIGKILL and cpu_s is not None and cpu_s >= cpu_limit_s)
        )
        if over_cpu:
            reason = f"{CPU_LIMIT_REASON}: it was killed at {cpu_s:.0f} CPU-s, its limit is {cpu_limit_s:.0f}"
        elif code == EXIT_NAN:
            reason = f"{what} stopped on a NaN/inf loss"
        elif code < 0:
            reason = f"{what} was killed by signal {-code}"
        else:
            last = next((line for line in reversed(tail.splitlines()) if line.strip()), "")
            reason = f"{what} exited with code {code}" + (f": {last.strip()}" if last else "")
        return StepResult(False, seconds, RunStatus.CRASH, reason, tail, cpu_s, code)

    def smoke(self, experiment: str, log: Path, timeout_s: float = 120.0) -> StepResult:
        """One optimizer step and one `predict` call on a real batch (`models.train --smoke`)."""
        args = ["models.train", "--config", experiment, "--dataset", str(self.dataset), "--smoke", "--quiet"]
        return self._run("the smoke step", args, log, timeout_s)

    def train(
        self,
        experiment: str,
        run_dir: Path,
        budget_s: float,
        grace_s: float,
        seed: int | None = None,
        timeout_s: float | None = None,
    ) -> StepResult:
        """Train for `budget_s` of compute on this executor's cores (on CPU, `budget_s` x threads CPU-seconds
        of the training loop; on a GPU, its wall time), with `--seed` when given.

        Killed past `timeout_s` of wall time (default budget + grace: startup, saving and the val loss live
        in the grace; a caller whose machine may be busy passes more, since a slowed run takes longer), and
        past `cpu_limit(budget_s, grace_s)` CPU-seconds (RLIMIT_CPU, enforced by the kernel): models/train.py
        is the agent's code, so its own clock is not trusted to end the run.
        """
        args = [
            "models.train",
            "--config",
            experiment,
            "--budget",
            f"{budget_s:g}s",
            "--out",
            str(run_dir),
            "--dataset",
            str(self.dataset),
            "--quiet",
        ]
        if seed is not None:
            args += ["--seed", str(seed)]
        timeout_s = budget_s + grace_s if timeout_s is None else timeout_s
        limit = self.cpu_limit(budget_s, grace_s)
        return self._run("training", args, run_dir / "train.log", timeout_s, limit)

    def cpu_limit(self, budget_s: float, grace_s: float) -> float:
        """CPU-seconds a training process may use in all: its budget on every thread, plus what lies outside
        the budget (startup with `import torch`, copying the canvases, the warm-up step, saving, the val loss;
        about 12 CPU-s for the baseline) for which we allow its threads fully for the grace period, and never
        less than MIN_CPU_ALLOWANCE_S so that a short --grace does not kill an honest startup. Generous on
        purpose: it stops a training that ignores its budget; `cpu_s` in the ledger shows what each used."""
        return budget_s * self.threads + max(grace_s * self.threads, MIN_CPU_ALLOWANCE_S)

    def evaluate(
        self, run_dir: Path, split: str, max_samples: int, timeout_s: float, task: str | None = None
    ) -> tuple[StepResult, dict | None]:
        """The judge on one split; its metrics, read back from `eval_<split>.json`.

        The judge runs from `judge_root` (its cwd and PYTHONPATH), where no file of the agent's is; it runs
        the model in a predictor process of its own in the worktree, which only exchanges pixels with it.
        `task`: the experiment config, a path in `judge_root`, whose [canvas] and [data] the run is judged
        on; a night names its own (without it, the judge takes `experiments/<kind>.toml` for the kind the
        model reports). The predictor's deadline comes a margin before `timeout_s`, so a hung model is
        reported as such rather than as a killed judge.
        """
        margin_s = 15.0  # the judge's own start-up and writing, outside the predictor's time
        root = (self.judge_root or self.worktree).resolve()
        args = [
            "models.evaluate",
            str(Path(run_dir).resolve()),
            "--split",
            split,
            "--dataset",
            str(self.dataset),
            "--max-samples",
            str(max_samples),
            "--predictor-root",
            str(self.worktree.resolve()),
            "--timeout",
            f"{max(1.0, timeout_s - margin_s):g}",
            "--device",
            self.judge_device,
        ]
        if task is not None:
            args += ["--task", str(root / task)]
        judge = copy.copy(self)
        judge.worktree = root  # `_run` runs `python -m` in the executor's tree: here, the judge's
        metrics_file = run_dir / f"eval_{split}.json"
        metrics_file.unlink(missing_ok=True)
        log = run_dir / f"eval_{split}.log"
        predictor = (Path(run_dir), self.worktree)
        result = judge._run(f"evaluation on {split}", args, log, timeout_s, predictor=predictor)
        if not result.ok:
            return result, None
        try:
            return result, json.loads(metrics_file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            return StepResult(
                False, result.seconds, RunStatus.CRASH, f"no readable {metrics_file.name}: {err}"
            ), None
