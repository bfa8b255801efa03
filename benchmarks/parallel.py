"""Parallel nights on this machine: runs finished in one budget by 1 worker, 2 local workers, 2 Ray workers.

    python -m benchmarks.parallel [--budget 90s] [--per-run 2s] [--repeats 2]

Each night is the tiny project of the tests (tests/night_project.py: a 32 px DiT, one training thread per
run) on a small simulated dataset, with replayed proposals (learning rates that learn nothing, so every run
is trained and judged, none confirmed: the count measures throughput, not luck). The configurations run one
after another, repeated in turn, on the same machine; Ray's is a local cluster this process starts. A job's
overhead is its wall time on the head node less the time its subprocesses ran.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import Row, print_table, write_section
from harness.agents.base import Proposal
from harness.agents.replay import ReplayAgent, write_replay
from harness.ledger import Ledger
from harness.loop import Night
from harness.paths import NightPaths
from harness.reports import night_view
from models.canvas import CanvasConfig
from models.config import parse_duration
from models.data import build_cache
from robot.record import record_sim_dataset
from robot.sim import SimConfig
from tests.helpers import SMALL_CANVAS
from tests.night_project import config_edit, make_project, tiny_night

NAME = "parallel"
TITLE = "Parallel nights: runs in one budget, 1 vs 2 workers (tiny DiT, 2 CPU cores)"
CONFIGS = (("1 local worker", "local", 1), ("2 local workers", "local", 2), ("2 Ray workers", "ray", 2))


def proposals(n: int = 400) -> list[Proposal]:
    """Distinct learning rates, all far too small to learn: every run trains, is judged, and is discarded."""
    return [
        Proposal(hypothesis=f"lr {k + 2}e-30", edits=[config_edit("lr = 1e-30", f"lr = {k + 2}e-30")])
        for k in range(n)
    ]


def one_night(work: Path, dataset: Path, executor: str, workers: int, budget: float, per_run: float) -> dict:
    root = make_project(work / "project")
    replay = write_replay(work / "p.jsonl", proposals())
    settings = tiny_night(
        root, "b", dataset, budget_s=budget, per_run_s=per_run, workers=workers, executor=executor
    )
    night = Night(settings, ReplayAgent(replay))
    start = time.monotonic()
    night.run()
    wall = time.monotonic() - start
    records = Ledger(NightPaths(root, "b")).read()
    view = night_view(NightPaths(root, "b"))
    return {
        "runs": sum(1 for r in records if r.trials),
        "wall": wall,
        "utilization": view.utilization or 0.0,
        "overhead": statistics.mean(night.workers.job_overheads) if night.workers.job_overheads else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.parallel", description=__doc__.split("\n")[0])
    parser.add_argument("--budget", default="90s")
    parser.add_argument("--per-run", default="2s")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--beside", default="nothing else", help="what else ran on the machine meanwhile")
    args = parser.parse_args()
    budget, per_run = parse_duration(args.budget), parse_duration(args.per_run)
    results: dict[str, list[dict]] = {label: [] for label, _, _ in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as tmp:
        dataset = Path(tmp) / "sim"
        record_sim_dataset(dataset, episodes=6, actions_per_episode=8, seed=7, config=SimConfig(), workers=1)
        build_cache(dataset, CanvasConfig(**SMALL_CANVAS))
        for repeat in range(args.repeats):
            for label, executor, workers in CONFIGS:
                work = Path(tmp) / f"{executor}-{workers}-{repeat}"
                results[label].append(one_night(work, dataset, executor, workers, budget, per_run))
                print(f"{label}, repeat {repeat + 1}: {results[label][-1]}")

    def runs(label: str) -> list[int]:
        return [r["runs"] for r in results[label]]

    one = statistics.mean(runs("1 local worker"))
    rows = []
    for label, _, workers in CONFIGS:
        got = results[label]
        spread = f"runs {', '.join(map(str, runs(label)))}"
        rows.append(Row(f"{label}: runs judged", statistics.mean(runs(label)), "runs", "", spread))
        if workers > 1:
            ratio = statistics.mean(runs(label)) / one
            rows.append(Row(f"{label}: runs vs 1 worker", ratio, "x", "about 2x"))
        rows.append(Row(f"{label}: workers busy", 100 * statistics.mean(r["utilization"] for r in got), "%"))
        overhead = statistics.mean(r["overhead"] for r in got)
        rows.append(Row(f"{label}: overhead per job (scheduling, shipping)", overhead, "s"))
    print_table(TITLE, rows)
    note = (
        f"Nights of {args.budget} at {args.per_run} a run, {args.repeats} repeats of each in turn; "
        f"beside it: {args.beside}."
    )
    write_section(NAME, TITLE, rows, note)


if __name__ == "__main__":
    main()
