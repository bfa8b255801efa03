"""The newcomer's demo from a fresh clone: how long `make demo` takes and whether its model centers.

    python -m benchmarks.demo [--budget 25m] [--per-run 5m] [--episodes 20]

Clones this repository's HEAD into a temporary directory and runs `make demo` there exactly as a new user
would (install, record the dataset, the night with the offline agent, `harness promote --best`,
`robot-center --benchmark` on the hard starts), then reads what it printed and wrote: the night's runs, the
promoted model's val metrics, and the success of the planner beside the random policy and the oracle on the
same starts. What else ran on the machine goes in the notes by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks.common import Row, print_table, write_section

NAME = "demo"
TITLE = "The demo from a fresh clone: `make demo` (2 CPU cores)"
ROOT = Path(__file__).resolve().parents[1]
SUCCESS = re.compile(
    r"[│┃|]\s*(?P<policy>[^│┃|]*?)\s*[│┃|]\s*(?P<done>\d+)/(?P<total>\d+)\s*(?:\(\d+%\))?\s*[│┃|]"
)
PROMOTED = re.compile(r"promoted (?P<run>\S+) -> ")


def run_demo(clone: Path, budget: str, per_run: str, episodes: int) -> tuple[str, float]:
    """`make demo` in `clone`; its whole output and wall time. Fails loudly when the demo does."""
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    make = ["make", "demo", f"DEMO_BUDGET={budget}", f"DEMO_PER_RUN={per_run}"]
    make.append(f"DEMO_CENTER_EPISODES={episodes}")
    start = time.monotonic()
    env = {**os.environ, "COLUMNS": "200"}  # rich wraps its tables to the terminal's width; keep rows whole
    done = subprocess.run(make, cwd=clone, capture_output=True, text=True, env=env)
    seconds = time.monotonic() - start
    out = done.stdout + done.stderr
    (clone / "demo.log").write_text(out)
    if done.returncode != 0:
        sys.exit(f"make demo failed ({done.returncode}); its log: {clone / 'demo.log'}\n{out[-2000:]}")
    return out, seconds


def rows_of(out: str, seconds: float, clone: Path) -> list[Row]:
    """The figures: wall time, the night's runs, the promoted model, success of each policy."""
    ledgers = sorted(clone.glob("runs/*/ledger.jsonl"))
    records = [json.loads(line) for line in ledgers[-1].read_text().splitlines()] if ledgers else []
    statuses = ", ".join(f"{n} {status}" for status, n in Counter(r["status"] for r in records).items())
    rows = [
        Row("make demo, fresh clone", seconds / 60, "min", "~25", "install, data, night, promote, benchmark"),
        Row("runs in the night", len(records), "runs", "", statuses),
    ]
    promoted = PROMOTED.search(out)
    if promoted:
        record = next((r for r in records if r["run_id"] == promoted.group("run")), None)
        val = (record or {}).get("metrics_val") or {}
        for key in ("mse_vs_copy", "cf_acc"):
            if key in val:
                rows.append(Row(f"promoted {promoted.group('run')}: val {key}", val[key], "", ""))
    for match in SUCCESS.finditer(out):
        done, total = int(match.group("done")), int(match.group("total"))
        policy = match.group("policy").strip()
        if policy not in ("random", "oracle"):
            policy = "world model (the promoted run)"
        target = "most" if policy.startswith("world") else ""
        rows.append(Row(f"{policy}: centered", done, f"of {total}", target, "hard starts, same seeds"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="25m", help="DEMO_BUDGET (the Makefile's default)")
    parser.add_argument("--per-run", default="5m", help="DEMO_PER_RUN (the Makefile's default)")
    parser.add_argument("--episodes", type=int, default=20, help="DEMO_CENTER_EPISODES")
    parser.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="worldloop-demo-"))
    out, seconds = run_demo(tmp / "worldloop", args.budget, args.per_run, args.episodes)
    rows = rows_of(out, seconds, tmp / "worldloop")
    print_table(TITLE, rows)
    notes = (
        f"A fresh clone of HEAD, `make demo DEMO_BUDGET={args.budget} DEMO_PER_RUN={args.per_run} "
        f"DEMO_CENTER_EPISODES={args.episodes}`: the install, a 200-episode simulated dataset, a night with "
        "the offline agent (CPU-time budget per run), `harness promote --best`, then `robot-center "
        "--benchmark` on that many hard starts (robot/center_episodes.py) beside a random policy and the "
        "oracle."
    )
    write_section(NAME, TITLE, rows, notes)
    print(f"clone: {tmp / 'worldloop'}" if args.keep else "")


if __name__ == "__main__":
    main()
