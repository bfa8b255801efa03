"""Figures drawn beside the night, not in it.

A run's figures take about 0.6 s of CPU (counterfactual grid and error heatmaps ~0.09 s each, drawn in pixels
by harness/picture.py; the loss curve and the night's progress plot ~0.2 s each in matplotlib; all four were
matplotlib figures and took 1.0 s), on the one thread that decides, commits and hands out jobs. With one
worker that thread has nothing better to do; with many, every run finished waits behind the figures of the
runs before it, and workers idle (benchmarks/large_night.py: 1.0 s of the head's CPU per run at 8 workers with
the figures drawn in line, 0.1 s without). A painter is one process of its own, `python -m harness.painter`,
started with the night, that draws what it is asked in order, one JSON line at a time on its stdin, and
answers each on its stdout; the night goes on at once.

A report's markdown names its figures before they are drawn (`reports.run_figures`). The night waits for its
painter before its final summary, so a night that ends has every figure; a Ctrl-C drops those not yet drawn
(`harness report <run-id>` draws a run's again). The painter reads to the end of its stdin, so a harness
killed alone still gets the figures it had sent; one killed with its process group takes the painter along,
and `--resume` draws what is missing.
"""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from harness import reports
from harness.ledger import RunRecord
from harness.paths import NightPaths
from harness.secrets import clean_env


class Painter:
    """Asks a painter process for a night's figures; the progress plot only once for any number of runs
    recorded while one is being drawn (it reads the ledger as it is when it starts)."""

    def __init__(self, log: Path) -> None:
        """`log`: where the painter's own errors go (a figure that fails is also answered, and said)."""
        with open(log, "a") as errors:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "harness.painter"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                env=clean_env({}),  # it draws figures: no API key of the night's
            )
        self._outbox: queue.SimpleQueue[str | None] = queue.SimpleQueue()  # the night never blocks on a pipe
        self._lock = threading.Lock()
        self._progress_out = False  # a progress plot asked for and not yet drawn
        self._progress_again: NightPaths | None = None  # runs recorded since it was asked for
        self.failures: list[str] = []
        threading.Thread(target=self._write, name="painter-in", daemon=True).start()
        self._reader = threading.Thread(target=self._read, name="painter-out", daemon=True)
        self._reader.start()

    def run_figures(self, record: RunRecord, paths: NightPaths, parent: RunRecord | None) -> None:
        self._ask(
            "run",
            paths,
            record=record.model_dump(mode="json"),
            parent=parent.model_dump(mode="json") if parent else None,
        )

    def progress(self, paths: NightPaths) -> None:
        with self._lock:
            if self._progress_out:
                self._progress_again = paths
                return
            self._progress_out = True
        self._ask("progress", paths)

    def _ask(self, kind: str, paths: NightPaths, **fields: object) -> None:
        self._outbox.put(json.dumps({"kind": kind, "root": str(paths.root), "tag": paths.tag, **fields}))

    def _write(self) -> None:
        while (line := self._outbox.get()) is not None:
            try:
                self._process.stdin.write(line + "\n")
                self._process.stdin.flush()
            except (BrokenPipeError, ValueError):  # the painter is gone (killed with the night)
                return
        with contextlib.suppress(OSError):
            self._process.stdin.close()

    def _read(self) -> None:
        for line in self._process.stdout:
            try:
                answer = json.loads(line)
            except json.JSONDecodeError:  # not an answer (the painter's prints go to its log)
                continue
            if answer.get("error"):
                self.failures.append(f"{answer['what']}: {answer['error']}")
            if answer["kind"] == "progress":
                with self._lock:
                    again, self._progress_again = self._progress_again, None
                    self._progress_out = again is not None
                if again is not None:
                    self._ask("progress", again)

    def close(self, wait: bool = True) -> list[str]:
        """Wait for every figure asked for (without `wait`, end the painter now); the failures."""
        if wait:
            self._reader_drained()
        else:
            self._process.kill()
        self._outbox.put(None)
        self._process.wait()
        self._reader.join(timeout=30)  # its last answers, failures among them
        return self.failures

    def _reader_drained(self) -> None:
        """Every answer read: a progress plot asked for again after the last is asked before stdin closes."""
        while True:
            with self._lock:
                if not self._progress_out:
                    break
            if self._process.poll() is not None or not self._reader.is_alive():
                break
            time.sleep(0.05)


def described(request: dict) -> str:
    if request["kind"] == "progress":
        return "the progress plot"
    return f"the figures of {request['record']['run_id']}"


def draw(request: dict) -> None:
    """Draw what one request asks for."""
    paths = NightPaths(Path(request["root"]), request["tag"])
    if request["kind"] == "progress":
        reports.draw_progress(paths)
        return
    record = RunRecord.model_validate(request["record"])
    parent = RunRecord.model_validate(request["parent"]) if request.get("parent") else None
    reports.draw_run_figures(record, paths, parent)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the process group: the night ends it
    answers, sys.stdout = sys.stdout, sys.stderr  # what drawing prints goes to the log, not the answers
    for line in sys.stdin:
        request = json.loads(line)
        answer = {"kind": request["kind"], "what": described(request)}
        try:
            draw(request)
        except Exception as err:  # a figure that cannot be drawn is said once; the night goes on
            answer["error"] = f"{type(err).__name__}: {err}"
        print(json.dumps(answer), file=answers, flush=True)


if __name__ == "__main__":
    main()
