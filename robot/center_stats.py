"""What a centering benchmark reports per policy: success with its 95% interval, steps, steps relative to the
oracle, the planning gap, and planning time.

Success rates of 50-200 episodes near 0% or 100% are exactly where the textbook interval
p +- 1.96 sqrt(p (1 - p) / n) fails (it shrinks to nothing at 0 and 100% and leaves [0, 1]), so the interval
is Wilson's score interval.
Steps relative to the oracle are paired: every policy runs the same seeded starts, so each episode that both
the policy and the oracle solved gives one ratio, and the median of those ratios is reported (a ratio of
medians would compare different episodes when the two solve different sets).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from robot.center import EpisodeResult

Z95 = 1.959963984540054
"""The standard normal quantile of 0.975: a two-sided 95% interval."""


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a success rate: (low, high), within [0, 1]; (0, 1) when n is 0."""
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def relative_steps(results: Sequence[EpisodeResult], oracle: Sequence[EpisodeResult]) -> list[float]:
    """Per episode solved by both (same starts, same order): the policy's steps over the oracle's.

    Episodes the oracle centered in 0 steps (nothing to do) have no ratio and are left out.
    """
    if len(results) != len(oracle):
        raise ValueError(f"paired results needed: {len(results)} episodes against the oracle's {len(oracle)}")
    return [
        r.steps_to_center / o.steps_to_center
        for r, o in zip(results, oracle, strict=True)
        if r.success and o.success and o.steps_to_center
    ]


def planning_gap(oracle_success: float, success: float) -> float:
    """Oracle success minus the policy's (same unit): what a better model or planner could still win."""
    return oracle_success - success


@dataclass
class PolicyStats:
    """One policy's figures over the benchmark's episodes."""

    name: str
    episodes: int
    successes: int
    interval: tuple[float, float]  # Wilson 95% interval of the success rate
    median_steps: float | None  # over the episodes it solved
    steps_vs_oracle: float | None  # median of per-episode step ratios over episodes both solved
    paired: int  # how many episodes that ratio is over
    planning_gap: float | None  # oracle success minus this policy's (None for the oracle itself)
    plan_ms_median: float | None  # over the control steps that called the model
    plan_ms_p95: float | None
    blind_share: float | None  # of the model's plans, the share where no predicted frame showed the target
    by_kind: dict[str, tuple[int, int]] = field(default_factory=dict)  # start kind -> (successes, episodes)
    horizon: int | None = None  # a world-model planner's horizon; None for the baselines

    @property
    def success(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0


def summarize(
    name: str,
    results: Sequence[EpisodeResult],
    oracle: Sequence[EpisodeResult] | None = None,
    kinds: Sequence[str] | None = None,
    horizon: int | None = None,
) -> PolicyStats:
    """Figures of one policy; `oracle`: the oracle's results on the same starts (None for the oracle);
    `kinds`: each episode's start kind, for the per-kind success counts; `horizon`: a planner's."""
    n, wins = len(results), sum(r.success for r in results)
    steps = [r.steps_to_center for r in results if r.success]
    ratios = relative_steps(results, oracle) if oracle is not None else []
    ms = sorted(m for r in results for m in r.plan_ms)
    plans = [s for r in results for s in r.log if s.plan_ms is not None]
    by_kind: dict[str, tuple[int, int]] = {}
    for kind, result in zip(kinds or [], results, strict=kinds is not None):
        done, total = by_kind.get(kind, (0, 0))
        by_kind[kind] = (done + result.success, total + 1)
    oracle_rate = sum(o.success for o in oracle) / len(oracle) if oracle else None
    return PolicyStats(
        name=name,
        episodes=n,
        successes=wins,
        interval=wilson_interval(wins, n),
        median_steps=statistics.median(steps) if steps else None,
        steps_vs_oracle=statistics.median(ratios) if ratios else None,
        paired=len(ratios),
        planning_gap=planning_gap(oracle_rate, wins / n) if oracle_rate is not None and n else None,
        plan_ms_median=statistics.median(ms) if ms else None,
        plan_ms_p95=ms[int(0.95 * (len(ms) - 1))] if ms else None,
        blind_share=sum(s.blind for s in plans) / len(plans) if plans else None,
        by_kind=by_kind,
        horizon=horizon,
    )
