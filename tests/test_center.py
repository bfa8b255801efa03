"""Closing the loop: the planner, centering episodes and their policies, the hard benchmark (its starts, the
search, its statistics), `robot-center`, `robot-record`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from torch import Tensor

from benchmarks.center import checkpoint_arg, rows_of
from models.canvas import CanvasConfig
from models.lerobot import LeRobotReader
from models.promoted import PromotedModel, load_checkpoint
from models.vocab import PAN_MINUS, PAN_PLUS
from models.world_model import to_tensor, to_uint8
from robot.center import (
    CenterSettings,
    EpisodeResult,
    OraclePolicy,
    RandomPolicy,
    WorldModelPolicy,
    benchmark_starts,
    hard_settings,
    perceived_offset,
    run_episode,
    run_start,
)
from robot.center_benchmark import run_benchmark
from robot.center_episodes import SIMILAR_HUE, HardSettings, Start, make_start, make_starts
from robot.center_stats import planning_gap, relative_steps, summarize, wilson_interval
from robot.planner import HUE_TOLERANCE, TARGET_HUES, UNSEEN, Planner, PlannerConfig, target_offset
from robot.search import Search
from robot.sim import PALETTE, SimArm, SimConfig
from robot.so101 import save_calibration
from tests.helpers import ROOT, run_module, run_train, write_config
from tests.servos import CALIBRATION, WRITES, calibrated_emulator

SIM = SimConfig()
SETTINGS = CenterSettings(max_steps=12, frames_per_action=round(SIM.action_duration * SIM.fps))
SHIFT_PX = 8  # how far one pan action moves the 64 px wrist view (robot/sim.py: about 8.2 px)


class ShiftModel(torch.nn.Module):
    """A world model that knows the camera physics: pan+ moves the view's content right, pan- left.

    It stands for a good trained model, so the planner's own logic (context, rollout, scoring) is what is
    tested; the trained checkpoint is exercised by `robot-center` below and by the benchmark.
    """

    kind = "shift"

    def __init__(self, config: CanvasConfig) -> None:
        super().__init__()
        self.layout = config.layout
        self.history = config.history
        self.unused = torch.nn.Parameter(torch.zeros(1))  # the planner reads the device from a parameter

    def predict(self, context: Tensor, actions: Tensor, seed: int | None = None) -> Tensor:
        last = context[..., self.layout.step_columns(self.history - 1)]
        shifts = {0: 0, PAN_PLUS: SHIFT_PX, PAN_MINUS: -SHIFT_PX}
        out = [
            torch.stack([shifted(last[b], shifts[int(a)]) for a in actions[b]]) for b in range(len(context))
        ]
        return torch.stack(out)


def shifted(frame: Tensor, dx: int) -> Tensor:
    """`frame` (3, H, W) moved right by dx pixels (left when negative), the uncovered edge repeated."""
    if dx == 0:
        return frame
    out = torch.roll(frame, dx, dims=-1)
    if dx > 0:
        out[..., :dx] = frame[..., :1]
    else:
        out[..., dx:] = frame[..., -1:]
    return out


def shift_model() -> PromotedModel:
    canvas = CanvasConfig()
    config = SimpleNamespace(canvas=canvas)
    return PromotedModel(ShiftModel(canvas), config, {"run_id": "shift"}, Path("."), to_tensor, to_uint8)


def test_target_offset_is_the_centroid_in_half_widths():
    frames = np.full((3, 64, 64, 3), 128, np.uint8)
    frames[0, 20:30, 40:50] = PALETTE["red"]  # centroid x = 45 -> (45 - 32) / 32
    frames[1, 20:30, 0:4] = PALETTE["blue"]
    offsets = target_offset(frames, "red")
    assert offsets[0] == pytest.approx(13 / 32)
    assert np.isnan(offsets[1]) and np.isnan(offsets[2])  # no red there
    assert target_offset(frames[1:2], "blue")[0] == pytest.approx((2 - 32) / 32)


def test_the_target_is_the_largest_blob_within_one_action_of_where_it_was():
    frames = np.full((2, 64, 64, 3), 128, np.uint8)
    frames[:, 20:30, 40:50] = PALETTE["red"]  # the object: centroid 13/32 right of center
    frames[:, 5:7, 4:6] = PALETTE["red"]  # stray pixels of its color far away
    assert target_offset(frames, "red") == pytest.approx([13 / 32] * 2)  # the centroid of all would be off
    frames[1, 40:60, 2:22] = PALETTE["red"]  # a larger red blob at the left edge (a decoy painted red)
    assert target_offset(frames[1:], "red")[0] == pytest.approx((12 - 32) / 32)  # anywhere: the largest
    # near where the target was one action before, the decoy 1.03 half-widths away is out of reach
    assert target_offset(frames, "red", near=0.3) == pytest.approx([13 / 32] * 2)
    assert target_offset(frames, "red", near=np.array([np.nan, -0.5]))[1] == pytest.approx(-20 / 32)
    assert np.isnan(target_offset(frames[:1], "red", near=1.1)[0])  # nothing red within reach


def test_inside_the_centered_window_every_position_costs_nothing():
    planner = Planner(shift_model(), "red", PlannerConfig(tolerance=0.15))
    costs = planner._cost(np.array([0.0, -0.1, 0.13, 0.5, np.nan]))
    assert costs[:3].tolist() == [0.0, 0.0, 0.0]
    assert costs[3] == pytest.approx(0.5 - 0.9 * 0.15) and costs[4] == UNSEEN


def test_the_planner_centers_with_a_model_that_knows_the_physics():
    arm = SimArm(SIM)
    starts = benchmark_starts(arm, 6)
    results = []
    for seed, target in starts:
        observation = arm.reset(seed)
        policy = WorldModelPolicy(shift_model(), PlannerConfig(horizon=2))
        results.append(run_episode(arm, policy, target, observation, SETTINGS))
    assert all(r.success for r in results), [(r.target, r.final_offset) for r in results]
    assert max(r.steps_to_center for r in results) <= 5  # starts are at most 0.9 half-widths: <= 4 pans
    assert all(abs(r.final_offset) <= SETTINGS.tolerance for r in results)


def test_horizon_three_plans_27_sequences_and_prefers_holding_when_centered():
    arm = SimArm(SIM)
    seed, target = benchmark_starts(arm, 1)[0]
    planner = Planner(shift_model(), target, PlannerConfig(horizon=3))
    planner.observe(arm.reset(seed))
    plan = planner.plan()
    assert plan.sequences.shape == (27, 3) and plan.scores.shape == (27,)
    toward = PAN_MINUS if plan.offset_now > 0 else PAN_PLUS
    assert plan.action == toward


def test_oracle_and_random_baselines():
    arm = SimArm(SIM)
    starts = benchmark_starts(arm, 8)
    oracle = [run_episode(arm, OraclePolicy(arm, 0.15), t, arm.reset(s), SETTINGS) for s, t in starts]
    assert all(r.success for r in oracle)
    random = [run_episode(arm, RandomPolicy(0), t, arm.reset(s), SETTINGS) for s, t in starts]
    assert sum(r.success for r in random) < len(starts)


@pytest.fixture(scope="module")
def tiny_run(small_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint that really trained (for seconds): what the CLIs load; its skill is not the point."""
    tmp = tmp_path_factory.mktemp("tiny")
    result = run_train(write_config(tmp / "tiny.toml", small_cache), tmp / "run", budget="2s")
    assert result.returncode == 0, result.stderr
    return tmp / "run"


def test_robot_center_in_sim_writes_its_report(tiny_run: Path, tmp_path: Path):
    result = run_module(
        "robot.center_cli",
        "--checkpoint",
        tiny_run,
        "--sim",
        "--seed",
        1,
        "--max-steps",
        3,
        "--out",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    reports = list(tmp_path.glob("center-*.md"))
    assert len(reports) == 1
    text = reports[0].read_text()
    verdict = re.search(
        r"\*\*(did not center|centered)\*\* the (\w+) object .*final offset ([-+][\d.]+) half-widths", text
    )
    assert verdict and verdict.group(2) in PALETTE and abs(float(verdict.group(3))) < 2.0, text
    actions = re.search(r"\| steps \| (\d+) actions: ", text)
    assert actions and 1 <= int(actions.group(1)) <= 3, text  # --max-steps 3
    sizes = {}
    for png in ("-frames.png", "-offset.png"):
        name = reports[0].with_suffix("").name + png
        assert f"]({name})" in text
        image = cv2.imread(str(reports[0].with_name(name)))
        assert image is not None and image.std() > 0, name  # a real picture, not an empty file
        sizes[png] = image.shape
    assert sizes["-frames.png"][1] > sizes["-frames.png"][0]  # a strip of frames, left to right


def test_robot_center_dry_run_on_the_emulator_sends_no_goal(
    tiny_run: Path, sim_dataset: Path, tmp_path: Path
):
    calibration = tmp_path / "so101.json"
    save_calibration(CALIBRATION, calibration)
    videos = sim_dataset / "videos"
    wrist = next(
        (videos / "observation.images.wrist").rglob("*.mp4")
    )  # a recorded video stands in for a camera
    base = next((videos / "observation.images.base").rglob("*.mp4"))
    with calibrated_emulator() as emulator:
        goals = [emulator.read_register(i, "goal_position") for i in range(1, 7)]
        result = run_module(
            "robot.center_cli",
            "--checkpoint",
            tiny_run,
            "--port",
            emulator.port,
            "--camera",
            wrist,
            "--base-camera",
            base,
            "--calibration",
            calibration,
            "--target",
            "red",
            "--max-steps",
            3,
            "--dry-run",
            "--out",
            tmp_path,
        )
        received = emulator.received()
        after = [emulator.read_register(i, "goal_position") for i in range(1, 7)]
    assert result.returncode == 0, result.stderr
    assert received, "the arm never talked to the bus"
    assert not [p for p in received if p.instruction in WRITES]
    assert after == goals
    assert list(tmp_path.glob("center-*.md"))


def test_robot_record_on_the_emulator_writes_a_lerobot_dataset(sim_dataset: Path, tmp_path: Path):
    calibration = tmp_path / "so101.json"
    save_calibration(CALIBRATION, calibration)
    wrist = next((sim_dataset / "videos/observation.images.wrist").rglob("*.mp4"))
    with calibrated_emulator() as emulator:
        result = run_module(
            "robot.record_cli",
            "--port",
            emulator.port,
            "--calibration",
            calibration,
            "--camera",
            wrist,
            "--episodes",
            2,
            "--actions-per-episode",
            3,
            "--fps",
            10,
            "--action-duration",
            0.2,
            "--out",
            tmp_path / "real",
        )
        goal_writes = [p for p in emulator.received() if p.instruction in WRITES]
    assert result.returncode == 0, result.stderr
    assert goal_writes  # not a dry run: the pan goal was commanded
    reader = LeRobotReader(tmp_path / "real")
    assert reader.episode_indices == [0, 1]
    episode = reader.read_episode(0)
    assert episode.frames["wrist"].shape == (3 * 2, 64, 64, 3)
    assert set(np.unique(episode.discrete_action)) <= {0, 1, 2}
    info = json.loads((tmp_path / "real/meta/info.json").read_text())
    assert info["fps"] == 10


def test_robot_center_errors_are_one_line(tiny_run: Path, tmp_path: Path):
    result = run_module("robot.center_cli", "--checkpoint", "nope", "--sim", "--root", tmp_path)
    assert result.returncode == 1 and "no promoted checkpoint 'nope'" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = run_module("robot.center_cli", "--checkpoint", tiny_run, "--target", "magenta", "--sim")
    assert result.returncode == 1 and "unknown target 'magenta'" in result.stderr
    result = run_module("robot.center_cli", "--checkpoint", tiny_run)
    assert result.returncode == 1 and "--sim, or --port" in result.stderr


def test_the_planner_centers_in_sim_with_a_tiny_trained_checkpoint():
    """tests/fixtures/tiny-dit: a 216k-parameter DiT trained 4 minutes on the sim (see tiny-dit.toml)."""
    promoted = load_checkpoint(ROOT / "tests/fixtures/tiny-dit")
    arm = SimArm(SIM)
    results = []
    for seed, target in benchmark_starts(arm, 8):
        policy = WorldModelPolicy(promoted, PlannerConfig(horizon=2))
        results.append(run_episode(arm, policy, target, arm.reset(seed), SETTINGS))
    assert sum(r.success for r in results) >= 7, [(r.target, round(r.final_offset, 2)) for r in results]
    assert all(r.steps_to_center <= 6 for r in results if r.success)


# ----------------------------------------------------------------------------------------------------------
# The hard benchmark: its starts, the search, its statistics

HARD = hard_settings()
HARD.frames_per_action = SETTINGS.frames_per_action


def control_start(arm: SimArm, start: Start):
    """Reset to `start` and play its lead-in: the observation control begins from."""
    observation = arm.reset(start.seed, start.scene)
    for action in start.lead_in:
        arm.act(action)
        for _ in range(HARD.frames_per_action):
            observation = arm.observe()
    return observation


def target_of(arm: SimArm, start: Start) -> dict:
    return next(o for o in arm.object_offsets() if o["color"] == start.target)


def test_hard_starts_are_a_function_of_their_seed():
    arm = SimArm(SIM)
    first = make_start(arm, 1234)
    make_start(arm, 77)  # another start in between changes nothing
    again = make_start(arm, 1234)
    assert again == first
    assert make_starts(arm, 2, first_seed=1234)[0] == first
    frames = [arm.reset(s.seed, s.scene).frames["wrist"] for s in (first, again)]
    np.testing.assert_array_equal(*frames)
    assert make_start(arm, 1235).scene != first.scene
    kinds = [s.kind for s in make_starts(arm, 30, first_seed=1000)]
    assert set(kinds) == {"edge", "lost", "unseen"}


def test_edge_starts_show_the_target_near_the_edge():
    arm = SimArm(SIM)
    for seed in range(6):
        start = make_start(arm, seed, kind="edge")
        control_start(arm, start)
        target = target_of(arm, start)
        assert start.lead_in == () and target["visible"]
        assert 0.7 <= abs(target["offset"]) <= 0.95, target


def test_lost_starts_showed_the_target_then_turned_it_out_of_view():
    arm = SimArm(SIM)
    for seed in range(6):
        start = make_start(arm, seed, kind="lost")
        arm.reset(start.seed, start.scene)
        before = target_of(arm, start)
        assert before["visible"] and abs(before["offset"]) <= 0.9
        assert start.lead_in and len(set(start.lead_in)) == 1
        control_start(arm, start)
        after = target_of(arm, start)
        index = [o.color for o in start.scene.objects].index(start.target)
        assert arm.wrist_pixels()[index] == 0  # not one pixel of it in view
        assert 1.15 <= abs(after["offset"]) <= 2.05, after  # 1.2-2.0, give or take the pan's jitter
        # The lead-in turned away from it: the content moved past the side it now lies on.
        assert np.sign(after["offset"]) == (1 if start.lead_in[0] == PAN_PLUS else -1)


def test_unseen_starts_put_the_target_out_of_view_toward_the_middle():
    arm = SimArm(SIM)
    for seed in range(6):
        start = make_start(arm, seed, kind="unseen")
        arm.reset(start.seed, start.scene)
        target = target_of(arm, start)
        assert start.lead_in == () and arm.wrist_pixels()[0] == 0 and not target["visible"]
        assert abs(start.scene.pan_start) >= 40
        assert np.sign(target["offset"]) == np.sign(start.scene.pan_start)  # pan > 0: it lies to the right
        assert 1.2 <= abs(target["offset"]) <= 2.0


def test_hard_scenes_hold_a_similar_hue_decoy_hidden_under_the_arm_and_other_distractors():
    arm = SimArm(SIM)
    for start in make_starts(arm, 8, first_seed=50):
        colors = [o.color for o in start.scene.objects]
        assert colors[0] == start.target and start.target in ("red", "blue", "purple")
        assert colors[1] == start.decoy == SIMILAR_HUE[start.target]
        assert len(colors) == 4 == len(set(colors)) and set(colors[2:]) == set(start.distractors)
        distance = abs(TARGET_HUES[start.target] - TARGET_HUES[start.decoy])
        assert HUE_TOLERANCE < min(distance, 180 - distance) <= 30  # similar, yet beyond the tolerance
        control_start(arm, start)
        decoy = next(o for o in arm.object_offsets() if o["color"] == start.decoy)
        assert decoy["visible"] and abs(decoy["offset"]) <= 0.3
        assert arm.base_occlusion(pan=float(arm.commanded[0]))[1] >= 0.5
    bare = make_start(arm, 50, HardSettings(distractors=0, decoy=False))
    assert [o.color for o in bare.scene.objects] == [bare.target] and bare.decoy is None


def test_decoys_and_backgrounds_do_not_fool_the_target_detector():
    """At every control start: out of view reads as out of view (the decoy stands in view), in view where
    the simulator says."""
    arm = SimArm(SIM)
    for start in make_starts(arm, 24, first_seed=300):
        observation = control_start(arm, start)
        perceived, truth = perceived_offset(observation, start.target), target_of(arm, start)
        if start.kind == "edge":
            assert perceived == pytest.approx(truth["offset"], abs=0.15), start.seed
        else:
            assert np.isnan(perceived), (start.seed, start.kind, perceived)


def test_on_hard_starts_the_oracle_centers_and_a_random_walk_does_not():
    arm = SimArm(SIM)
    starts = make_starts(arm, 12, first_seed=500)
    oracle = [run_start(arm, OraclePolicy(arm, HARD.tolerance), s, HARD) for s in starts]
    assert all(r.success for r in oracle)
    random = [run_start(arm, RandomPolicy(0), s, HARD) for s in starts]
    assert sum(r.success for r in random) <= 2


def test_search_turns_toward_the_last_seen_side_else_sweeps_toward_the_middle():
    nan = float("nan")
    search = Search()
    search.observe(nan, 30.0)
    assert search.action() == PAN_MINUS  # never seen, turned left (pan > 0): the middle is to the right
    search = Search()
    search.observe(nan, -30.0)
    assert search.action() == PAN_PLUS
    search.observe(0.9, -25.2, PAN_PLUS)  # seen on the right ...
    search.observe(nan, -20.4, PAN_PLUS)  # ... and gone
    assert search.action() == PAN_MINUS
    search.observe(-0.95, -25.2, PAN_MINUS)  # overshot: now last seen on the left
    search.observe(nan, -30.0, PAN_MINUS)
    assert search.action() == PAN_PLUS


def test_search_turns_around_at_a_pan_limit():
    nan = float("nan")
    search = Search()
    search.observe(-0.9, -58.8)  # seen on the left: turn left (pan+) ...
    search.observe(nan, -63.6, PAN_MINUS)
    assert search.action() == PAN_PLUS
    search.observe(nan, 63.6, PAN_PLUS)
    search.observe(nan, 63.55, PAN_PLUS)  # ... a pan+ that did not move the pan: the limit
    assert search.action() == PAN_MINUS and search.last_seen is None
    search.observe(nan, 58.8, PAN_MINUS)
    assert search.action() == PAN_MINUS  # the sweep goes on


class CountingModel(torch.nn.Module):
    """Wraps a model and counts its `predict` calls: a search step must not call the model."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def predict(self, context: Tensor, actions: Tensor, seed: int | None = None) -> Tensor:
        self.calls += 1
        return self.inner.predict(context, actions, seed)


def counting_shift_model() -> tuple[PromotedModel, CountingModel]:
    promoted = shift_model()
    counter = CountingModel(promoted.model)
    promoted.model = counter
    return promoted, counter


@pytest.mark.parametrize("kind", ["lost", "unseen"])
def test_out_of_view_the_world_model_policy_searches_then_plans(kind: str):
    arm = SimArm(SIM)
    for seed in range(3):
        start = make_start(arm, seed, kind=kind)
        promoted, counter = counting_shift_model()
        result = run_start(arm, WorldModelPolicy(promoted, PlannerConfig(horizon=2)), start, HARD)
        first = result.log[0]
        assert abs(first.offset) > 1 and first.plan_ms is None  # out of view: a search step, no model call
        if kind == "lost":  # back toward where it was seen: against the lead-in
            assert first.action == (PAN_MINUS if start.lead_in[0] == PAN_PLUS else PAN_PLUS)
        else:  # a sweep toward the middle of the range
            assert first.action == (PAN_MINUS if start.scene.pan_start > 0 else PAN_PLUS)
        searched = [s for s in result.log if s.action is not None and s.plan_ms is None]
        planned = [s for s in result.log if s.plan_ms is not None]
        assert searched and planned and counter.calls == 2 * len(planned)  # horizon 2: 2 calls per plan
        assert all(abs(s.offset) > 0.9 for s in searched)
        assert result.success, [(round(s.offset, 2), s.action) for s in result.log]


class BlankModel(ShiftModel):
    """Predicts an empty gray frame whatever the action: the target never shows in a prediction."""

    def predict(self, context: Tensor, actions: Tensor, seed: int | None = None) -> Tensor:
        last = context[..., self.layout.step_columns(self.history - 1)]
        return torch.zeros_like(last)[:, None].expand(-1, actions.shape[1], -1, -1, -1).clone()


def test_a_blind_plan_turns_toward_the_target_instead_of_staying_forever():
    arm = SimArm(SIM)
    start = make_start(arm, 4, kind="edge")
    canvas = CanvasConfig()
    blank = PromotedModel(
        BlankModel(canvas), SimpleNamespace(canvas=canvas), {}, Path("."), to_tensor, to_uint8
    )
    settings = CenterSettings(max_steps=2, tolerance=0.15, hold=3, frames_per_action=HARD.frames_per_action)
    result = run_start(arm, WorldModelPolicy(blank, PlannerConfig(horizon=2)), start, settings)
    toward = PAN_MINUS if result.log[0].offset > 0 else PAN_PLUS
    assert [s.action for s in result.log] == [toward, toward]
    assert all(s.blind and s.plan_ms is not None for s in result.log)


def done(steps: int | None) -> EpisodeResult:
    """A stand-in episode result: solved in `steps`, or failed when None."""
    return EpisodeResult("red", steps is not None, steps, 0.0)


def test_wilson_interval_against_hand_computed_values():
    # 8 of 10, z = 1.96: center (0.8 + 1.96^2/20) / (1 + 1.96^2/10) = 0.71674,
    # half 1.96 / 1.38416 * sqrt(0.8 * 0.2 / 10 + 1.96^2 / 400) = 0.22658 -> 0.4902 .. 0.9433
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)  # 3.8416 / 13.8416
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    # 190 of 200: center (0.95 + 0.009604) / 1.019208 = 0.941520,
    # half 1.96 / 1.019208 * sqrt(0.0002375 + 0.0000240) = 0.031099 -> 0.9104 .. 0.9726
    assert wilson_interval(190, 200) == pytest.approx((0.9104, 0.9726), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_relative_steps_planning_gap_and_summary():
    oracle = [done(2), done(4), done(3), done(None), done(5)]
    policy = [done(4), done(None), done(3), done(6), done(10)]
    assert relative_steps(policy, oracle) == [2.0, 1.0, 2.0]  # episodes 0, 2, 4: solved by both
    assert planning_gap(0.8, 0.6) == pytest.approx(0.2)
    stats = summarize("planner", policy, oracle, ["edge", "lost", "edge", "unseen", "lost"])
    assert (stats.successes, stats.episodes) == (4, 5)
    assert stats.interval == pytest.approx(wilson_interval(4, 5))
    assert stats.median_steps == 5.0  # of 4, 3, 6, 10
    assert stats.steps_vs_oracle == 2.0 and stats.paired == 3
    assert stats.planning_gap == pytest.approx(0.8 - 0.8)
    assert stats.by_kind == {"edge": (2, 2), "lost": (1, 2), "unseen": (1, 1)}
    assert summarize("oracle", oracle).planning_gap is None
    worse = summarize("random", [done(None)] * 4 + [done(9)], oracle)
    assert worse.planning_gap == pytest.approx(0.8 - 0.2) and worse.steps_vs_oracle == 9 / 5
    with pytest.raises(ValueError, match="paired"):
        relative_steps(policy[:3], oracle)


def test_the_hard_benchmark_runs_every_policy_on_the_same_starts():
    stats = run_benchmark([("shift", shift_model())], 5, horizons=(2,), seed=700)
    assert [s.name for s in stats] == ["random", "oracle", "world model shift H2"]
    random, oracle, planner = stats
    assert oracle.successes == 5 and oracle.planning_gap is None
    assert planner.successes >= 4 and planner.horizon == 2
    assert planner.planning_gap == pytest.approx(oracle.success - planner.success)
    assert planner.steps_vs_oracle is not None and planner.steps_vs_oracle <= 1.5
    assert planner.plan_ms_median is not None and random.plan_ms_median is None
    assert sum(total for _, total in planner.by_kind.values()) == 5
    rows = {row.name: row for s in stats for row in rows_of(s)}
    assert "95% CI" in rows["oracle: success"].note and rows["oracle: success"].value == 100
    assert rows["world model shift H2: planning time (median)"].target == "<= 150"


def test_the_benchmark_takes_several_labelled_checkpoints():
    assert checkpoint_arg("runs/bench/dit-10m") == ("dit-10m", "runs/bench/dit-10m")
    assert checkpoint_arg("30m=runs/bench/dit-30m") == ("30m", "runs/bench/dit-30m")
