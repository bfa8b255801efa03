"""Can the night's verdicts be trusted? An A/A night, and the noise floor at a given per-run budget.

    python -m benchmarks.verdicts aa [--runs 20] [--per-run 2m] [--dataset data/sim]
    python -m benchmarks.verdicts noise [--per-run 5m] [--seeds 4] [--dataset data/sim]

`aa`: a real night in a fresh clone of HEAD whose replay agent proposes `--runs` changes that change nothing
but chance (a comment in models/dit.py; the harness trains every run on a seed of its own), while a CPU-bound
process (`while True: pass`) is started and stopped at random beside it, as other programs do on a shared
machine. Every keep is a false keep. Side by side on the same runs: today's rule (keep on the first seed,
1% margin, 0.02 cf_acc guard) replayed on each run's first seed, and the night's own verdicts (the noise
floor margin and a confirming second seed). Every run of the night is the same code, so the spread of all
their first seeds is also the noise floor at this budget.

`noise`: the baseline trained on `--seeds` seeds, one after another on this machine, through the harness's
executor and pinned judge: the spread of val mse and cf_acc between them.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.common import Row, print_table, write_section
from harness.agents.base import FileEdit, Proposal
from harness.agents.replay import ReplayAgent, write_replay
from harness.executor import Executor
from harness.judge import decide
from harness.ledger import EVALUATED, Ledger, RunRecord, RunStatus, night_noise
from harness.loop import Night, NightSettings, default_grace, train_summary
from harness.paths import NightPaths
from harness.pinned import extract_judge
from models.config import parse_duration
from models.task import default_experiment

ROOT = Path(__file__).resolve().parents[1]
HOG = [sys.executable, "-c", "while True: pass"]


class RandomLoad:
    """A CPU-bound process switched on and off at random (exponential spells, mean `mean_s`), in a thread."""

    def __init__(self, mean_s: float = 60.0, seed: int = 0) -> None:
        self.mean_s = mean_s
        self.random = random.Random(seed)
        self.stop = threading.Event()
        self.on_s = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RandomLoad:
        self.started = time.monotonic()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.total_s = time.monotonic() - self.started

    def _run(self) -> None:
        on = self.random.random() < 0.5
        while not self.stop.is_set():
            spell = self.random.expovariate(1 / self.mean_s)
            if on:
                hog = subprocess.Popen(HOG)
                start = time.monotonic()
                self.stop.wait(spell)
                hog.kill()
                hog.wait()
                self.on_s += time.monotonic() - start
            else:
                self.stop.wait(spell)
            on = not on


def no_op(i: int) -> Proposal:
    anchor = "class DiT(WorldModel):"
    return Proposal(
        hypothesis=f"A/A {i}: a comment only; nothing changes but the training seed",
        edits=[FileEdit(path="models/dit.py", search=anchor, replace=f"# A/A run {i}\n{anchor}")],
    )


def old_rule_keeps(records: list[RunRecord]) -> list[str]:
    """Today's rule replayed on each run's first seed: keep past 1% and the 0.02 guard, against the last
    run it kept."""
    first = [r for r in records if r.status in EVALUATED and r.trials and r.trials[0].ok]
    best = first[0].trials[0].metrics_val
    kept = []
    for r in first[1:]:
        metrics = r.trials[0].metrics_val
        if decide(metrics, best).keep:  # the default noise floor is none: the 1% and 0.02 of today
            kept.append(r.run_id)
            best = metrics
    return kept


def spread(values: list[float]) -> tuple[float, float]:
    """(relative σ, max/min - 1) of a list of values."""
    return statistics.stdev(values) / statistics.fmean(values), max(values) / min(values) - 1


def aa(args: argparse.Namespace) -> None:
    per_run = parse_duration(args.per_run)
    out = args.out / "aa"
    if out.exists():
        shutil.rmtree(out)
    project = out / "project"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(project)], check=True)
    replay = write_replay(out / "aa.jsonl", [no_op(i) for i in range(1, args.runs + 1)])
    settings = NightSettings(
        root=project,
        tag="aa",
        budget_s=24 * 3600,
        per_run_s=per_run,
        dataset=args.dataset.resolve(),
        max_runs=args.runs + 1,
    )
    with RandomLoad(mean_s=args.load_mean) as load:
        Night(settings, ReplayAgent(replay)).run()
    records = Ledger(NightPaths(project, "aa")).read()
    if not records or records[0].status not in EVALUATED:
        reason = records[0].reason if records else "no run was recorded"
        raise SystemExit(f"the A/A night's baseline failed: {reason}")
    judged = [r for r in records if r.status in EVALUATED]
    firsts = [r.trials[0] for r in judged if r.trials and r.trials[0].ok]
    mse = [t.metrics_val["mse"] for t in firsts]
    cf = [t.metrics_val["cf_acc"] for t in firsts]
    samples = [t.train["samples"] for t in firsts if "samples" in t.train]
    new_keeps = [r.run_id for r in records[1:] if r.status == RunStatus.KEEP]
    cleared = [r.run_id for r in records[1:] if r.status in (RunStatus.KEEP, RunStatus.UNCONFIRMED)]
    old_keeps = old_rule_keeps(records)
    sigma, mse_range = spread(mse)
    noise = night_noise(records)
    rows = [
        Row(
            "false keeps, today's rule", len(old_keeps), f"of {args.runs}", "", "replayed on the first seeds"
        ),
        Row("first seed cleared the new bar", len(cleared), f"of {args.runs}", "", "then confirmed or not"),
        Row("false keeps, the night's rule", len(new_keeps), f"of {args.runs}", "<= 1", ", ".join(new_keeps)),
        Row("val mse σ over all runs", 100 * sigma, "% of mean", "", f"{len(mse)} same-code runs"),
        Row("val mse max/min", 100 * mse_range, "%", "", "the largest 'gain' chance made"),
        Row("cf_acc σ over all runs", statistics.stdev(cf), "", "", f"range {min(cf):.3f}-{max(cf):.3f}"),
        Row("night's noise floor (mse)", 100 * (noise.mse or 0), "% σ", "", f"{noise.dof} dof at the end"),
        Row(
            "samples per run, min/max",
            min(samples) / max(samples),
            "ratio",
            ">= 0.8",
            f"{min(samples)}-{max(samples)}",
        ),
        Row(
            "CPU hog on",
            100 * load.on_s / load.total_s,
            "% of the night",
            "",
            f"mean spell {args.load_mean:g} s",
        ),
    ]
    title = f"A/A night: {args.runs} no-op proposals at {args.per_run} per run, random CPU load beside it"
    print_table(title, rows)
    notes = (
        f"One night of {args.runs} runs that change nothing but the seed (one training thread each, DiT, "
        f"`{args.dataset.name}`), "
        "with a `while True: pass` process switched on and off at random beside it. Today's rule is applied "
        "to the same runs' first seeds, so both columns see the same chance; today's wall-clock budget "
        "would add the load's effect on top (see the load benchmark). Other programs, the hog included, kept "
        f"{statistics.fmean(t.train.get('others_cores') or 0.0 for t in firsts):.2f} cores busy on average "
        "during the runs' training (from /proc/stat)."
    )
    write_section("verdicts_aa", title, rows, notes, command="python -m benchmarks.verdicts aa")


def noise(args: argparse.Namespace) -> None:
    per_run = parse_duration(args.per_run)
    out = args.out / f"noise-{args.per_run}"
    if out.exists():
        shutil.rmtree(out)
    judge = out / "judge"
    extract_judge(ROOT, "HEAD", judge)
    executor = Executor(ROOT, args.dataset.resolve(), judge_root=judge)
    experiment = default_experiment("dit")
    results, others = [], []
    for seed in range(args.seeds):
        run = out / f"seed-{seed}"
        trained = executor.train(
            experiment, run, per_run, default_grace(per_run), seed=seed, timeout_s=4 * per_run + 120
        )
        if not trained.ok:
            raise SystemExit(f"seed {seed}: {trained.reason}")
        step, metrics = executor.evaluate(run, "val", 512, 600, task=experiment)
        if metrics is None:
            raise SystemExit(f"seed {seed}: {step.reason}")
        train = train_summary(run)
        mse, cf = metrics["mse"], metrics["cf_acc"]
        print(f"seed {seed}: {train['samples']} samples, val mse {mse:.6g}, cf_acc {cf:.3f}", flush=True)
        results.append((seed, train["samples"], mse, cf))
        others.append(train.get("others_cores") or 0.0)
    mse = [m for _, _, m, _ in results]
    cf = [c for *_, c in results]
    sigma, mse_range = spread(mse)
    rows = [
        Row(
            f"val mse σ at {args.per_run}",
            100 * sigma,
            "% of mean",
            "",
            f"{args.seeds} seeds, mean {statistics.fmean(mse):.4g}, others busy "
            f"{statistics.fmean(others):.2f} cores",
        ),
        Row(f"val mse max/min at {args.per_run}", 100 * mse_range, "%"),
        Row(
            f"cf_acc σ at {args.per_run}", statistics.stdev(cf), "", "", f"range {min(cf):.3f}-{max(cf):.3f}"
        ),
        Row(
            f"samples at {args.per_run}",
            statistics.fmean(s for _, s, _, _ in results),
            "samples",
            "",
            f"{min(s for _, s, _, _ in results)}-{max(s for _, s, _, _ in results)}",
        ),
    ]
    title = "Noise floor: the baseline DiT on several seeds (one training thread, CPU-time budget)"
    print_table(title, rows)
    note = (
        "Each per-run budget's seeds trained one after another, one thread each; 'others busy' = cores other "
        "programs kept busy on average during their training (from /proc/stat). A row measured at another "
        "budget is kept from its own run (the section is completed in parts)."
    )
    command = "python -m benchmarks.verdicts noise"
    write_section("verdicts_noise", title, rows, note, merge=True, command=command)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.verdicts", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("aa", "noise"):
        p = sub.add_parser(name)
        p.add_argument("--per-run", default="2m" if name == "aa" else "5m")
        p.add_argument("--dataset", type=Path, default=ROOT / "data/sim")
        p.add_argument("--out", type=Path, default=ROOT / "runs/bench/verdicts")
    sub.choices["aa"].add_argument("--runs", type=int, default=20)
    sub.choices["aa"].add_argument(
        "--load-mean", type=float, default=60.0, help="mean seconds of a load spell"
    )
    sub.choices["noise"].add_argument("--seeds", type=int, default=4)
    args = parser.parse_args()
    {"aa": aa, "noise": noise}[args.command](args)


if __name__ == "__main__":
    main()
