"""Recording a real arm in real time: frames paced to --fps, actions held for their duration, late frames
reported once per episode. A fake clock and arm stand in for time and the SO-101."""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow.parquet as pq
import pytest

from models.lerobot import MEASURED_TIME_KEY, LeRobotReader, LeRobotWriter
from models.vocab import JOINT_NAMES
from robot.record import FramePacer, WallClock, record_actions
from robot.sim import Observation, SimArm, SimConfig

FPS = 10
FRAMES_PER_ACTION = 2
ACTIONS = 3
FRAMES = ACTIONS * FRAMES_PER_ACTION


class FakeClock:
    """Time that moves only when slept or spent: `sleep` can oversleep, as a coarse OS timer does."""

    def __init__(self, oversleep_s: float = 0.0) -> None:
        self.t = 100.0  # not 0: the episode's times must be relative to its start
        self.oversleep_s = oversleep_s
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if seconds > 0:
            self.t += seconds + self.oversleep_s

    def spend(self, seconds: float) -> None:
        self.t += seconds


class FakeArm:
    """An arm whose observe() takes `observe_s` of the fake clock (a camera read) and notes when it ran."""

    def __init__(self, clock: FakeClock, observe_s: float = 0.0) -> None:
        self.clock = clock
        self.observe_s = observe_s
        self.goal = np.zeros(len(JOINT_NAMES), np.float32)
        self.acted_at: list[float] = []
        self.observed_at: list[float] = []

    @property
    def commanded(self) -> np.ndarray:
        return self.goal.copy()

    def act(self, action: int) -> None:
        self.acted_at.append(self.clock.now())

    def observe(self) -> Observation:
        self.observed_at.append(self.clock.now())
        self.clock.spend(self.observe_s)
        frame = np.full((4, 4, 3), len(self.observed_at), np.uint8)
        return Observation(frames={"wrist": frame}, state=self.goal.copy(), time=self.clock.now())


def record(clock: FakeClock, arm: FakeArm, fps: float = FPS):
    pacer = FramePacer(fps, clock)
    episode = record_actions(
        arm, pacer.start(arm), ACTIONS, np.random.default_rng(0), FRAMES_PER_ACTION, fps, 63.6, pacer=pacer
    )
    return episode, pacer


def test_frames_are_taken_one_period_apart_and_their_times_recorded():
    clock = FakeClock()
    arm = FakeArm(clock, observe_s=0.03)  # a camera read well inside the 100 ms frame
    episode, _ = record(clock, arm)
    slots = np.arange(FRAMES + 1) / FPS  # the last observation holds the last action, and is not stored
    np.testing.assert_allclose(np.array(arm.observed_at) - 100.0, slots, atol=1e-9)
    np.testing.assert_allclose(episode.frame_times, slots[:FRAMES], atol=1e-9)
    assert episode.meta["late_frames"] == 0
    assert episode.length == FRAMES
    # frame t is the t-th observation, taken at its slot
    np.testing.assert_array_equal(episode.frames["wrist"][:, 0, 0, 0], np.arange(1, FRAMES + 1))


def test_each_action_is_held_for_its_duration():
    clock = FakeClock()
    arm = FakeArm(clock, observe_s=0.03)
    record(clock, arm)
    held = np.diff([*arm.acted_at, arm.observed_at[-1] + arm.observe_s])
    np.testing.assert_allclose(held, FRAMES_PER_ACTION / FPS, atol=1e-9)
    assert len(arm.acted_at) == ACTIONS


def test_an_unpaced_loop_would_not_hold_actions():
    """The bug: with instant (file) cameras and no pacer, a 0.2 s action took no time at all."""
    clock = FakeClock()
    arm = FakeArm(clock, observe_s=0.001)
    record_actions(arm, arm.observe(), ACTIONS, np.random.default_rng(0), FRAMES_PER_ACTION, FPS, 63.6)
    assert arm.acted_at[-1] - arm.acted_at[0] < 0.01


def test_measured_times_show_a_late_clock(caplog: pytest.LogCaptureFixture):
    """Sleeps that overshoot by 20 ms: every frame after the first is 20 ms late, but it does not add up."""
    clock = FakeClock(oversleep_s=0.02)
    arm = FakeArm(clock, observe_s=0.03)
    with caplog.at_level(logging.WARNING, logger="robot.record"):
        episode, _ = record(clock, arm)
    expected = np.arange(FRAMES) / FPS + np.r_[0.0, np.full(FRAMES - 1, 0.02)]
    np.testing.assert_allclose(episode.frame_times, expected, atol=1e-9)
    assert episode.meta["late_frames"] == 0  # within half a frame (50 ms)
    assert not caplog.records


def test_a_loop_that_cannot_keep_up_warns_once_with_count_and_worst(caplog: pytest.LogCaptureFixture):
    """A 250 ms camera read at 10 fps: frame t is asked for at 0.25 t, late by 0.15 t."""
    clock = FakeClock()
    arm = FakeArm(clock, observe_s=0.25)
    with caplog.at_level(logging.WARNING, logger="robot.record"):
        episode, pacer = record(clock, arm)
    np.testing.assert_allclose(episode.frame_times, 0.25 * np.arange(FRAMES), atol=1e-9)
    np.testing.assert_allclose(pacer.lateness(FRAMES), 0.15 * np.arange(FRAMES), atol=1e-9)
    assert episode.meta["late_frames"] == FRAMES - 1
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    message = caplog.records[0].getMessage()
    assert "\n" not in message
    assert f"{FRAMES - 1} of {FRAMES} frames were late by more than 50 ms (worst 750 ms)" in message
    assert "10 fps" in message
    assert all(s <= 0 for s in clock.sleeps[1:])  # never waits once behind


def test_a_slow_sleep_beyond_the_tolerance_is_reported(caplog: pytest.LogCaptureFixture):
    clock = FakeClock(oversleep_s=0.08)
    arm = FakeArm(clock, observe_s=0.01)
    with caplog.at_level(logging.WARNING, logger="robot.record"):
        episode, _ = record(clock, arm)
    assert episode.meta["late_frames"] == FRAMES - 1
    assert "(worst 80 ms)" in caplog.records[0].getMessage()


def test_a_pacer_restarts_its_clock_for_each_episode():
    clock = FakeClock()
    arm = FakeArm(clock, observe_s=0.03)
    record(clock, arm)
    clock.spend(5.0)  # a pause between episodes
    episode, _ = record(clock, arm)
    np.testing.assert_allclose(episode.frame_times, np.arange(FRAMES) / FPS, atol=1e-9)


def test_the_pacer_and_the_episode_must_agree_on_fps():
    clock = FakeClock()
    arm = FakeArm(clock)
    pacer = FramePacer(30, clock)
    with pytest.raises(ValueError, match="30 fps"):
        record_actions(arm, pacer.start(arm), 1, np.random.default_rng(0), 1, FPS, 63.6, pacer=pacer)


def test_simulated_recordings_carry_no_frame_times():
    """Sim time is exact (observe() advances 1/fps): sim episodes are recorded unpaced, as before."""
    arm = SimArm(SimConfig(), seed=3)
    episode = record_actions(arm, arm.reset(3), 2, np.random.default_rng(3), 15, 30, 63.6)
    assert set(episode.meta) == {"actions"} and episode.frame_times is None


def test_measured_frame_times_are_a_dataset_column(tmp_path):
    """The dataset keeps what the clock said beside LeRobot's k / fps timestamps, and still reads back."""
    clock = FakeClock()
    arm = FakeArm(clock, observe_s=0.03)
    episode, _ = record(clock, arm)
    with LeRobotWriter(tmp_path / "ds", FPS, {"wrist": (4, 4)}, measured_time_column=True) as writer:
        writer.add_episode(episode)
    table = pq.read_table(next((tmp_path / "ds/data").rglob("*.parquet")))
    np.testing.assert_allclose(table[MEASURED_TIME_KEY].to_numpy(), np.arange(FRAMES) / FPS, atol=1e-6)
    np.testing.assert_allclose(table["timestamp"].to_numpy(), np.arange(FRAMES) / FPS, atol=1e-6)
    info = json.loads((tmp_path / "ds/meta/info.json").read_text())
    assert info["features"][MEASURED_TIME_KEY] == {"dtype": "float32", "shape": [1], "names": None}
    np.testing.assert_array_equal(LeRobotReader(tmp_path / "ds").read_tabular(0).state, episode.state)
    with (
        pytest.raises(ValueError, match="frame_times"),
        LeRobotWriter(tmp_path / "ds2", FPS, {"wrist": (4, 4)}, measured_time_column=True) as writer,
    ):
        writer.add_episode(record_actions(arm, arm.observe(), 1, np.random.default_rng(0), 1, FPS, 63.6))


def test_the_wall_clock_sleeps_precisely():
    clock = WallClock()
    start = clock.now()
    clock.sleep(0.02)
    elapsed = clock.now() - start
    assert 0.02 <= elapsed < 1.0, elapsed  # never early; how late depends on the machine's load
    start = clock.now()
    clock.sleep(-1.0)
    assert clock.now() - start < 0.5
