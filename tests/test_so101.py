"""The SO-101 arm against emulated servos: LeRobot calibration and normalization, clamping, torque safety."""

from __future__ import annotations

import json
import logging
import re
import signal
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from models.errors import ConfigError
from models.vocab import JOINT_NAMES, PAN_MINUS, PAN_PLUS, STAY
from robot.emulator import ServoEmulator
from robot.feetech import CONTROL_TABLE, FeetechBus, FeetechError, Instruction
from robot.so101 import (
    JOINT_IDS,
    CalibrationError,
    JointCalibration,
    NormMode,
    SO101Arm,
    _sigint_deferred,
    load_calibration,
    normalize,
    save_calibration,
    unnormalize,
)
from tests.servos import CALIBRATION, HEALTHY_TIMEOUT, MIDDLE, WRITES, calibrated_emulator


@pytest.fixture
def emulator() -> Iterator[ServoEmulator]:
    with calibrated_emulator() as emu:
        yield emu


def open_arm(emulator: ServoEmulator, **kwargs) -> SO101Arm:
    return SO101Arm(emulator.port, CALIBRATION, **({"timeout": 0.5} | kwargs))


def register_values(emulator: ServoEmulator, name: str, ids: range = range(1, 7)) -> list[int]:
    return [emulator.read_register(i, name) for i in ids]


def goals_after(arm: SO101Arm, emulator: ServoEmulator) -> list[int]:
    """Goal registers once the arm's goals arrived: a goal is a sync write, which gets no reply, so a read's
    reply is what proves the emulator handled everything sent before it."""
    arm.read_positions()
    return register_values(emulator, "goal_position")


def resting() -> list[int]:
    """Goal registers of joints told to stay where they rest: their own position, to the tick."""
    return [MIDDLE[i] for i in range(1, 7)]


# ----------------------------------------------------------------------------------------------------------
# Calibration and normalization (no bus)


def test_joint_ids_follow_the_vocabulary():
    assert list(JOINT_IDS) == list(JOINT_NAMES) == list(CALIBRATION)
    assert list(JOINT_IDS.values()) == [1, 2, 3, 4, 5, 6]


def test_range_normalization_matches_lerobot():
    cal = JointCalibration(id=1, drive_mode=0, homing_offset=0, range_min=1000, range_max=3000)
    m100 = NormMode.RANGE_M100_100
    assert [normalize(raw, cal, m100) for raw in (1000, 1500, 2000, 3000)] == [-100.0, -50.0, 0.0, 100.0]
    assert normalize(500, cal, m100) == -100.0 and normalize(3500, cal, m100) == 100.0  # clamped
    assert [unnormalize(v, cal, m100) for v in (-100, 0, 50, 100, 250)] == [1000, 2000, 2500, 3000, 3000]
    assert unnormalize(0.09, cal, m100) == 2000  # truncated like LeRobot's int(), not rounded

    inverted = JointCalibration(id=1, drive_mode=1, homing_offset=0, range_min=1000, range_max=3000)
    assert normalize(1500, inverted, m100) == 50.0
    assert unnormalize(50.0, inverted, m100) == 1500

    assert normalize(1500, cal, NormMode.RANGE_0_100) == 25.0
    assert normalize(1500, inverted, NormMode.RANGE_0_100) == 75.0
    assert unnormalize(75.0, inverted, NormMode.RANGE_0_100) == 1500
    assert unnormalize(-5.0, cal, NormMode.RANGE_0_100) == 1000


def test_degree_normalization_matches_lerobot():
    cal = JointCalibration(id=1, drive_mode=0, homing_offset=0, range_min=1000, range_max=3000)
    assert normalize(2000, cal, NormMode.DEGREES) == 0.0
    assert normalize(3000, cal, NormMode.DEGREES) == pytest.approx(1000 * 360 / 4095)
    assert unnormalize(0.0, cal, NormMode.DEGREES) == 2000
    assert unnormalize(90.0, cal, NormMode.DEGREES) == int(90 * 4095 / 360 + 2000)


def test_calibration_json_round_trip_in_lerobots_layout(tmp_path: Path):
    path = tmp_path / "follower.json"
    save_calibration(CALIBRATION, path)
    data = json.loads(path.read_text())
    assert list(data) == list(JOINT_NAMES)
    assert list(data["gripper"]) == ["id", "drive_mode", "homing_offset", "range_min", "range_max"]
    assert data["elbow_flex"] == {
        "id": 3,
        "drive_mode": 1,
        "homing_offset": 0,
        "range_min": 900,
        "range_max": 3100,
    }
    assert load_calibration(path) == CALIBRATION


def test_a_file_as_lerobot_writes_it_loads(tmp_path: Path):
    text = json.dumps({n: asdict(c) for n, c in CALIBRATION.items()}, indent=4)  # as draccus.dump writes
    (tmp_path / "so101.json").write_text(text)
    assert load_calibration(tmp_path / "so101.json")["wrist_roll"].homing_offset == -2047


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("gripper"), r"missing \['gripper'\]"),
        (lambda d: d["wrist_flex"].update(id=9), r"joint wrist_flex: id 9, expected 4"),
        (lambda d: d["shoulder_pan"].update(range_min=3000), r"joint shoulder_pan: range 3000..3000"),
        (lambda d: d["gripper"].update(drive_mode=2), r"joint gripper: drive_mode 2"),
        (lambda d: d["gripper"].pop("homing_offset"), r"joint 'gripper' must have exactly"),
        (lambda d: d["gripper"].update(range_max="4095"), r"joint 'gripper' values must be integers"),
    ],
)
def test_bad_calibration_files_name_the_file_and_joint(tmp_path: Path, change, message):
    data = {name: asdict(cal) for name, cal in CALIBRATION.items()}
    change(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match=message) as info:
        load_calibration(path)
    assert str(path) in str(info.value) and isinstance(info.value, ConfigError)


# ----------------------------------------------------------------------------------------------------------
# The arm on the bus


def test_connecting_holds_the_pose_with_torque_on(emulator: ServoEmulator):
    with open_arm(emulator) as arm:
        assert register_values(emulator, "torque_enable") == [1] * 6
        assert register_values(emulator, "goal_position") == resting()
        np.testing.assert_allclose(arm.commanded, arm.read_positions())
        np.testing.assert_allclose(arm.commanded, [0, 0, 0, 0, 0, 50], atol=0.05)


class StillCamera:
    """Stands in for a camera (hardware we do not emulate): the same frame every read."""

    def __init__(self):
        self.frame = np.full((4, 6, 3), 7, np.uint8)

    def read(self) -> np.ndarray:
        return self.frame


def test_observe_returns_normalized_positions_and_frames(emulator: ServoEmulator):
    emulator.write_register(1, "present_position", 1500)  # pan: a quarter into 1000..3000
    emulator.write_register(3, "present_position", 1450)  # elbow, inverted: a quarter into 900..3100
    emulator.write_register(6, "present_position", 2600)  # gripper fully open
    with open_arm(emulator, cameras={"wrist": StillCamera()}) as arm:
        obs = arm.observe()
    assert obs.state.dtype == np.float32 and obs.state.shape == (6,)
    np.testing.assert_allclose(obs.state[[0, 2, 5]], [-50.0, 50.0, 100.0], atol=1e-4)
    assert obs.frames["wrist"].shape == (4, 6, 3) and obs.time >= 0


def test_goals_are_clamped_to_the_calibrated_range(emulator: ServoEmulator):
    with open_arm(emulator, max_step=1000.0) as arm:
        sent = arm.move_to([150.0, -130.0, 0.0, 0.0, 0.0, -20.0])
        np.testing.assert_allclose(sent, [100.0, -100.0, 0.0, 0.0, 0.0, 0.0], atol=0.05)
        np.testing.assert_allclose(arm.commanded, sent)
        goals = goals_after(arm, emulator)
        assert (goals[0], goals[1], goals[5]) == (3000, 800, 2000)


def test_steps_are_clamped_to_max_step_from_the_present_position(emulator: ServoEmulator):
    with open_arm(emulator, max_step=10.0) as arm:
        sent = arm.move_to([50.0, -40.0, 30.0, 0.0, 0.0, 50.0])
        np.testing.assert_allclose(sent, [10.0, -10.0, 10.0, 0.0, 0.0, 50.0], atol=0.05)
        # shoulder_lift: 90/200 of 800..3200; elbow_flex is inverted, so +10 lowers its raw position.
        assert goals_after(arm, emulator)[:3] == [2100, 1880, 1890]
        sent = arm.move_to([50.0, -40.0, 30.0, 0.0, 0.0, 50.0])  # the servos moved: the next 10 units
        np.testing.assert_allclose(sent[:3], [20.0, -20.0, 20.0], atol=0.05)
        assert goals_after(arm, emulator)[:3] == [2200, 1760, 1780]


def test_pan_actions_move_the_pan_goal(emulator: ServoEmulator):
    with open_arm(emulator, pan_step=5.0, pan_limit=8.0) as arm:
        arm.act(PAN_PLUS)
        assert goals_after(arm, emulator)[0] == 2050
        arm.act(PAN_PLUS)  # 10 -> the pan limit 8
        assert arm.commanded[0] == pytest.approx(8.0)
        assert goals_after(arm, emulator)[0] == 2080
        arm.act(STAY)
        assert goals_after(arm, emulator)[0] == 2080
        arm.act(PAN_MINUS)
        goals = goals_after(arm, emulator)
        assert goals[0] == 2030
        assert goals[1:] == resting()[1:]
        with pytest.raises(ValueError, match="unknown action"):
            arm.act(7)


def test_an_exception_in_the_context_turns_torque_off(emulator: ServoEmulator):
    with pytest.raises(RuntimeError, match="planner bug"), open_arm(emulator) as arm:
        arm.act(PAN_PLUS)
        raise RuntimeError("planner bug")
    assert register_values(emulator, "torque_enable") == [0] * 6


def test_keyboard_interrupt_in_the_context_turns_torque_off(emulator: ServoEmulator):
    with pytest.raises(KeyboardInterrupt), open_arm(emulator) as arm:
        arm.act(PAN_PLUS)
        raise KeyboardInterrupt
    assert register_values(emulator, "torque_enable") == [0] * 6


@pytest.fixture
def default_sigint() -> Iterator[None]:
    """Python's own SIGINT handler for the test (a runner may have installed another), then back."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_real_sigint_in_the_context_turns_torque_off(emulator: ServoEmulator, default_sigint: None):
    with pytest.raises(KeyboardInterrupt), open_arm(emulator) as arm:
        arm.act(PAN_PLUS)
        signal.raise_signal(signal.SIGINT)
    assert register_values(emulator, "torque_enable") == [0] * 6


def test_a_second_ctrl_c_waits_until_shutdown_is_done(default_sigint: None):
    finished = []
    with pytest.raises(KeyboardInterrupt), _sigint_deferred():
        signal.raise_signal(signal.SIGINT)
        finished.append(True)  # still running: the interrupt was held
    assert finished == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_dry_run_reads_but_sends_no_writes(emulator: ServoEmulator, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO, logger="robot.so101"), open_arm(emulator, dry_run=True) as arm:
        arm.act(PAN_PLUS)
        arm.move_to([5.0, 5.0, 5.0, 5.0, 5.0, 55.0])
        np.testing.assert_allclose(arm.commanded, [5, 5, 5, 5, 5, 55], atol=0.05)
    # One more round trip proves the emulator has handled every packet the arm sent.
    with FeetechBus(emulator.port, timeout=0.5) as bus:
        bus.ping(1)
    assert not [p for p in emulator.received() if p.instruction in WRITES]
    assert register_values(emulator, "goal_position") == resting()
    assert register_values(emulator, "torque_enable") == [0] * 6

    commands = arm.dry_run_commands
    assert [c.register for c in commands] == [
        "torque_enable",
        "goal_position",
        "goal_position",
        "torque_enable",
    ]
    assert commands[0].values == dict.fromkeys(range(1, 7), 1)
    assert commands[1].values == MIDDLE | {1: 2048}  # pan+ by the default 4.8 units: 104.8/200 of 1000..3000
    assert commands[-1].values == dict.fromkeys(range(1, 7), 0)
    assert "dry run: would write goal_position" in caplog.text


def test_a_calibration_that_does_not_match_the_servos_is_refused(emulator: ServoEmulator):
    emulator.write_register(4, "homing_offset", 300)
    with pytest.raises(CalibrationError, match=r"wrist_flex homing_offset 300 on the servo vs 5 in the file"):
        open_arm(emulator)
    assert register_values(emulator, "torque_enable") == [0] * 6
    with FeetechBus(emulator.port, timeout=0.5) as bus:  # the arm released the port
        assert bus.ping(4) == 777


def test_write_calibration_writes_the_file_to_the_servos(emulator: ServoEmulator):
    emulator.write_register(4, "homing_offset", 300)
    emulator.write_register(2, "max_position_limit", 4095)
    with open_arm(emulator, write_calibration=True):
        assert emulator.read_register(4, "homing_offset") == 5
        assert emulator.read_register(2, "max_position_limit") == 3200
        assert register_values(emulator, "torque_enable") == [1] * 6
        assert register_values(emulator, "lock") == [1] * 6


def sync_written(params: bytes) -> dict[int, int]:
    """{servo id: value} of a SYNC_WRITE's parameters: address, size, then (id, value bytes) per servo."""
    size = params[1]
    groups = [params[k : k + 1 + size] for k in range(2, len(params), 1 + size)]
    return {g[0]: int.from_bytes(g[1:], "little") for g in groups}


def test_connecting_on_a_bad_line_never_sends_a_wrong_goal(emulator: ServoEmulator):
    """One status packet in ten damaged while the rest of each batch is still arriving: every connect either
    holds the true pose or fails naming a servo. (A reply taken from another request once made connect
    write the wrist roll's 4095 limit as its goal, then turn torque on: the arm would jump.)"""
    emulator.delay_replies(0.0005, between_s=0.001)
    emulator.damage_at_random(0.1, seed=11)
    connected, failures = 0, []
    for _ in range(10):
        try:
            with open_arm(emulator, timeout=HEALTHY_TIMEOUT, retries=4):  # 47% of 6-servo reads fail
                connected += 1
        except FeetechError as err:
            failures.append(str(err))
    goals_sent = [
        sync_written(p.params)
        for p in emulator.received()
        if p.instruction == Instruction.SYNC_WRITE and p.params[0] == CONTROL_TABLE["goal_position"].address
    ]
    assert len(goals_sent) >= connected  # a connect may fail after holding the pose (turning torque on)
    assert all(sent == MIDDLE for sent in goals_sent)
    assert not [p for p in emulator.received() if p.instruction == Instruction.WRITE and p.params[0] == 42]
    assert connected >= 6 and emulator.damaged >= 10
    assert all(re.search(r"servo [1-6]\b", failure) for failure in failures), failures


def test_a_missing_servo_is_named():
    with calibrated_emulator(ids=range(1, 6)) as emulator:
        with pytest.raises(FeetechError, match=r"gripper: servo 6: no reply to PING"):
            open_arm(emulator, timeout=0.2, retries=0)
        assert register_values(emulator, "torque_enable", range(1, 6)) == [0] * 5


def test_close_names_a_servo_whose_torque_it_could_not_turn_off(emulator: ServoEmulator):
    arm = open_arm(emulator, timeout=0.2, retries=0)
    emulator.silence(3)
    emulator.set_error_bits(5, 0x20)  # overload: it still answers, so its torque-off counts as done
    with pytest.raises(FeetechError, match=r"could not confirm torque off for elbow_flex: servo 3"):
        arm.close()
    assert register_values(emulator, "torque_enable") == [0] * 6  # the silent servo did execute it
    arm.close()  # idempotent
