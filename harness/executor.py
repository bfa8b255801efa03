"""Running the agent's code: the smoke step, training and the judge, each a subprocess in the worktree.

Each gets a hard timeout (its whole process group is killed), an environment without secrets, and its
output in a log file in the run directory; a failure comes back as a status and the log's tail, never as an
exception, so the night goes on.
"""

from __future__ import annotations

import copy
import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.ledger import RunStatus
from harness.secrets import clean_env, redact
from models.errors import EXIT_NAN
from models.openmp import DEFAULT_THREADS, WAIT_POLICY

TAIL_LINES = 30
KILL_WAIT_S = 5.0
POLL_S = 0.05  # how often the harness looks whether a subprocess ended (it reaps with wait4 for the rusage)
CPU_KILL_MARGIN_S = 5  # past the CPU limit's SIGXCPU, SIGKILL: for a training that ignores SIGXCPU
CPU_LIMIT_REASON = "training used more CPU time than its budget"
MIN_CPU_ALLOWANCE_S = 30.0  # CPU-s a training may always use outside its budget (see Executor.cpu_limit)


@dataclass
class StepResult:
    """How a subprocess ended: ok, or a crash/timeout with the reason and the end of its log."""

    ok: bool
    seconds: float
    status: RunStatus | None = None  # CRASH or TIMEOUT when not ok
    reason: str = ""
    tail: str = ""
    cpu_s: float | None = None  # CPU time of the subprocess (all its threads), from its rusage


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    if not path.exists():
        return ""
    text = path.read_text(errors="replace")
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL me when the harness dies (Linux), so a kill -9 of the harness
    leaves no orphan training behind to write into a run directory that --resume will reuse."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


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


def _child_setup(cores: Sequence[int], cpu_limit_s: float | None) -> Callable[[], None]:
    """What the child does before exec: die with the harness, run only on its cores (its threads inherit the
    affinity) and, when given, stop at a CPU-time limit: SIGXCPU at the limit, SIGKILL a little later."""

    def setup() -> None:
        _die_with_parent()
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cores)
        if cpu_limit_s is not None:
            soft, hard = math.ceil(cpu_limit_s), math.ceil(cpu_limit_s) + CPU_KILL_MARGIN_S
            if (ceiling := resource.getrlimit(resource.RLIMIT_CPU)[1]) != resource.RLIM_INFINITY:
                soft, hard = min(soft, ceiling), min(hard, ceiling)  # a process cannot raise its hard limit
            resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
            # SIGXCPU's default action dumps core: not into the agent's worktree
            resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))

    return setup


def _reap(proc: subprocess.Popen, block: bool = False) -> float | None:
    """Collect the child if it ended (with wait4, which Popen does not use) and set its returncode; its CPU
    seconds (user + system, all its threads and the children it waited for), or None while it runs."""
    pid, status, usage = os.wait4(proc.pid, 0 if block else os.WNOHANG)
    if pid == 0:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


def _kill_group(proc: subprocess.Popen) -> float | None:
    """SIGTERM the process group, then SIGKILL what is left: no training outlives its timeout. Returns the
    CPU seconds of the reaped child."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + KILL_WAIT_S
        while sig == signal.SIGTERM and time.monotonic() < deadline:
            if (cpu_s := _reap(proc)) is not None:
                return cpu_s
            time.sleep(POLL_S)
    try:
        return _reap(proc, block=True) if proc.returncode is None else None
    except ChildProcessError:  # reaped already
        return None


class Executor:
    """Runs `python -m models.*` in the worktree (so the agent's code is what runs) on the night's dataset."""

    def __init__(
        self,
        worktree: Path,
        dataset: Path,
        python: str = sys.executable,
        on_tick: Callable[[str, float], None] | None = None,
        cores: Sequence[int] | None = None,
        judge_root: Path | None = None,
        threads: int = DEFAULT_THREADS,
    ) -> None:
        """`cores`: the CPU cores every subprocess may run on (default: the harness's own affinity; the
        scheduler puts a one-thread training on the least busy of them); parallel executors get disjoint ones
        from `split_cores`. `threads`: the training's threads, at most one per core (DEFAULT_THREADS says
        why one). `judge_root`: the tree the judge runs from, a snapshot of the pinned files
        (harness.pinned.extract_judge); None, the worktree itself (for a tree nobody else edits)."""
        self.judge_root = None if judge_root is None else Path(judge_root)
        self.worktree = Path(worktree)
        self.dataset = Path(dataset).resolve()
        self.python = python
        self.on_tick = on_tick
        allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        self.cores = sorted(set(cores)) if cores is not None else allowed or list(range(os.cpu_count() or 1))
        if not self.cores or (allowed is not None and not set(self.cores) <= set(allowed)):
            raise ValueError(
                f"cores {list(cores or [])} are not a non-empty subset of this process's {allowed}"
            )
        if threads < 1:
            raise ValueError(f"a run needs at least one thread, got {threads}")
        self.threads = min(threads, len(self.cores))

    def thread_env(self) -> dict[str, str]:
        """The subprocesses' thread settings: `threads` of them, waiting as WAIT_POLICY says."""
        threads = str(self.threads)
        return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, **WAIT_POLICY}

    def _run(
        self, what: str, args: list[str], log: Path, timeout_s: float, cpu_limit_s: float | None = None
    ) -> StepResult:
        """`python -m ARGS` on this executor's cores, killed past `timeout_s` of wall time or (SIGXCPU, from
        the kernel) past `cpu_limit_s` of CPU time; its CPU time comes back in `cpu_s`."""
        log.parent.mkdir(parents=True, exist_ok=True)
        command = [self.python, "-m", *args]
        env = clean_env({"PYTHONPATH": str(self.worktree), "PYTHONUNBUFFERED": "1", **self.thread_env()})
        env.pop("OMP_WAIT_POLICY", None)  # WAIT_POLICY decides how threads wait, not the harness's env
        start = time.monotonic()
        with open(log, "w") as out:
            proc = subprocess.Popen(
                command,
                cwd=self.worktree,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # its own process group: a timeout kills every child too
                preexec_fn=_child_setup(self.cores, cpu_limit_s),
            )
            try:
                next_tick = 1.0
                while (cpu_s := _reap(proc)) is None:
                    elapsed = time.monotonic() - start
                    if elapsed >= timeout_s:
                        cpu_s = _kill_group(proc)
                        return StepResult(
                            False,
                            time.monotonic() - start,
                            RunStatus.TIMEOUT,
                            f"{what} passed its hard timeout of {timeout_s:.0f}s and was killed",
                            redact(log_tail(log)),
                            cpu_s,
                        )
                    if self.on_tick and elapsed >= next_tick:
                        self.on_tick(what, elapsed)
                        next_tick = elapsed + 1.0
                    time.sleep(min(POLL_S, timeout_s - elapsed))
            except BaseException:  # Ctrl-C or anything else: never leave a training behind
                _kill_group(proc)
                raise
        seconds = time.monotonic() - start
        code = proc.returncode
        if code == 0:
            return StepResult(True, seconds, cpu_s=cpu_s)
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
        return StepResult(False, seconds, RunStatus.CRASH, reason, tail, cpu_s)

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
        ]
        if task is not None:
            args += ["--task", str(root / task)]
        judge = copy.copy(self)
        judge.worktree = root  # `_run` runs `python -m` in the executor's tree: here, the judge's
        metrics_file = run_dir / f"eval_{split}.json"
        metrics_file.unlink(missing_ok=True)
        result = judge._run(f"evaluation on {split}", args, run_dir / f"eval_{split}.log", timeout_s)
        if not result.ok:
            return result, None
        try:
            return result, json.loads(metrics_file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            return StepResult(
                False, result.seconds, RunStatus.CRASH, f"no readable {metrics_file.name}: {err}"
            ), None
