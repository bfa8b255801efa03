"""A simulated large night: the real loop at 8, 32 and 128 workers, its runs and agent only taking time.

    python -m benchmarks.large_night [--workers 8,32,128] [--latency 10-30,60-120] [--per-run 300]
                                     [--runs 8] [--speedup N] [--backlogs 0,2,4,8]

What is real: the night (harness/loop.py) with its scheduler, git commits on proposal bases, exported trees,
pending.json, the ledger, every run's report and the summary with its progress plot (drawn by the night's
painter process). What is simulated: the workers (a job takes its time and leaves the config and metrics of
a real judged run of the tiny project, its val mse drawn from a seeded landscape over the learning rate,
1.5% noise per seed; not the inputs of the run's figures, whose drawing is timed apart) and the agent (it
answers after 10-120 s with a learning rate near the best's, as a person tuning it would). Simulated time
runs N times faster than the clock (`speedup_for`); the harness's own work does not, so relative to its runs
the harness carries N times the load of a real night: the utilization measured is a lower bound.

Figures per night: worker utilization in the steady state (from the first candidate's job to the last job
started; the baseline alone and the drain at the end are a fixed cost of a night, reported apart), the
summary's utilization over the whole night, and the head's own CPU time per run (the thread that plans,
commits, decides and writes every report). Then the backlog: the same steady state at 8 workers with a slow
agent, for backlogs 0 to N (harness.loop.default_backlog).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from benchmarks.common import Row, print_table, write_section
from harness.agents.base import Agent, AgentContext, FileEdit, Proposal
from harness.agents.replay import ReplayAgent, write_replay
from harness.executor import StepResult
from harness.ledger import Ledger, best_run
from harness.loop import Night
from harness.paths import NightPaths, run_id_for
from harness.reports import draw_run_figures, night_view
from harness.workers import Job, JobResult, PhaseCallback
from models.canvas import CanvasConfig
from models.data import build_cache
from robot.record import record_sim_dataset
from robot.sim import SimConfig
from tests.helpers import SMALL_CANVAS
from tests.night_project import EXPERIMENT, make_project, tiny_night

NAME = "large_night"
TITLE = "A simulated large night: the real loop and ledger, simulated runs and agent"
BEST_LR = 3e-4
NOISE = 0.015  # relative val-mse spread of one seed (2-minute DiT runs on 2 cores spread by ~1.5%)
LR_LINE = re.compile(r"^lr = (\S+)$", re.M)
TEMPLATE_FILES = ("config.json", "metrics.json", "eval_val.json", "eval_test.json")
"""What a real judged run of the tiny project leaves, copied into every simulated trial directory. Not its
counterfactual examples and training log: their figures are drawn in the night's painter process
(harness/painter.py), one run at a time, which a 2-core machine cannot keep up with for 128 workers 20x
faster than the clock; the painter's time per run is measured apart (`painter_s_per_run`)."""


def val_mse(lr: float, seed: int, run_id: str, base: float) -> float:
    """The landscape: best at BEST_LR, 50% worse a decade away, times one seed's noise."""
    distance = math.log10(max(lr, 1e-30) / BEST_LR)
    noise = random.Random(f"{run_id}/{seed}").gauss(0.0, NOISE)
    return base * (1.0 + 0.5 * min(distance, 6.0) ** 2) * (1.0 + noise)


def config_lr(tree: Path) -> float:
    return float(LR_LINE.search((tree / EXPERIMENT).read_text()).group(1))


@dataclass
class SimulatedWorkers:
    """`count` workers whose jobs take their time (in simulated seconds, `speedup` times faster than the
    clock) and leave the files of `template`, a real judged run, with the val mse of the landscape."""

    count: int
    template: Path
    speedup: float
    on_phase: PhaseCallback | None = None
    name: str = "simulated"
    job_overheads: list[float] = field(default_factory=list)
    busy: list[tuple[str, float, float]] = field(default_factory=list)  # every job's run, start, end
    _running: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pool: ThreadPoolExecutor | None = None

    def __post_init__(self) -> None:
        self._pool = ThreadPoolExecutor(self.count, thread_name_prefix="sim-worker")
        self._metrics = {
            split: json.loads((self.template / f"eval_{split}.json").read_text()) for split in ("val", "test")
        }

    def free(self) -> int:
        with self._lock:
            return self.count - self._running

    def describe(self) -> str:
        return f"{self.count} simulated workers"

    def submit(self, job: Job, tree: Path) -> Future[JobResult]:
        with self._lock:
            self._running += 1
            slot = self._running
        lr = config_lr(tree)
        return self._pool.submit(self._work, job, lr, f"s{slot}")

    def _sleep(self, simulated_s: float, job: Job, part: str) -> float:
        jitter = random.Random(f"{job.run_id}/{job.seed}/{job.split}/{part}").uniform(0.9, 1.1)
        seconds = simulated_s * jitter / self.speedup
        time.sleep(seconds)
        return seconds

    def _phase(self, job: Job, name: str) -> None:
        if self.on_phase is not None:
            self.on_phase(job.run_id, name)

    def _work(self, job: Job, lr: float, worker: str) -> JobResult:
        start = time.monotonic()
        try:
            per_run = job.budget_s * self.speedup  # the night's budget is in clock seconds
            result = JobResult(worker)
            if job.smoke:
                self._phase(job, "smoke")
                result.smoke = StepResult(True, self._sleep(10.0, job, "smoke"))
            if job.train:
                self._phase(job, job.label)
                result.trained = StepResult(True, self._sleep(per_run + 20.0, job, "train"))
                job.directory.mkdir(parents=True, exist_ok=True)
                for name in TEMPLATE_FILES:
                    if (self.template / name).exists():
                        shutil.copy(self.template / name, job.directory / name)
            self._phase(job, job.label.replace("train", "eval", 1))
            judged = StepResult(True, self._sleep(30.0, job, "judge"))
            metrics = dict(self._metrics[job.split])
            metrics["mse"] = val_mse(lr, job.seed or 0, job.run_id, metrics["copy_mse"] * 0.5)
            result.judged, result.metrics = judged, metrics
            self.job_overheads.append(0.0)
            return result
        finally:
            with self._lock:
                self._running -= 1
                self.busy.append((job.run_id, start, time.monotonic()))

    def forget(self, tree: Path) -> None:
        """Nothing is kept per tree."""

    def close(self, cancel: bool = False) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class SimulatedAgent(Agent):
    """Answers after `latency` simulated seconds (uniform in the range) with a learning rate near the best
    commit's, never one already tried or in flight."""

    name = "simulated"
    concurrent = True

    def __init__(self, latency: tuple[float, float], speedup: float, seed: int = 0) -> None:
        self.latency, self.speedup = latency, speedup
        self.typical_s = sum(latency) / 2 / speedup
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._tried: set[str] = set()

    def propose(self, context: AgentContext) -> Proposal:
        with self._lock:
            wait = self._rng.uniform(*self.latency) / self.speedup
            best = config_lr(context.workspace)
            start = best if best > 1e-20 else 1e-3  # the tiny project's baseline learns nothing
            while True:
                lr = f"{start * 10 ** self._rng.gauss(0.0, 0.5):.3g}"
                if lr not in self._tried:
                    self._tried.add(lr)
                    break
        time.sleep(wait)
        line = LR_LINE.search((context.workspace / EXPERIMENT).read_text()).group(0)
        return Proposal(
            hypothesis=f"learning rate {lr}",
            rationale=f"the best trains at {line.split()[-1]}",
            edits=[FileEdit(path=EXPERIMENT, search=line, replace=f"lr = {lr}")],
        )


def template_run(work: Path, dataset: Path) -> Path:
    """A real judged run of the tiny project: its baseline, trained 1 s and judged on val and test."""
    root = make_project(work / "template")
    settings = tiny_night(root, "t", dataset, max_runs=1)
    Night(settings, ReplayAgent(write_replay(work / "none.jsonl", []))).run()
    return NightPaths(root, "t").run_dir(run_id_for("t", 0))


def painter_s_per_run(template: Path, repeats: int = 5) -> float:
    """Seconds the painter takes for one run's figures (counterfactual grid, error heatmaps, loss curve)."""
    night = NightPaths(template.parents[2], template.parent.name)
    record = next(r for r in Ledger(night).read() if r.run_id == template.name)
    draw_run_figures(record, night, None)  # the first figure loads matplotlib's fonts
    start = time.monotonic()
    for _ in range(repeats):
        draw_run_figures(record, night, None)
    return (time.monotonic() - start) / repeats


def steady_utilization(busy: list[tuple[str, float, float]], count: int) -> float:
    """Workers' busy share from the first candidate's job to the last job started (the baseline alone
    before, the drain after)."""
    starts = [start for run_id, start, _ in busy if not run_id.endswith("-000")]
    if not starts:
        return 0.0
    a, b = min(starts), max(start for _, start, _ in busy)
    if b <= a:
        return 0.0
    covered = sum(max(0.0, min(end, b) - max(start, a)) for _, start, end in busy)
    return covered / (count * (b - a))


HEAD_RUNS_PER_S = 3.3
"""Runs finishing per clock second that a simulated night asks of the head at most (its CPU is ~0.1 s a run,
so 3.3 a second is a third of one core): the speedup is lowered for many workers so that the nights measure
the loop, not a head that 30x compression has saturated. A real night of 128 workers of 6-minute runs asks
0.36 a second."""


def speedup_for(workers: int, args: argparse.Namespace) -> float:
    """`--speedup`, or the most (up to 30x) that keeps the head under HEAD_RUNS_PER_S."""
    if args.speedup is not None:
        return args.speedup
    return min(30.0, HEAD_RUNS_PER_S * (args.per_run + 60.0) / workers)


def one_night(
    work: Path,
    dataset: Path,
    template: Path,
    workers: int,
    latency: tuple[float, float],
    args: argparse.Namespace,
    backlog: int | None = None,
) -> dict:
    root = make_project(work / "project")
    speedup = speedup_for(workers, args)
    per_run = args.per_run / speedup
    budget = args.runs * (args.per_run + 60.0) / speedup  # a night `--runs` run-lengths long
    settings = tiny_night(
        root,
        "s",
        dataset,
        budget_s=budget,
        per_run_s=per_run,
        grace_s=per_run,
        workers=workers,
        baseline_seeds=2,
        backlog=backlog,
    )
    agent = SimulatedAgent(latency, speedup, seed=workers)
    simulated: list[SimulatedWorkers] = []

    def make_workers(judge: Path, on_phase: PhaseCallback) -> SimulatedWorkers:
        simulated.append(SimulatedWorkers(workers, template, speedup, on_phase=on_phase))
        return simulated[0]

    with open(work / "night.log", "w") as log:
        night = Night(settings, agent, console=Console(file=log), make_workers=make_workers)
        cpu, start = time.thread_time(), time.monotonic()
        night.run()
        head_cpu, wall = time.thread_time() - cpu, time.monotonic() - start
    paths = NightPaths(root, "s")
    records = Ledger(paths).read()
    view = night_view(paths)
    optimum = json.loads((template / "eval_val.json").read_text())["copy_mse"] * 0.5  # val_mse's base
    return {
        "best_excess": best_run(records).primary / optimum - 1.0,  # how far above the landscape's floor
        "runs": len(records),
        "steady": steady_utilization(simulated[0].busy, workers),
        "whole": view.utilization or 0.0,
        "head_cpu_per_run": head_cpu / max(1, len(records)),
        "runs_per_hour": 3600.0 * len(records) / (wall * speedup),
        "wall": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.large_night", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--workers", default="8,32,128", help="worker counts, one night each")
    parser.add_argument("--latency", default="10-30,60-120", help="agent latency ranges, simulated seconds")
    parser.add_argument("--per-run", type=float, default=300.0, help="a run's training budget, simulated s")
    parser.add_argument("--runs", type=float, default=8.0, help="the night's length in run-lengths")
    parser.add_argument(
        "--speedup",
        type=float,
        default=None,
        help="simulated seconds per clock second (default: speedup_for)",
    )
    parser.add_argument(
        "--backlogs", default="0,2,4,8", help="backlogs compared at --backlog-workers (empty: none)"
    )
    parser.add_argument("--backlog-workers", type=int, default=8)
    parser.add_argument("--backlog-latency", default="60-120")
    parser.add_argument("--beside", default="nothing else", help="what else ran on the machine meanwhile")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",") if w]
    latencies = [tuple(float(x) for x in r.split("-")) for r in args.latency.split(",")]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-large-night-") as tmp:
        dataset = Path(tmp) / "sim"
        record_sim_dataset(dataset, episodes=6, actions_per_episode=8, seed=7, config=SimConfig(), workers=1)
        build_cache(dataset, CanvasConfig(**SMALL_CANVAS))
        template = template_run(Path(tmp), dataset)
        painter_s = painter_s_per_run(template)
        for workers in counts:
            for latency in latencies:
                speedup = speedup_for(workers, args)
                label = f"{workers} workers, agent {latency[0]:g}-{latency[1]:g} s, {speedup:.3g}x"
                work = Path(tmp) / f"{workers}-{latency[0]:g}"
                got = one_night(work, dataset, template, workers, latency, args)
                print(f"{label}: {got}", flush=True)
                whole = f"{got['runs']} runs in {args.runs:g} run-lengths, {got['runs_per_hour']:.0f}/h"
                rows += [
                    Row(f"{label}: workers busy, steady state", 100 * got["steady"], "%", ">= 90%"),
                    Row(f"{label}: workers busy, whole night", 100 * got["whole"], "%", note=whole),
                    Row(f"{label}: the head's CPU per run", got["head_cpu_per_run"], "s"),
                ]
        slow = tuple(float(x) for x in args.backlog_latency.split("-"))
        for backlog in [int(b) for b in args.backlogs.split(",") if b]:
            speedup = speedup_for(args.backlog_workers, args)
            label = f"backlog {backlog}, {args.backlog_workers} workers, agent {args.backlog_latency} s"
            label += f", {speedup:.3g}x"
            work = Path(tmp) / f"backlog-{backlog}"
            got = one_night(work, dataset, template, args.backlog_workers, slow, args, backlog=backlog)
            print(f"{label}: {got}", flush=True)
            rows += [
                Row(f"{label}: workers busy, steady state", 100 * got["steady"], "%"),
                Row(
                    f"{label}: best val mse above the floor",
                    100 * got["best_excess"],
                    "%",
                    note=f"{got['runs']} runs",
                ),
            ]
    rows.append(
        Row(
            "the painter's time per run (its figures, a process of its own)",
            painter_s,
            "s",
            note=f"keeps up with {3600 / painter_s:,.0f} runs/h",
        )
    )
    print_table(TITLE, rows)
    note = (
        f"Simulated runs of {args.per_run:g} s (+ 20 s start-up, 30 s judge, 10 s smoke step), nights of "
        f"{args.runs:g} run-lengths with 2 baseline seeds, each night Nx faster than the clock as its row "
        "says (at most 30x, and at most 3.3 runs finishing a second: the harness's own work is not faster, "
        "so it carries Nx a real night's load). Steady state: from "
        "the first candidate's job to the last job started. Backlogs: proposals asked for beyond the free "
        f"workers, {args.backlog_workers} workers with an agent of {args.backlog_latency} s, one night each; "
        f"'above the floor': the best val mse over the landscape's minimum (lr {BEST_LR:g}). Beside it: "
        f"{args.beside}."
    )
    write_section(NAME, TITLE, rows, note, merge=True)  # a part (--workers "", --backlogs "") keeps the rest


if __name__ == "__main__":
    main()
