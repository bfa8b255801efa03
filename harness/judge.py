"""The rule of the game: which metric decides, how much better is better, and what must not get worse.

LOOP.md states the same rule to the agent; `decide` is the one place it is applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PRIMARY_METRIC = "mse"
"""Val mse of the target frame under the true action (lower is better)."""

GUARD_METRIC = "cf_acc"
GUARD_TOLERANCE = 0.02
"""A run may not lower counterfactual accuracy by more than this below the best run's."""

NOISE_MARGIN = 0.01
"""Relative improvement of the primary metric a run must reach to be kept: gains inside it are noise."""

Metrics = dict[str, float | int | str | None]


@dataclass(frozen=True)
class MetricSpec:
    """How a metric is shown and compared in reports."""

    key: str
    label: str
    higher_is_better: bool | None  # None: informative only, no better/worse
    baseline_key: str | None = None  # the copy-last-frame baseline's value of the same metric
    baseline_value: float | None = None  # or a constant baseline (chance)
    relative: bool = True  # changes shown in percent; False for scores in [0, 1], shown as differences
    noise: float = 0.005  # a change smaller than this is not marked better or worse


REPORT_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("mse", "mse (target frame)", False, baseline_key="copy_mse"),
    MetricSpec("dyn_mse", "mse on changing pixels", False, baseline_key="copy_dyn_mse"),
    MetricSpec("psnr", "psnr (dB)", True),
    MetricSpec("ssim", "ssim", True, relative=False),
    MetricSpec("cf_acc", "counterfactual accuracy", True, baseline_value=1 / 3, relative=False),
    MetricSpec("cf_spread", "counterfactual spread", None),
    MetricSpec("motor_dir_acc", "motor direction accuracy", True, relative=False),
    MetricSpec("infer_ms_27", "27 predictions (ms)", False, noise=0.10),  # timings jitter ~10% here
    MetricSpec("parameters", "parameters", None),
)
"""The metrics table of a per-run report, in order; the copy-last-frame column uses baseline_*."""


def value(metrics: Metrics | None, key: str) -> float | None:
    """A finite numeric metric, or None when absent, not a number, or not finite."""
    if not metrics:
        return None
    v = metrics.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def relative_change(new: float | None, old: float | None) -> float | None:
    """(new - old) / |old|, or None when either is missing or old is zero."""
    if new is None or old is None or old == 0:
        return None
    return (new - old) / abs(old)


@dataclass(frozen=True)
class Decision:
    keep: bool
    reason: str


def decide(candidate: Metrics, best: Metrics | None, best_id: str | None = None) -> Decision:
    """Keep when the primary metric beats the best by the noise margin and the guard metric holds."""
    mse = value(candidate, PRIMARY_METRIC)
    if mse is None:
        return Decision(False, f"no finite {PRIMARY_METRIC} in the evaluation")
    if best is None:
        return Decision(True, "baseline: the unchanged code, the reference for every later run")
    best_mse, best_guard = value(best, PRIMARY_METRIC), value(best, GUARD_METRIC)
    guard = value(candidate, GUARD_METRIC)
    against = f"the best {best_mse:.6g}" + (f" ({best_id})" if best_id else "")
    change = relative_change(mse, best_mse)
    if best_mse is None or change is None:
        return Decision(True, f"{PRIMARY_METRIC} {mse:.6g}; the best run has no {PRIMARY_METRIC} to beat")
    if change > -NOISE_MARGIN:
        return Decision(
            False,
            f"{PRIMARY_METRIC} {mse:.6g} is {change:+.1%} vs {against}; "
            f"keeping needs at least {NOISE_MARGIN:.0%} lower",
        )
    floor = None if best_guard is None else best_guard - GUARD_TOLERANCE
    if floor is not None and (guard is None or guard < floor):
        return Decision(
            False,
            f"{PRIMARY_METRIC} improved {-change:.1%} but {GUARD_METRIC} "
            f"{'is missing' if guard is None else f'fell to {guard:.3f}'} (must stay >= {floor:.3f})",
        )
    guard_text = "" if guard is None else f"; {GUARD_METRIC} {guard:.3f} holds"
    return Decision(True, f"{PRIMARY_METRIC} {mse:.6g} is {-change:.1%} below {against}{guard_text}")
