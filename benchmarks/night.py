"""A real night on this machine: harness overhead, budget overrun, and whether the night helped.

    python -m benchmarks.night [--budget 1h] [--per-run 5m] [--agent local] [--dataset data/sim]

The night runs in a fresh clone of this repository's HEAD (under --out), so the figures are those of
`harness run` as a user gets it. Overhead is everything the wall clock saw that was not agent thinking,
training or evaluation (git, validation, the smoke step, reports, ledger, summary), as a share of the night;
overrun is how far past its budget the night ended, against the grace a run may take past its own budget.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from benchmarks.common import Row, print_table, write_section
from harness.agents import make_agent
from harness.ledger import Ledger, RunStatus, Timings, baseline_run, best_run, night_noise
from harness.loop import Night, NightSettings
from harness.paths import NightPaths
from harness.reports import metrics_on_test
from models.config import parse_duration

NAME = "night"
TITLE = "A night of the loop: overhead, budget overrun, improvement (2 CPU cores)"
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.night", description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="1h")
    parser.add_argument("--per-run", default="5m")
    parser.add_argument("--agent", default="local")
    parser.add_argument("--dataset", type=Path, default=ROOT / "data/sim")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/bench/night")
    args = parser.parse_args()
    budget, per_run = parse_duration(args.budget), parse_duration(args.per_run)

    if args.out.exists():
        shutil.rmtree(args.out)
    project = args.out / "project"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(project)], check=True)
    settings = NightSettings(
        root=project, tag="bench", budget_s=budget, per_run_s=per_run, dataset=args.dataset.resolve()
    )
    start = time.monotonic()
    Night(settings, make_agent(args.agent)).run()
    wall = time.monotonic() - start

    paths = NightPaths(project, "bench")
    records = Ledger(paths).read()
    counts = {s.value: sum(r.status == s for r in records) for s in RunStatus}
    t = sum((r.timings for r in records), Timings())
    overhead = wall - t.agent_s - t.train_s - t.eval_s - t.confirm_s
    confirmations = sum(len(r.trials) - 1 for r in records if not r.is_baseline and r.trials)
    noise = night_noise(records)
    base, best = baseline_run(records), best_run(records)
    gain = 1 - best.primary / base.primary
    base_test, best_test = metrics_on_test(paths, base), metrics_on_test(paths, best)
    test_gain = 1 - best_test["mse"] / base_test["mse"] if base_test and best_test else None
    rows = [
        Row("night wall time", wall / 60, "min", f"budget {budget / 60:g} min"),
        Row("harness overhead", 100 * overhead / wall, "% of the night", "<= 5%", f"{overhead:.0f} s"),
        Row("overrun past the budget", max(0.0, wall - budget), "s", f"<= grace {settings.grace:.0f} s"),
        Row("training", 100 * t.train_s / wall, "% of the night"),
        Row("evaluation", 100 * t.eval_s / wall, "% of the night"),
        Row(
            "more seeds (noise floor + confirmations)",
            100 * t.confirm_s / wall,
            "% of the night",
            "",
            f"{confirmations} confirmation runs, {counts.get('unconfirmed', 0)} unconfirmed",
        ),
        Row(
            "noise floor (val mse σ)",
            100 * (noise.mse or 0),
            "%",
            "",
            f"{noise.dof} dof; margin {noise.margin:.1%}",
        ),
        Row("agent", 100 * t.agent_s / wall, "% of the night", "", args.agent),
        Row("runs", len(records), "runs", "", ", ".join(f"{n} {k}" for k, n in counts.items() if n)),
        Row("baseline val mse", base.primary, "", "", base.run_id),
        Row("best val mse", best.primary, "", "< baseline", best.run_id),
        Row("val mse gain", 100 * gain, "%", "> 0"),
    ]
    if test_gain is not None:
        rows.append(Row("test mse gain", 100 * test_gain, "%", "", "best vs baseline on test"))
    print_table(TITLE, rows)
    kept = [r for r in records if r.status == RunStatus.KEEP and not r.is_baseline]
    others = [t.train.get("others_cores") or 0.0 for r in records for t in r.trials if t.ok]
    notes = (
        f"{args.budget} night, {args.per_run} per run, agent `{args.agent}`, DiT, on `{args.dataset.name}`. "
        f"Kept: " + ("; ".join(f"{r.run_id}: {r.title}" for r in kept) or "none") + ". "
        f"Other programs kept {statistics.fmean(others or [0.0]):.2f} cores busy on average during the "
        "runs' training (from /proc/stat)."
    )
    write_section(NAME, TITLE, rows, notes)


if __name__ == "__main__":
    main()
