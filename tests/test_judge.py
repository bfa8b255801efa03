"""The keep/discard rule of LOOP.md: beat the best by the noise margin without losing action accuracy, the
noise floor it is measured against, and the report's better/worse marks."""

from __future__ import annotations

import math

import pytest

from harness.judge import (
    GUARD_TOLERANCE,
    MIN_MARGIN,
    NOISE_K,
    REPORT_METRICS,
    NoiseFloor,
    decide,
    mark_threshold,
    mean_metrics,
    noise_floor,
)

BEST = {"mse": 0.0100, "cf_acc": 0.95}


def test_the_baseline_is_kept():
    assert decide({"mse": 0.02, "cf_acc": 0.4}, None).keep


@pytest.mark.parametrize(
    ("mse", "cf_acc", "keep"),
    [
        (0.0100 * (1 - MIN_MARGIN) - 1e-9, 0.95, True),  # just past the margin
        (0.0100 * (1 - MIN_MARGIN) + 1e-9, 0.95, False),  # inside the noise margin
        (0.0110, 0.99, False),  # worse
        (0.0080, 0.95 - GUARD_TOLERANCE + 1e-9, True),  # guard just holds
        (0.0080, 0.95 - GUARD_TOLERANCE - 1e-3, False),  # better mse bought with action blindness
    ],
)
def test_margin_and_guard(mse: float, cf_acc: float, keep: bool):
    decision = decide({"mse": mse, "cf_acc": cf_acc}, BEST, "n-003")
    assert decision.keep is keep
    if keep:
        assert "below the best 0.01 (n-003) (margin 1.0%)" in decision.reason
    elif cf_acc < 0.93:
        assert "cf_acc fell to" in decision.reason


@pytest.mark.parametrize("metrics", [{"mse": math.nan, "cf_acc": 1.0}, {"cf_acc": 1.0}, {"mse": "x"}])
def test_no_finite_mse_is_never_kept(metrics: dict):
    decision = decide(metrics, BEST)
    assert not decision.keep and "no finite mse" in decision.reason


def test_a_missing_guard_metric_blocks_keeping():
    decision = decide({"mse": 0.005}, BEST)
    assert not decision.keep and "cf_acc is missing" in decision.reason


def test_the_noise_floor_pools_groups_of_same_code_runs():
    groups = [
        [{"mse": 1.00, "cf_acc": 0.50}, {"mse": 1.02, "cf_acc": 0.54}],  # deviations ±1% and ±0.02
        [{"mse": 2.0, "cf_acc": 0.9}, {"mse": 2.0, "cf_acc": 0.9}, {"mse": 2.0, "cf_acc": 0.9}],  # no spread
        [{"mse": 5.0, "cf_acc": 0.7}],  # one run: no information
        [{"mse": math.nan, "cf_acc": 0.7}, {"mse": 3.0}],  # non-finite values left out
    ]
    floor = noise_floor(groups)
    relative = 0.01 / 1.01  # each run of the first group is 0.01 from its mean of 1.01
    assert floor.dof == 1 + 2
    assert floor.mse == pytest.approx(math.sqrt(2 * relative**2 / 3))
    assert floor.cf_acc == pytest.approx(math.sqrt(2 * 0.02**2 / 3))
    assert noise_floor([[{"mse": 1.0}]]) == NoiseFloor()  # nothing measured


def test_the_margin_is_k_noise_floors_but_never_below_the_minimum():
    assert NoiseFloor().margin == MIN_MARGIN and NoiseFloor().guard_tolerance == GUARD_TOLERANCE
    quiet = NoiseFloor(mse=0.001, cf_acc=0.001, dof=1)
    assert quiet.margin == MIN_MARGIN and quiet.guard_tolerance == GUARD_TOLERANCE
    loud = NoiseFloor(mse=0.015, cf_acc=0.03, dof=1)
    assert loud.margin == pytest.approx(NOISE_K * 0.015) and loud.guard_tolerance == pytest.approx(
        NOISE_K * 0.03
    )


@pytest.mark.parametrize(
    ("mse", "cf_acc", "keep"),
    [
        (0.0100 * (1 - 0.03) - 1e-9, 0.95, True),  # past 2 x 1.5%
        (0.0100 * (1 - 0.03) + 1e-9, 0.95, False),  # a 2.9% gain is inside the noise: the old rule kept it
        (0.0090, 0.95 - 0.06 + 1e-9, True),  # the guard widens with the cf_acc noise (2 x 0.03)
        (0.0090, 0.95 - 0.06 - 1e-3, False),
    ],
)
def test_the_rule_with_a_noise_floor(mse: float, cf_acc: float, keep: bool):
    noise = NoiseFloor(mse=0.015, cf_acc=0.03, dof=3)
    decision = decide({"mse": mse, "cf_acc": cf_acc}, BEST, "n-003", noise)
    assert decision.keep is keep
    if not keep and cf_acc == 0.95:
        assert "keeping needs more than 3.0% lower (2 x the noise floor)" in decision.reason


def test_seeds_are_averaged_into_one_set_of_metrics():
    merged = mean_metrics(
        [
            {"mse": 0.1, "cf_acc": 0.5, "parameters": 10, "split": "val", "motor_dir_acc": None},
            {"mse": 0.3, "cf_acc": math.nan, "parameters": 10, "split": "val", "motor_dir_acc": 0.5},
        ]
    )
    assert merged == {
        "mse": pytest.approx(0.2),
        "cf_acc": 0.5,
        "parameters": 10,
        "split": "val",
        "motor_dir_acc": None,
    }
    assert mean_metrics([]) == {}


def test_changes_are_marked_past_the_measured_noise():
    specs = {s.key: s for s in REPORT_METRICS}
    noise = NoiseFloor(mse=0.02, cf_acc=0.001, dof=1)
    assert mark_threshold(specs["mse"], {}, {}, noise) == pytest.approx(0.04)
    assert mark_threshold(specs["mse"], {}, {}, None) == specs["mse"].noise
    assert mark_threshold(specs["cf_acc"], {}, {}, noise) == GUARD_TOLERANCE
    timing = specs["infer_ms_27"]
    assert (
        mark_threshold(timing, {"infer_ms_27_noise": 0.02}, {"infer_ms_27_noise": 0.01}, noise)
        == timing.noise
    )
    loaded = {"infer_ms_27_noise": 0.45}  # a run timed on a busy machine: its spread says so
    assert mark_threshold(timing, {"infer_ms_27_noise": 0.02}, loaded, noise) == 0.45
