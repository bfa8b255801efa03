"""Centering in simulation: the world-model planner against a random policy and the ground-truth oracle.

    python -m benchmarks.center [--checkpoint runs/bench/dit-10m] [--episodes 50] [--horizon 2]

The same 50 seeded starts for every policy (a target in view, 0.3 to 0.9 half-widths off center, reachable
without hitting the pan limit); success = the target within 0.15 half-widths of the center for 2 control
steps in a row, judged on the simulator's ground truth, within 20 actions. Planning time is the planner's
whole control step (3^H predictions in H batched `predict` calls, plus scoring) on this machine's CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.common import Row, print_table, write_section
from models.promoted import load_checkpoint
from robot.center import CenterSettings
from robot.center_cli import run_benchmark
from robot.planner import PlannerConfig

NAME = "center"
TITLE = "Centering an object in simulation (2 CPU cores)"
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.center", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "runs/bench/dit-10m"))
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--horizon", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    promoted = load_checkpoint(args.checkpoint, ROOT)
    settings = CenterSettings()
    stats = run_benchmark(promoted, args.episodes, settings, PlannerConfig(horizon=args.horizon))
    rows = []
    for s in stats:
        rows.append(
            Row(f"{s.name}: success", 100 * s.success, "%", ">= 90%" if s.name == "world model" else "")
        )
        if s.median_steps is not None:
            rows.append(Row(f"{s.name}: median steps to center", s.median_steps, "steps"))
        if s.plan_ms_median is not None:
            rows.append(Row(f"{s.name}: planning time (median)", s.plan_ms_median, "ms/step", "<= 500"))
            rows.append(Row(f"{s.name}: planning time (p95)", s.plan_ms_p95, "ms/step", "<= 500"))
    print_table(TITLE, rows)
    notes = (
        f"Model `{promoted.run_id}` ({promoted.path.name}), horizon {args.horizon} "
        f"({3**args.horizon} sequences per step), {args.episodes} episodes from seed 1000."
    )
    write_section(NAME, TITLE, rows, notes)


if __name__ == "__main__":
    main()
