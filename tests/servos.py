"""Emulated SO-101 servos holding a known LeRobot calibration, for the arm, controller and recorder tests."""

from __future__ import annotations

from robot.emulator import ServoEmulator
from robot.feetech import Instruction
from robot.so101 import JointCalibration

CALIBRATION = {
    "shoulder_pan": JointCalibration(id=1, drive_mode=0, homing_offset=-37, range_min=1000, range_max=3000),
    "shoulder_lift": JointCalibration(id=2, drive_mode=0, homing_offset=12, range_min=800, range_max=3200),
    "elbow_flex": JointCalibration(id=3, drive_mode=1, homing_offset=0, range_min=900, range_max=3100),
    "wrist_flex": JointCalibration(id=4, drive_mode=0, homing_offset=5, range_min=1000, range_max=3000),
    "wrist_roll": JointCalibration(id=5, drive_mode=0, homing_offset=-2047, range_min=0, range_max=4095),
    "gripper": JointCalibration(id=6, drive_mode=0, homing_offset=100, range_min=2000, range_max=2600),
}
MIDDLE = {cal.id: (cal.range_min + cal.range_max) // 2 for cal in CALIBRATION.values()}
"""Where each servo rests in these tests: the middle of its range (0 normalized, 50 for the gripper)."""
WRITES = (Instruction.WRITE, Instruction.SYNC_WRITE)
HEALTHY_TIMEOUT = 0.1
"""The reply timeout of tests whose servos answer (late or damaged, but they answer): the emulator is a thread
of the test process, and a busy machine can hold it for tens of ms, so 50 ms failed healthy servos there.
Not more: after every failure the bus waits a whole timeout of quiet line. Tests that wait for a timeout to
fire (a silent servo) keep a short one."""


def calibrated_emulator(ids: range = range(1, 7)) -> ServoEmulator:
    """Servos holding CALIBRATION (as LeRobot's calibration leaves them), each resting at MIDDLE."""
    emulator = ServoEmulator(ids=ids, positions={i: MIDDLE[i] for i in ids})
    for cal in CALIBRATION.values():
        if cal.id in ids:
            emulator.write_register(cal.id, "homing_offset", cal.homing_offset)
            emulator.write_register(cal.id, "min_position_limit", cal.range_min)
            emulator.write_register(cal.id, "max_position_limit", cal.range_max)
    return emulator
