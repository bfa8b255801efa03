"""The keep/discard rule of LOOP.md: beat the best by the noise margin without losing action accuracy."""

from __future__ import annotations

import math

import pytest

from harness.judge import GUARD_TOLERANCE, NOISE_MARGIN, decide

BEST = {"mse": 0.0100, "cf_acc": 0.95}


def test_the_baseline_is_kept():
    assert decide({"mse": 0.02, "cf_acc": 0.4}, None).keep


@pytest.mark.parametrize(
    ("mse", "cf_acc", "keep"),
    [
        (0.0100 * (1 - NOISE_MARGIN) - 1e-9, 0.95, True),  # just past the margin
        (0.0100 * (1 - NOISE_MARGIN) + 1e-9, 0.95, False),  # inside the noise margin
        (0.0110, 0.99, False),  # worse
        (0.0080, 0.95 - GUARD_TOLERANCE + 1e-9, True),  # guard just holds
        (0.0080, 0.95 - GUARD_TOLERANCE - 1e-3, False),  # better mse bought with action blindness
    ],
)
def test_margin_and_guard(mse: float, cf_acc: float, keep: bool):
    decision = decide({"mse": mse, "cf_acc": cf_acc}, BEST, "n-003")
    assert decision.keep is keep
    if keep:
        assert "below the best 0.01 (n-003)" in decision.reason
    elif cf_acc < 0.93:
        assert "cf_acc fell to" in decision.reason


@pytest.mark.parametrize("metrics", [{"mse": math.nan, "cf_acc": 1.0}, {"cf_acc": 1.0}, {"mse": "x"}])
def test_no_finite_mse_is_never_kept(metrics: dict):
    decision = decide(metrics, BEST)
    assert not decision.keep and "no finite mse" in decision.reason


def test_a_missing_guard_metric_blocks_keeping():
    decision = decide({"mse": 0.005}, BEST)
    assert not decision.keep and "cf_acc is missing" in decision.reason
