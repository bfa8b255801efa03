"""A busy machine: the baseline trained alone and beside one CPU-bound process, under the old and new clocks.

    python -m benchmarks.load [--budget 2m] [--seeds 0,1] [--variants old,new,two-threads] [--busy 1,2]

The complaint: a run kept as "9% better" had trained 2.6x more samples than the baseline, because the
machine was less busy while it trained. Each variant trains experiments/dit.toml on the dataset twice per
seed, alone and beside one or more `python -c 'while True: pass'` processes (`--busy`), and judges each with
`python -m models.evaluate` on val (the busy processes are stopped before judging):

- old: the budget before this benchmark: wall time, libgomp's default waiting (spin 300,000 times, then
  sleep), one thread per core;
- wall-new-wait (optional): wall time with the new waiting, to see what the wait policy alone changes;
- new: what the harness runs now, `Executor.train`: CPU time of the loop (budget CPU-seconds) of one
  training thread (DEFAULT_THREADS) free to run on any of the harness's cores, RLIMIT_CPU;
- two-threads: the same clock with two threads (budget x 2 CPU-seconds), spinning 300 times then sleeping
  (WAIT_POLICY): why the harness trains one thread.

The target: beside the busy processes, a run trains within 20% of the samples it trains alone. With two
busy processes on two cores, three programs want two cores; how the scheduler shares them shows in the
'others' column (on 2026-12-03 the two busy ones shared a core and the training kept the other).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import Row, print_table, write_section
from harness.executor import Executor
from harness.loop import default_grace
from models.config import parse_duration
from models.openmp import DEFAULT_THREADS, WAIT_POLICY

NAME = "load"
TITLE = "Training beside a busy machine: samples alone vs beside CPU-bound processes"
ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("old", "wall-new-wait", "new", "two-threads")
BUSY = "while True: pass"


@dataclass
class Trained:
    """One training and its judgement."""

    metrics: dict
    mse: float | None
    judge: str  # "mse" (models.evaluate) or "val_loss" (the training's own, when the evaluator failed)
    seconds: float
    harness_cpu_s: float | None = None
    errors: list[str] = field(default_factory=list)


def old_env() -> dict[str, str]:
    """The environment of a training before the fair budget: libgomp's defaults, every core."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    return {**env, "GOMP_SPINCOUNT": "300000"}  # libgomp's default when OMP_WAIT_POLICY is unset


def new_wait_env() -> dict[str, str]:
    """The harness's wait policy (WAIT_POLICY) with the old clock."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    return {**env, **WAIT_POLICY}


def train(variant: str, config: Path, out: Path, dataset: Path, budget_s: float, seed: int) -> Trained:
    """Train one variant into `out`; raises CalledProcessError/RuntimeError when the training failed."""
    start = time.monotonic()
    if variant in ("new", "two-threads"):
        executor = Executor(ROOT, dataset, threads=2 if variant == "two-threads" else DEFAULT_THREADS)
        grace = default_grace(budget_s)
        result = executor.train(str(config), out, budget_s, grace, seed, timeout_s=10 * budget_s)
        if not result.ok:
            raise RuntimeError(f"{variant}: {result.reason}\n{result.tail}")
        harness_cpu = result.cpu_s
    else:
        command = [sys.executable, "-m", "models.train", "--config", str(config), "--out", str(out)]
        command += ["--budget", f"{budget_s:g}s", "--dataset", str(dataset), "--seed", str(seed)]
        command += ["--clock", "wall"]
        env = old_env() if variant == "old" else new_wait_env()
        subprocess.run([*command, "--quiet"], cwd=ROOT, env=env, check=True)
        harness_cpu = None
    metrics = json.loads((out / "metrics.json").read_text())
    return Trained(metrics, None, "", time.monotonic() - start, harness_cpu)


def judge(trained: Trained, out: Path, dataset: Path, samples: int) -> None:
    """Val mse from models.evaluate, or the training's val loss (said so) when the evaluator fails."""
    command = [sys.executable, "-m", "models.evaluate", str(out), "--split", "val", "--dataset", str(dataset)]
    result = subprocess.run(
        [*command, "--max-samples", str(samples)], cwd=ROOT, capture_output=True, text=True
    )
    try:
        trained.mse, trained.judge = json.loads((out / "eval_val.json").read_text())["mse"], "mse"
    except (OSError, ValueError, KeyError):
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        trained.errors.append(f"models.evaluate failed ({last}); judged by the training's val loss")
        trained.mse, trained.judge = trained.metrics.get("val_loss"), "val_loss"


def beside(busy: int) -> str:
    return "alone" if busy == 0 else f"beside {busy} busy"


def run_one(variant: str, busy: int, seed: int, args: argparse.Namespace) -> Trained:
    out = args.runs / f"{variant}-busy{busy}-seed{seed}"
    hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
    try:
        trained = train(variant, args.config, out, args.dataset, args.budget_s, seed)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    judge(trained, out, args.dataset, args.eval_samples)
    m = trained.metrics
    print(
        f"{variant:12s} {beside(busy):15s} seed {seed}: {m['samples']:,} samples, "
        f"{m['cpu_seconds']:.0f} CPU-s, {m['wall_seconds']:.0f} s wall, others {m['others_cores']} cores, "
        f"{trained.judge} {trained.mse}",
        flush=True,
    )
    return trained


def mean(values: list[float | None]) -> float:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else float("nan")


def variant_rows(variant: str, runs_by_busy: dict[int, list[Trained]]) -> list[Row]:
    """Means over seeds, and the figure that matters: samples beside the busy processes / alone."""
    alone = runs_by_busy[0]
    clock = alone[0].metrics["clock"]
    target = "0.8 to 1.2" if variant == "new" else ""
    judged = {t.judge for runs in runs_by_busy.values() for t in runs}
    quality = "val mse" if judged == {"mse"} else "val loss (training's; evaluator failed)"
    rows = []
    for busy, loaded in runs_by_busy.items():
        if busy:
            pairs = zip(alone, loaded, strict=True)
            ratio = mean([b.metrics["samples"] / a.metrics["samples"] for a, b in pairs])
            rows.append(
                Row(f"{variant}: samples {beside(busy)} / alone", ratio, "x", target, f"{clock} clock")
            )
    for busy, runs in runs_by_busy.items():
        label = beside(busy)
        m = [t.metrics for t in runs]
        cpu, wall = mean([x["cpu_seconds"] for x in m]), mean([x["wall_seconds"] for x in m])
        per_cpu, others = mean([x["samples_per_cpu_s"] for x in m]), mean([x["others_cores"] for x in m])
        note = (
            f"{cpu:.0f} CPU-s, {wall:.0f} s wall, {per_cpu:.1f} samples/CPU-s, "
            f"others {others:.2f} cores, {m[0]['threads']} threads"
        )
        rows.append(Row(f"{variant} {label}: samples", mean([x["samples"] for x in m]), "", "", note))
        rows.append(Row(f"{variant} {label}: {quality}", mean([t.mse for t in runs]), ""))
    return rows


def busy_processes(seconds: float = 1.0) -> list[str]:
    """Other processes using more than 20% of a core right now (from /proc): what else ran."""

    def ticks() -> dict[int, tuple[str, int]]:
        found = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            name = text[text.index("(") + 1 : text.rindex(")")]
            fields = text[text.rindex(")") + 2 :].split()
            found[int(stat.parent.name)] = (name, int(fields[11]) + int(fields[12]))
        return found

    before = ticks()
    time.sleep(seconds)
    after = ticks()
    hz = os.sysconf("SC_CLK_TCK")
    return sorted(
        f"{name} ({(t - before[pid][1]) / hz / seconds:.0%})"
        for pid, (name, t) in after.items()
        if pid in before and pid != os.getpid() and (t - before[pid][1]) / hz / seconds > 0.2
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--budget", default="2m", help="per-run budget, as `harness run --per-run` (the demo's)"
    )
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument(
        "--variants", default="old,new,two-threads", help=f"comma-separated, of {', '.join(VARIANTS)}"
    )
    parser.add_argument("--busy", default="1,2", help="comma-separated counts of busy processes beside")
    parser.add_argument("--config", type=Path, default=ROOT / "experiments/dit.toml")
    parser.add_argument("--dataset", type=Path, default=ROOT / "data/sim")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs/bench/load")
    parser.add_argument("--eval-samples", type=int, default=512)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    args.budget_s = parse_duration(args.budget)
    args.dataset = args.dataset.resolve()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variant(s) {sorted(unknown)}; choose from {', '.join(VARIANTS)}")

    before = busy_processes()
    rows: list[Row] = []
    errors: list[str] = []
    busy_counts = [0, *sorted({int(b) for b in args.busy.split(",") if b.strip() and int(b) > 0})]
    for variant in variants:
        runs_by_busy: dict[int, list[Trained]] = {busy: [] for busy in busy_counts}
        for seed in seeds:
            for busy in busy_counts:
                runs_by_busy[busy].append(run_one(variant, busy, seed, args))
        rows += variant_rows(variant, runs_by_busy)
        errors += sorted({e for runs in runs_by_busy.values() for t in runs for e in t.errors})
    after = busy_processes()
    title = f"{TITLE} ({args.budget} per run)"
    print_table(title, rows)
    if not args.no_write:
        notes = (
            f"experiments/dit.toml on {args.dataset.name}, {args.budget} per run, seed(s) "
            f"{', '.join(map(str, seeds))}, {args.eval_samples} val samples judged by models.evaluate. "
            "'beside N busy' = N `python -c 'while True: pass'` processes running for the whole training; "
            "'others' = cores busy with other processes during the loop (the busy ones included), from "
            "/proc/stat. "
            f"Other processes busy (>20% of a core) when it started: {', '.join(before) or 'none'}; "
            f"when it ended: {', '.join(after) or 'none'}."
        )
        if errors:
            notes += " " + " ".join(errors)
        write_section(NAME, title, rows, notes)


if __name__ == "__main__":
    main()
