"""Starting the night's subprocesses: forked from the fork server vs fresh interpreters.

Each run of a night starts a smoke step, a training, and a judge with its predictor per split and seed. The
same executor calls are timed both ways (WORLDLOOP_FORKSERVER=1 and 0), interleaved so that both see the
same machine, on the baseline DiT config and the `sim` dataset: a bare start (`models.train --help`), the
smoke step, a 1-second training and the judge on 64 val samples (whose predictor the fork server forks
beside it). Medians over the repetitions, with the range.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import Row, print_table, write_section
from harness.executor import FORKSERVER_ENV, Executor
from harness.forkserver import server_for

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "experiments/dit.toml"
WAYS = {"forked": "1", "fresh": "0"}


def _timed(step: Callable[[], object]) -> float:
    start = time.monotonic()
    result = step()
    ok = result[0].ok if isinstance(result, tuple) else result.ok
    if not ok:
        raise SystemExit(f"a benchmarked step failed: {result}")
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.spawn", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=ROOT / "data/sim")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    executor = Executor(ROOT, args.dataset)
    server_for(executor.python, executor._env())  # started and ready before anything is timed
    work = Path(tempfile.mkdtemp(prefix="spawn-bench-"))
    run = work / "run"
    if not executor.train(EXPERIMENT, run, 1.0, grace_s=60.0).ok:
        raise SystemExit(f"the reference training failed: see {run / 'train.log'}")
    steps: dict[str, Callable[[Path], object]] = {
        "bare start (models.train --help)": lambda d: executor._run(
            "start", ["models.train", "--help"], d / "h", 60
        ),
        "smoke step": lambda d: executor.smoke(EXPERIMENT, d / "smoke.log"),
        "training, 1 s budget": lambda d: executor.train(EXPERIMENT, d / "t", 1.0, grace_s=60.0),
        "judge, 64 val samples": lambda d: executor.evaluate(run, "val", 64, 300.0, task=EXPERIMENT),
    }
    times: dict[tuple[str, str], list[float]] = {}
    for repeat in range(args.repeats):
        for step_name, step in steps.items():
            for way, value in WAYS.items() if repeat % 2 == 0 else reversed(WAYS.items()):
                os.environ[FORKSERVER_ENV] = value
                scratch = work / f"{way}-{repeat}"
                scratch.mkdir(exist_ok=True)
                times.setdefault((step_name, way), []).append(_timed(lambda s=step, d=scratch: s(d)))
        print(f"repeat {repeat + 1}/{args.repeats} done")
    rows = []
    per_run = {way: 0.0 for way in WAYS}
    for step_name in steps:
        medians = {way: statistics.median(times[step_name, way]) for way in WAYS}
        for way in WAYS:
            spread = times[step_name, way]
            rows.append(
                Row(f"{step_name}, {way}", medians[way], "s", note=f"{min(spread):.2f}-{max(spread):.2f}")
            )
        if step_name != "bare start (models.train --help)":
            for way in WAYS:
                per_run[way] += medians[way] * (2 if step_name.startswith("judge") else 1)
    rows.append(
        Row(
            "a run's starts saved (smoke, training, judge on val and test)",
            per_run["fresh"] - per_run["forked"],
            "s",
            note=f"{per_run['forked']:.1f} s forked vs {per_run['fresh']:.1f} s fresh",
        )
    )
    print_table("Starting subprocesses: fork server vs fresh interpreters", rows)
    notes = (
        f"Each step timed {args.repeats} times each way, alternating which way goes first; the value is the "
        "median, the note the range. The training's budget is CPU time, so both ways train the same; the "
        "difference is what lies outside it (an interpreter's start with `import torch`, the model code's "
        "imports). The judge's own start and its predictor's are both saved when forked."
    )
    write_section(
        "spawn", "Starting the night's subprocesses: fork server vs fresh interpreters", rows, notes
    )


if __name__ == "__main__":
    main()
