"""The hard centering benchmark in simulation: random, oracle and world-model planners on the same starts.

Used by `python -m benchmarks.center` (which writes benchmarks/RESULTS.md) and `robot-center --benchmark`.
Starts come from robot/center_episodes.py, one per seed; every policy plays every start, so the oracle's
result on an episode is the paired reference for the others' steps and for the planning gap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.console import Console
from rich.table import Table

from models.promoted import PromotedModel
from robot.center import (
    CenterSettings,
    EpisodeResult,
    OraclePolicy,
    Policy,
    RandomPolicy,
    WorldModelPolicy,
    hard_settings,
    run_start,
)
from robot.center_episodes import HardSettings, make_starts
from robot.center_stats import PolicyStats, summarize
from robot.planner import PlannerConfig
from robot.sim import SimArm, SimConfig

Progress = Callable[[str, int, int], None]
"""Called with (policy name, episodes done, episodes total)."""


def run_benchmark(
    models: Sequence[tuple[str, PromotedModel]],
    episodes: int,
    settings: CenterSettings | None = None,
    horizons: Sequence[int] = (2,),
    seed: int = 1000,
    hard: HardSettings | None = None,
    progress: Progress | None = None,
) -> list[PolicyStats]:
    """Random, oracle, then each (label, model) at each planning horizon, on the starts of seeds
    seed .. seed + episodes - 1."""
    sim = SimConfig()
    settings = settings or hard_settings()
    settings.frames_per_action = round(sim.action_duration * sim.fps)
    arm = SimArm(sim, seed=seed)
    starts = make_starts(arm, episodes, seed, hard)
    kinds = [s.kind for s in starts]

    def play(name: str, policy: Policy) -> list[EpisodeResult]:
        results = []
        for start in starts:
            results.append(run_start(arm, policy, start, settings))
            if progress is not None:
                progress(name, len(results), len(starts))
        return results

    oracle = play("oracle", OraclePolicy(arm, settings.tolerance))
    stats = [
        summarize("random", play("random", RandomPolicy(seed)), oracle, kinds),
        summarize("oracle", oracle, None, kinds),
    ]
    for label, promoted in models:
        for horizon in horizons:
            name = f"world model {label} H{horizon}"
            planner = PlannerConfig(horizon=horizon, tolerance=settings.tolerance)
            results = play(name, WorldModelPolicy(promoted, planner))
            stats.append(summarize(name, results, oracle, kinds, horizon))
    return stats


def print_stats(stats: Sequence[PolicyStats], title: str) -> None:
    """The benchmark's table on the console."""
    table = Table(title=title)
    columns = (
        "policy",
        "success",
        "95% CI",
        "median steps",
        "steps / oracle",
        "planning gap",
        "plan ms (median)",
        "plan ms (p95)",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "policy" else "right")
    for s in stats:
        low, high = s.interval
        table.add_row(
            s.name,
            f"{s.successes}/{s.episodes} ({s.success:.0%})",
            f"{low:.0%}-{high:.0%}",
            _shown(s.median_steps, "g"),
            _shown(s.steps_vs_oracle, ".2f"),
            "-" if s.planning_gap is None else f"{100 * s.planning_gap:+.0f} pts",
            _shown(s.plan_ms_median, ".0f"),
            _shown(s.plan_ms_p95, ".0f"),
        )
    Console().print(table)


def _shown(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
