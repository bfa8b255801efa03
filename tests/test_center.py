"""Closing the loop: the planner, centering episodes and their policies, `robot-center`, `robot-record`."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import Tensor

from models.canvas import CanvasConfig
from models.lerobot import LeRobotReader
from models.promoted import PromotedModel, load_checkpoint
from models.vocab import PAN_MINUS, PAN_PLUS
from models.world_model import to_tensor, to_uint8
from robot.center import (
    CenterSettings,
    OraclePolicy,
    RandomPolicy,
    WorldModelPolicy,
    benchmark_starts,
    run_episode,
)
from robot.planner import Planner, PlannerConfig, target_offset
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
    for png in ("-frames.png", "-offset.png"):
        assert reports[0].with_suffix("").name + png in text
        assert reports[0].with_name(reports[0].with_suffix("").name + png).exists()


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
