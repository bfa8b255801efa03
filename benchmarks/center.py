"""Centering in simulation, hard starts: world-model planners against a random policy and the oracle.

    python -m benchmarks.center [--checkpoint [LABEL=]PATH ...] [--episodes 200] [--horizon H ...]

    python -m benchmarks.center --checkpoint dit-10m=runs/bench/dit-10m \\
        --checkpoint dit-30m=runs/bench/dit-30m --horizon 2 --horizon 3

One seeded start per episode (robot/center_episodes.py: the target near the edge of the view, lost from it,
or never seen; a similar-hue decoy in view and hidden under the arm in the base view; two other distractors),
the same starts for every policy. Success (robot.center.hard_settings): the target within 0.15 half-widths
of the center for 3 control steps in a row, judged on the simulator's ground truth, within 16 actions.
Each `--checkpoint` is planned with at each `--horizon`; random and oracle run once. Planning time is the
planner's whole control step (3^H predictions in H batched `predict` calls, plus scoring) on this machine's
CPU, over the steps that called the model (a search step while the target is out of view calls none).
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import torch

from benchmarks.common import Row, print_table, write_section
from models.promoted import load_checkpoint
from robot.center import hard_settings
from robot.center_benchmark import run_benchmark
from robot.center_episodes import HardSettings
from robot.center_stats import PolicyStats

NAME = "center"
TITLE = "Centering an object in simulation, hard starts (2 CPU cores)"
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = "dit-10m=runs/bench/dit-10m"
TARGETS = {"random": "<= 15%", "oracle": ">= 95%", "world model": ">= 90%"}


def checkpoint_arg(text: str) -> tuple[str, str]:
    """`LABEL=PATH` or `PATH` (labelled by its last path component) -> (label, path)."""
    label, sep, path = text.partition("=")
    return (label, path) if sep else (Path(text).name, text)


def rows_of(stats: PolicyStats) -> list[Row]:
    """The RESULTS.md rows of one policy."""
    kind = stats.name if stats.horizon is None else "world model"
    low, high = stats.interval
    ci = f"95% CI {100 * low:.0f}-{100 * high:.0f}% ({stats.successes}/{stats.episodes})"
    rows = [Row(f"{stats.name}: success", 100 * stats.success, "%", TARGETS[kind], ci)]
    if stats.median_steps is not None:
        rows.append(Row(f"{stats.name}: median steps to center", stats.median_steps, "steps"))
    if stats.steps_vs_oracle is not None:
        rows.append(
            Row(
                f"{stats.name}: steps / oracle's",
                stats.steps_vs_oracle,
                "x",
                "<= 1.5" if kind == "world model" else "",
                f"median per-episode ratio, {stats.paired} episodes both solved",
            )
        )
    if stats.planning_gap is not None:
        gap = 100 * stats.planning_gap
        rows.append(Row(f"{stats.name}: planning gap", gap, "points", "", "oracle's success - this one's"))
    if stats.plan_ms_median is not None:
        target = "<= 150" if stats.horizon == 2 else ""
        rows.append(Row(f"{stats.name}: planning time (median)", stats.plan_ms_median, "ms/step", target))
        rows.append(Row(f"{stats.name}: planning time (p95)", stats.plan_ms_p95, "ms/step"))
    if stats.blind_share is not None:
        rows.append(
            Row(
                f"{stats.name}: blind plans",
                100 * stats.blind_share,
                "%",
                "",
                "model steps where no predicted frame showed the target (then it turned toward it)",
            )
        )
    return rows


def notes(stats: list[PolicyStats], models: list[tuple[str, str]], episodes: int, seed: int) -> str:
    """What the figures mean: models, starts, the success rule, the ratio, and success by start kind."""
    hard, rule = HardSettings(), hard_settings()
    kinds = ", ".join(f"`{k}` {100 * p:.0f}%" for k, p in hard.kinds)
    (edge_lo, edge_hi), (out_lo, out_hi) = hard.edge_offset, hard.outside_offset
    by_kind = "; ".join(
        f"{s.name} " + ", ".join(f"{k} {done}/{total}" for k, (done, total) in sorted(s.by_kind.items()))
        for s in stats
    )
    listed = ", ".join(f"`{label}` = `{path}`" for label, path in models) or "none in this run"
    text = " ".join(
        [
            f"Models: {listed}. {episodes} starts, seeds {seed}-{seed + episodes - 1}, the same for every",
            f"policy (robot/center_episodes.py). Start kinds: {kinds}. `edge`: the target in view",
            f"{edge_lo}-{edge_hi} half-widths off center; `lost`: it was in view, then a lead-in of pan",
            "actions (seen by every policy, not counted) turned it out of view,",
            f"{out_lo}-{out_hi} half-widths off; `unseen`: never in view, the arm near one end of its range",
            f"(|pan| >= {hard.unseen_pan:g}) and the target out of view toward the middle. Targets red, blue",
            "or purple; every scene has a decoy of the nearest palette hue (orange, purple, blue: 14, 29 and",
            "29 OpenCV hue units away) in the wrist view near its center and hidden under the arm in the",
            f"base view, and {hard.distractors} distractors of other colors. Success: |offset| <=",
            f"{rule.tolerance}",
            f"half-widths for {rule.hold} control steps in a row within {rule.max_steps} actions, on the",
            "simulator's ground truth. Steps / oracle's: the median, over the episodes both solved, of",
            "the policy's steps over the oracle's on the same start. The world-model policy sees",
            "observations only: while the target is out of the wrist view it searches (robot/search.py:",
            "toward where it was last seen, else a sweep toward the middle of the range) without calling",
            "the model; planning times are over the steps that called it. Blind plans: model steps where",
            "no predicted frame showed the target; the policy then turned toward it as a search would.",
            f"By start kind: {by_kind}.",
        ]
    )
    return textwrap.fill(text, 110, break_on_hyphens=False)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.center", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint",
        action="append",
        type=checkpoint_arg,
        help=f"[LABEL=]PATH of a run or checkpoint; repeat to compare (default {DEFAULT_CHECKPOINT})",
    )
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument(
        "--horizon", action="append", type=int, help="planning horizon; repeat for several (default 2 and 3)"
    )
    parser.add_argument("--seed", type=int, default=1000, help="the first start's seed")
    args = parser.parse_args()
    torch.set_num_threads(2)
    models = args.checkpoint or [checkpoint_arg(DEFAULT_CHECKPOINT)]
    horizons = args.horizon or [2, 3]
    loaded = [(label, load_checkpoint(path, ROOT)) for label, path in models]

    def progress(name: str, done: int, total: int) -> None:
        if done == total or done % 50 == 0:
            print(f"{name}: {done}/{total} episodes", flush=True)

    stats = run_benchmark(loaded, args.episodes, hard_settings(), horizons, args.seed, progress=progress)
    rows = [row for s in stats for row in rows_of(s)]
    print_table(TITLE, rows)
    write_section(NAME, TITLE, rows, notes(stats, models, args.episodes, args.seed))


if __name__ == "__main__":
    main()
