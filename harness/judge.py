"""The rule of the game: which metric decides, how much better is better, and what must not get worse.

LOOP.md states the same rule to the agent; `decide` is the one place it is applied, and `noise_floor` the
one place the night's noise is measured.

Two runs of the same code differ: a new seed, another data order, another share of the machine. On 2 CPU
cores two-minute DiT runs of one config spread by ~1.5% in val mse (σ) and ~0.02 in cf_acc, so a fixed 1%
margin keeps a change that does nothing about a third of the time. The night therefore measures its own
noise (the baseline trained on several seeds), demands a gain of `NOISE_K` noise-floor standard deviations
(never less than `MIN_MARGIN`), and confirms a win with a second seed before the branch moves.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

PRIMARY_METRIC = "mse"
"""Val mse of the target frame under the true action (lower is better)."""

GUARD_METRIC = "cf_acc"
GUARD_TOLERANCE = 0.02
"""A run may not lower counterfactual accuracy by more than this (or k noise-floor σ, when larger) below
the best run's."""

MIN_MARGIN = 0.01
"""The smallest relative improvement of the primary metric that keeps a run, however quiet the night."""

NOISE_K = 2.0
"""How many noise-floor standard deviations a gain must exceed. A one-seed candidate against a two-seed best
differs by noise of √(1 + 1/2) σ ≈ 1.22 σ, so 2 σ is a one-sided test at about 5% for a change that does
nothing; the confirmation (mean of two seeds against the best's mean, noise σ) must clear the same bar
again. Simulated on nights of 20 no-op proposals with σ = 1.5% and the floor from two baseline seeds (one
degree of freedom, so sometimes far too low): 0.44 false keeps per night on average, more than one in 5% of
nights (1.4 on average under the old fixed 1% rule); benchmarks/verdicts.py measures it on real nights."""

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
    noise_key: str | None = None  # the metric's own measured relative noise, reported beside it


REPORT_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("mse", "mse (target frame)", False, baseline_key="copy_mse"),
    MetricSpec("dyn_mse", "mse on changing pixels", False, baseline_key="copy_dyn_mse"),
    MetricSpec("psnr", "psnr (dB)", True),
    MetricSpec("ssim", "ssim", True, relative=False),
    MetricSpec("cf_acc", "counterfactual accuracy", True, baseline_value=1 / 3, relative=False),
    MetricSpec("cf_spread", "counterfactual spread", None),
    MetricSpec("motor_dir_acc", "motor direction accuracy", True, relative=False),
    MetricSpec("infer_ms_27", "27 predictions (ms)", False, noise=0.10, noise_key="infer_ms_27_noise"),
    MetricSpec("parameters", "parameters", None),
)
"""The metrics table of a per-run report, in order; the copy-last-frame column uses baseline_*."""


def mark_threshold(spec: MetricSpec, new: Metrics, old: Metrics | None, noise: NoiseFloor | None) -> float:
    """The smallest change of a metric worth marking better or worse: its fixed noise, or what was measured.

    The primary metric and the guard are marked past the night's keep margin and guard tolerance (the noise
    floor); a timing past the spread measured in either run (a loaded machine makes it large).
    """
    threshold = spec.noise
    if noise is not None and spec.key == PRIMARY_METRIC:
        threshold = max(threshold, noise.margin)
    if noise is not None and spec.key == GUARD_METRIC:
        threshold = max(threshold, noise.guard_tolerance)
    if spec.noise_key:
        measured = [value(m, spec.noise_key) for m in (new, old)]
        threshold = max([threshold, *(m for m in measured if m is not None)])
    return threshold


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
class NoiseFloor:
    """How much same-code runs differ, pooled over groups of runs of one commit (the night: its baseline).

    `mse` is relative (σ of val mse as a fraction of the group's mean, so it carries from the baseline to
    better models); `cf_acc` is absolute. `dof` is the degrees of freedom behind them (runs minus groups):
    two baseline seeds give one, a rough estimate; `--baseline-seeds 4` gives three.
    """

    mse: float | None = None
    cf_acc: float | None = None
    dof: int = 0

    @property
    def margin(self) -> float:
        """Relative gain of the primary metric needed to keep a run."""
        return max(MIN_MARGIN, NOISE_K * self.mse) if self.mse is not None else MIN_MARGIN

    @property
    def guard_tolerance(self) -> float:
        """How far the guard metric may fall below the best's."""
        return max(GUARD_TOLERANCE, NOISE_K * self.cf_acc) if self.cf_acc is not None else GUARD_TOLERANCE

    def describe(self) -> str:
        if self.mse is None:
            return f"no noise floor measured yet: margin {self.margin:.1%}"
        return (
            f"noise floor σ {self.mse:.2%} of val {PRIMARY_METRIC}, {self.cf_acc or 0:.3f} of {GUARD_METRIC} "
            f"({self.dof} dof): margin {self.margin:.1%}, guard {self.guard_tolerance:.3f}"
        )


NO_NOISE = NoiseFloor()


def noise_floor(groups: Sequence[Sequence[Metrics]]) -> NoiseFloor:
    """The pooled spread of groups of same-code runs (each group: the val metrics of one commit's seeds).

    Pooled variance: squared deviations from each group's own mean, summed over groups, over runs minus
    groups. Groups of one run add nothing; non-finite values are left out.
    """

    def pooled(key: str, relative: bool) -> tuple[float | None, int]:
        squares, dof = 0.0, 0
        for group in groups:
            values = [v for v in (value(m, key) for m in group) if v is not None]
            if len(values) < 2:
                continue
            mean = statistics.fmean(values)
            if relative and mean == 0:
                continue
            squares += sum(((v - mean) / (abs(mean) if relative else 1.0)) ** 2 for v in values)
            dof += len(values) - 1
        return (math.sqrt(squares / dof), dof) if dof else (None, 0)

    mse, dof = pooled(PRIMARY_METRIC, relative=True)
    cf_acc, _ = pooled(GUARD_METRIC, relative=False)
    return NoiseFloor(mse=mse, cf_acc=cf_acc, dof=dof)


def mean_metrics(runs: Sequence[Metrics]) -> Metrics:
    """Seeds of one commit as one set of metrics: each number averaged over the runs where it is finite
    (a value every run shares, like the parameter count, stays as it is); the rest from the first run."""
    merged: Metrics = dict(runs[0]) if runs else {}
    for key in merged:
        finite = [v for v in (value(m, key) for m in runs) if v is not None]
        if finite and len(set(finite)) > 1:
            merged[key] = statistics.fmean(finite)
    return merged


@dataclass(frozen=True)
class Decision:
    keep: bool
    reason: str


def decide(
    candidate: Metrics, best: Metrics | None, best_id: str | None = None, noise: NoiseFloor = NO_NOISE
) -> Decision:
    """Keep when the primary metric beats the best by the noise margin and the guard metric holds.

    `candidate` and `best` are each the mean over a commit's seeds (`mean_metrics`); `noise` is the night's
    noise floor, which sets both the margin and the guard's tolerance.
    """
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
    margin = noise.margin
    why = "the night's minimum" if margin == MIN_MARGIN else f"{NOISE_K:g} x the noise floor"
    if change > -margin:
        return Decision(
            False,
            f"{PRIMARY_METRIC} {mse:.6g} is {change:+.1%} vs {against}; "
            f"keeping needs more than {margin:.1%} lower ({why})",
        )
    floor = None if best_guard is None else best_guard - noise.guard_tolerance
    if floor is not None and (guard is None or guard < floor):
        return Decision(
            False,
            f"{PRIMARY_METRIC} improved {-change:.1%} but {GUARD_METRIC} "
            f"{'is missing' if guard is None else f'fell to {guard:.3f}'} (must stay >= {floor:.3f})",
        )
    guard_text = "" if guard is None else f"; {GUARD_METRIC} {guard:.3f} holds"
    return Decision(
        True, f"{PRIMARY_METRIC} {mse:.6g} is {-change:.1%} below {against} (margin {margin:.1%}){guard_text}"
    )
