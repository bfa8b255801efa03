"""Running the agent's code: the smoke step, training and the judge, each a subprocess in the worktree.

Each gets a hard timeout (its whole process group is killed), an environment without secrets, and its
output in a log file in the run directory; a failure comes back as a status and the log's tail, never as an
exception, so the night goes on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.ledger import RunStatus
from harness.secrets import clean_env, redact
from models.train import EXIT_NAN

TAIL_LINES = 30
KILL_WAIT_S = 5.0


@dataclass
class StepResult:
    """How a subprocess ended: ok, or a crash/timeout with the reason and the end of its log."""

    ok: bool
    seconds: float
    status: RunStatus | None = None  # CRASH or TIMEOUT when not ok
    reason: str = ""
    tail: str = ""


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


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL what is left: no training outlives its timeout."""
    for sig, wait in ((signal.SIGTERM, KILL_WAIT_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Executor:
    """Runs `python -m models.*` in the worktree (so the agent's code is what runs) on the night's dataset."""

    def __init__(
        self,
        worktree: Path,
        dataset: Path,
        python: str = sys.executable,
        on_tick: Callable[[str, float], None] | None = None,
    ) -> None:
        self.worktree = Path(worktree)
        self.dataset = Path(dataset).resolve()
        self.python = python
        self.on_tick = on_tick

    def _run(self, what: str, args: list[str], log: Path, timeout_s: float) -> StepResult:
        log.parent.mkdir(parents=True, exist_ok=True)
        command = [self.python, "-m", *args]
        env = clean_env({"PYTHONPATH": str(self.worktree), "PYTHONUNBUFFERED": "1"})
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
                preexec_fn=_die_with_parent,
            )
            try:
                while True:
                    elapsed = time.monotonic() - start
                    try:
                        code = proc.wait(timeout=max(0.05, min(1.0, timeout_s - elapsed)))
                        break
                    except subprocess.TimeoutExpired:
                        if time.monotonic() - start >= timeout_s:
                            _kill_group(proc)
                            seconds = time.monotonic() - start
                            return StepResult(
                                False,
                                seconds,
                                RunStatus.TIMEOUT,
                                f"{what} passed its hard timeout of {timeout_s:.0f}s and was killed",
                                redact(log_tail(log)),
                            )
                        if self.on_tick:
                            self.on_tick(what, time.monotonic() - start)
            except BaseException:  # Ctrl-C or anything else: never leave a training behind
                _kill_group(proc)
                raise
        seconds = time.monotonic() - start
        if code == 0:
            return StepResult(True, seconds)
        tail = redact(log_tail(log))
        if code == EXIT_NAN:
            reason = f"{what} stopped on a NaN/inf loss"
        elif code < 0:
            reason = f"{what} was killed by signal {-code}"
        else:
            last = next((line for line in reversed(tail.splitlines()) if line.strip()), "")
            reason = f"{what} exited with code {code}" + (f": {last.strip()}" if last else "")
        return StepResult(False, seconds, RunStatus.CRASH, reason, tail)

    def smoke(self, experiment: str, log: Path, timeout_s: float = 120.0) -> StepResult:
        """One optimizer step and one `predict` call on a real batch (`models.train --smoke`)."""
        args = ["models.train", "--config", experiment, "--dataset", str(self.dataset), "--smoke", "--quiet"]
        return self._run("the smoke step", args, log, timeout_s)

    def train(self, experiment: str, run_dir: Path, budget_s: float, grace_s: float) -> StepResult:
        """Train for `budget_s`; killed at budget + grace (startup, saving and the val loss live there)."""
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
        return self._run("training", args, run_dir / "train.log", budget_s + grace_s)

    def evaluate(
        self, run_dir: Path, split: str, max_samples: int, timeout_s: float
    ) -> tuple[StepResult, dict | None]:
        """The judge on one split; its metrics, read back from `eval_<split>.json`."""
        args = [
            "models.evaluate",
            str(run_dir),
            "--split",
            split,
            "--dataset",
            str(self.dataset),
            "--max-samples",
            str(max_samples),
        ]
        metrics_file = run_dir / f"eval_{split}.json"
        metrics_file.unlink(missing_ok=True)
        result = self._run(f"evaluation on {split}", args, run_dir / f"eval_{split}.log", timeout_s)
        if not result.ok:
            return result, None
        try:
            return result, json.loads(metrics_file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            return StepResult(
                False, result.seconds, RunStatus.CRASH, f"no readable {metrics_file.name}: {err}"
            ), None
