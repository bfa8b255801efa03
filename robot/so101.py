"""The real SO-101 arm: six STS3215 servos on one Feetech bus, with SimArm's interface.

Positions are normalized exactly as LeRobot's `FeetechMotorsBus` does, from the same calibration file LeRobot
writes for an `so101_follower`, so recordings and calibrations carry over both ways:

* the calibration JSON maps each joint to `{"id", "drive_mode", "homing_offset", "range_min", "range_max"}`;
* `homing_offset` lives in the servo (register 31): the servo reports present = actual - offset, and
  `range_min` / `range_max` are in those offset units (LeRobot also writes them to the position limits);
* body joints map [range_min, range_max] to [-100, 100] (`RANGE_M100_100`) or, with `use_degrees`, to
  degrees around the range's middle (`DEGREES`); the gripper maps to [0, 100] (`RANGE_0_100`);
* `drive_mode` 1 flips the direction in software: v -> -v for RANGE_M100_100 and v -> 100 - v for
  RANGE_0_100 (LeRobot ignores it for DEGREES), and raw values are truncated to int like LeRobot's.

Safety: every goal is clamped to the calibrated range and to `max_step` normalized units from the present
position (LeRobot's `max_relative_target`), torque goes on only after the goal register holds the present
position (no jump), and torque goes off on `close()`, which the context manager calls on normal exit, on
exceptions and on Ctrl-C. A second Ctrl-C during that shutdown waits until the torque is off.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Protocol

import numpy as np

from models.errors import ConfigError
from models.vocab import ACTION_NAMES, GRIPPER, JOINT_NAMES, PAN_MINUS, PAN_PLUS, STAY
from robot.feetech import (
    DEFAULT_BAUDRATE,
    STS3215_MODEL_NUMBER,
    FeetechBus,
    FeetechError,
    ServoStatusError,
)
from robot.sim import Observation

log = logging.getLogger(__name__)

MAX_RAW = 4095
"""Largest STS3215 position (12-bit encoder); LeRobot's `max_res` for degrees."""

JOINT_IDS: dict[str, int] = {name: i + 1 for i, name in enumerate(JOINT_NAMES)}
"""Bus id of each joint: 1..6 in JOINT_NAMES order, as LeRobot's so101_follower numbers them."""


class NormMode(StrEnum):
    """LeRobot's MotorNormMode values."""

    RANGE_M100_100 = "range_m100_100"
    RANGE_0_100 = "range_0_100"
    DEGREES = "degrees"


@dataclass(frozen=True)
class JointCalibration:
    """One joint of LeRobot's calibration file (its `MotorCalibration`)."""

    id: int
    drive_mode: int
    homing_offset: int
    range_min: int
    range_max: int


class CalibrationError(ConfigError):
    """A calibration file is unreadable or invalid, or does not match what the servos hold."""


# ----------------------------------------------------------------------------------------------------------
# Calibration files and normalization


def load_calibration(path: Path | str) -> dict[str, JointCalibration]:
    """Read a LeRobot so101 calibration JSON and check it covers our six joints with sane values."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CalibrationError(f"cannot read calibration {path}: {err}") from err
    if not isinstance(raw, dict):
        raise CalibrationError(
            f"calibration {path}: expected a JSON object of joints, got {type(raw).__name__}"
        )
    fields = set(JointCalibration.__dataclass_fields__)
    calibration = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict) or set(entry) != fields:
            raise CalibrationError(f"calibration {path}: joint {name!r} must have exactly {sorted(fields)}")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in entry.values()):
            raise CalibrationError(f"calibration {path}: joint {name!r} values must be integers: {entry}")
        calibration[name] = JointCalibration(**entry)
    try:
        validate_calibration(calibration)
    except CalibrationError as err:
        raise CalibrationError(f"calibration {path}: {err}") from None
    return calibration


def save_calibration(calibration: Mapping[str, JointCalibration], path: Path | str) -> None:
    """Write a calibration in LeRobot's layout (what `draccus.dump` writes: joint -> fields, indent 4)."""
    validate_calibration(calibration)
    data = {name: asdict(calibration[name]) for name in JOINT_NAMES}
    Path(path).write_text(json.dumps(data, indent=4) + "\n")


def validate_calibration(calibration: Mapping[str, JointCalibration]) -> None:
    """Every joint present with its expected id, a non-empty range inside 0..4095, a storable offset."""
    if set(calibration) != set(JOINT_NAMES):
        missing, extra = set(JOINT_NAMES) - set(calibration), set(calibration) - set(JOINT_NAMES)
        raise CalibrationError(
            f"joints must be {list(JOINT_NAMES)}; missing {sorted(missing)}, extra {sorted(extra)}"
        )
    for name, cal in calibration.items():
        problems = []
        if cal.id != JOINT_IDS[name]:
            problems.append(f"id {cal.id}, expected {JOINT_IDS[name]}")
        if cal.drive_mode not in (0, 1):
            problems.append(f"drive_mode {cal.drive_mode} is not 0 or 1")
        if not 0 <= cal.range_min < cal.range_max <= MAX_RAW:
            problems.append(f"range {cal.range_min}..{cal.range_max} is not a range inside 0..{MAX_RAW}")
        if abs(cal.homing_offset) > 2047:
            problems.append(f"homing_offset {cal.homing_offset} is outside -2047..2047")
        if problems:
            raise CalibrationError(f"joint {name}: " + "; ".join(problems))


def normalize(raw: int, cal: JointCalibration, mode: NormMode) -> float:
    """Servo position (offset units) -> normalized position, as LeRobot's `_normalize`."""
    lo, hi = cal.range_min, cal.range_max
    if mode is NormMode.DEGREES:
        return (raw - (lo + hi) / 2) * 360 / MAX_RAW
    fraction = (min(max(raw, lo), hi) - lo) / (hi - lo)
    if mode is NormMode.RANGE_M100_100:
        value = fraction * 200 - 100
        return -value if cal.drive_mode else value
    value = fraction * 100
    return 100 - value if cal.drive_mode else value


def unnormalize(value: float, cal: JointCalibration, mode: NormMode) -> int:
    """Normalized position -> servo position, as LeRobot's `_unnormalize` (clamped, truncated to int)."""
    lo, hi = cal.range_min, cal.range_max
    if mode is NormMode.DEGREES:
        return int(value * MAX_RAW / 360 + (lo + hi) / 2)
    if mode is NormMode.RANGE_M100_100:
        value = min(100.0, max(-100.0, -value if cal.drive_mode else value))
        return int((value + 100) / 200 * (hi - lo) + lo)
    value = min(100.0, max(0.0, 100 - value if cal.drive_mode else value))
    return int(value / 100 * (hi - lo) + lo)


def norm_modes(use_degrees: bool = False) -> dict[str, NormMode]:
    """Each joint's normalization, as LeRobot's so101_follower picks them."""
    body = NormMode.DEGREES if use_degrees else NormMode.RANGE_M100_100
    return {name: NormMode.RANGE_0_100 if name == GRIPPER else body for name in JOINT_NAMES}


# ----------------------------------------------------------------------------------------------------------
# The arm


class FrameSource(Protocol):
    """A camera: `read()` blocks until the next frame and returns it as (H, W, 3) uint8 RGB."""

    def read(self) -> np.ndarray: ...


@dataclass(frozen=True)
class BusCommand:
    """A write the arm sent, or in dry-run mode would have sent: register -> {servo id: raw value}."""

    register: str
    values: dict[int, int]


class SO101Arm:
    """The SO-101 follower on a Feetech bus, with the interface of `robot.sim.SimArm`.

    Connecting (in the constructor) checks that all six servos answer as STS3215s in position mode and hold
    the calibration's homing offsets and limits (`write_calibration=True` writes them instead of failing),
    then turns torque on holding the present pose. With `dry_run=True` it still reads, but every write
    (goals, torque, calibration) is logged and appended to `dry_run_commands` instead of being sent.
    """

    joint_names: tuple[str, ...] = JOINT_NAMES

    def __init__(
        self,
        port: str,
        calibration: Mapping[str, JointCalibration] | Path | str,
        *,
        max_step: float = 10.0,
        pan_step: float = 4.8,
        pan_limit: float | None = None,
        use_degrees: bool = False,
        dry_run: bool = False,
        write_calibration: bool = False,
        cameras: Mapping[str, FrameSource] | None = None,
        baudrate: int = DEFAULT_BAUDRATE,
        timeout: float = 0.05,
        retries: int = 2,
    ):
        """`max_step`: most normalized units a goal may be from the present position (each joint).
        `pan_step`: normalized units one pan action moves the pan goal (SimConfig.pan_step's default).
        `pan_limit`: optional +- normalized limit for the pan goal, inside the calibrated range."""
        if max_step <= 0 or pan_step <= 0:
            raise ValueError("max_step and pan_step must be > 0")
        if isinstance(calibration, Path | str):
            self.calibration_source = str(calibration)
            calibration = load_calibration(calibration)
        else:
            self.calibration_source = "(given calibration)"
            validate_calibration(calibration)
        self.calibration: dict[str, JointCalibration] = {name: calibration[name] for name in JOINT_NAMES}
        self.modes = norm_modes(use_degrees)
        self.max_step = max_step
        self.pan_step = pan_step
        self.pan_limit = pan_limit
        self.dry_run = dry_run
        self.cameras: dict[str, FrameSource] = dict(cameras or {})
        self.dry_run_commands: list[BusCommand] = []

        ends = [
            sorted((normalize(c.range_min, c, self.modes[n]), normalize(c.range_max, c, self.modes[n])))
            for n, c in self.calibration.items()
        ]
        self._lower = np.array([lo for lo, _ in ends])
        self._upper = np.array([hi for _, hi in ends])
        self._ids = [cal.id for cal in self.calibration.values()]
        self._closed = False
        self._torque_touched = False
        """Set once connecting writes torque: from then on shutting down must turn it off."""

        self._bus = FeetechBus(port, baudrate=baudrate, timeout=timeout, retries=retries)
        try:
            self._connect(write_calibration)
        except BaseException:
            self._shutdown(quiet=True)
            raise
        self._t0 = time.monotonic()

    # -- SimArm's interface ------------------------------------------------------------------------------

    @property
    def commanded(self) -> np.ndarray:
        """(6,) float32 current goal, normalized; the dataset's `action` column."""
        return self._goal.astype(np.float32)

    def observe(self) -> Observation:
        """Measured joint positions plus one frame from each camera (waiting for it), like SimArm.observe."""
        state = self.read_positions()
        frames = {name: camera.read() for name, camera in self.cameras.items()}
        return Observation(frames=frames, state=state, time=time.monotonic() - self._t0)

    def act(self, action: int) -> None:
        """Command a discrete action: move the pan goal by `pan_step` (or keep it), the other joints hold."""
        if action not in (STAY, PAN_PLUS, PAN_MINUS):
            raise ValueError(f"unknown action id {action!r}; known: {dict(enumerate(ACTION_NAMES))}")
        direction = {STAY: 0.0, PAN_PLUS: 1.0, PAN_MINUS: -1.0}[action]
        goal = self._goal.copy()
        goal[0] += direction * self.pan_step
        if self.pan_limit is not None:
            goal[0] = float(np.clip(goal[0], -self.pan_limit, self.pan_limit))
        self.move_to(goal)

    def close(self) -> None:
        """Turn torque off on every servo (each one tried even if another fails), then close the port.

        Raises FeetechError naming the servos whose torque could not be confirmed off: the arm may still be
        holding its pose, so switch its power off.
        """
        failures = self._shutdown(quiet=False)
        if failures:
            raise FeetechError(
                "could not confirm torque off for " + "; ".join(failures) + ": the arm may still hold its "
                "pose, switch its power off"
            )

    def __enter__(self) -> SO101Arm:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except Exception as err:  # keep the original exception; this one is logged
            log.error("while shutting down after %s: %s", exc_type.__name__, err)

    # -- more of the real arm ----------------------------------------------------------------------------

    def read_positions(self) -> np.ndarray:
        """(6,) float32 present positions, normalized, in JOINT_NAMES order."""
        return self._normalized(self._read_raw()).astype(np.float32)

    def move_to(self, goal: np.ndarray | list[float]) -> np.ndarray:
        """Send a (6,) normalized goal, clamped first to `max_step` from the present position, then to the
        calibrated range. Returns (and `commanded` then holds) the goal actually sent."""
        goal = np.asarray(goal, dtype=np.float64)
        if goal.shape != (len(JOINT_NAMES),) or not np.all(np.isfinite(goal)):
            raise ValueError(
                f"goal must be {len(JOINT_NAMES)} finite numbers in JOINT_NAMES order, got {goal}"
            )
        present = self._normalized(self._read_raw())
        safe = np.clip(
            np.clip(goal, present - self.max_step, present + self.max_step), self._lower, self._upper
        )
        if not np.allclose(safe, goal):
            log.info("goal %s clamped to %s", np.round(goal, 2).tolist(), np.round(safe, 2).tolist())
        raw = {}
        for value, (name, cal) in zip(safe, self.calibration.items(), strict=True):
            raw[cal.id] = min(
                max(unnormalize(float(value), cal, self.modes[name]), cal.range_min), cal.range_max
            )
        self._send("goal_position", raw)
        self._goal = safe
        return safe.astype(np.float32)

    # -- internals ---------------------------------------------------------------------------------------

    def _read_raw(self) -> dict[int, int]:
        return self._bus.sync_read(self._ids, "present_position")

    def _normalized(self, raw: Mapping[int, int]) -> np.ndarray:
        """(6,) float64: goals are kept in float64 so a held joint maps back to exactly its raw position."""
        return np.array([normalize(raw[cal.id], cal, self.modes[n]) for n, cal in self.calibration.items()])

    def _send(self, register: str, values: dict[int, int]) -> None:
        """Sync-write one register, or in dry-run mode record and log what would have been written."""
        if self.dry_run:
            self.dry_run_commands.append(BusCommand(register, dict(values)))
            log.info("dry run: would write %s %s", register, values)
            return
        self._bus.sync_write(values, register)

    def _write_each(self, register: str, values: dict[int, int]) -> None:
        """Acknowledged writes, one servo at a time, for what must not be lost (torque, calibration)."""
        if self.dry_run:
            self._send(register, values)
            return
        for servo_id, value in values.items():
            self._bus.write(servo_id, register, value)

    def _connect(self, write_calibration: bool) -> None:
        problems = []
        for name, cal in self.calibration.items():
            try:
                model = self._bus.ping(cal.id)
            except FeetechError as err:
                problems.append(f"{name}: {err}")
                continue
            if model != STS3215_MODEL_NUMBER:
                problems.append(
                    f"{name} (id {cal.id}): model number {model}, expected {STS3215_MODEL_NUMBER}"
                )
        if problems:
            raise FeetechError(f"SO-101 on {self._bus.port}: " + "; ".join(problems))

        modes = self._bus.sync_read(self._ids, "operating_mode")
        wrong = [
            f"{n} (id {c.id}) is in mode {modes[c.id]}" for n, c in self.calibration.items() if modes[c.id]
        ]
        if wrong:
            raise FeetechError("servos must be in position mode (0): " + "; ".join(wrong))

        self._check_calibration(write_calibration)

        present = self._read_raw()
        self._goal = self._normalized(present)
        if not self.dry_run:
            self._bus.sync_write(present, "goal_position")  # hold the present pose when torque comes on
        self._torque_touched = True
        self._write_each("torque_enable", dict.fromkeys(self._ids, 1))

    def _check_calibration(self, write: bool) -> None:
        """The servos must hold the file's offsets and limits, or positions would not mean what they say."""
        fields = {
            "homing_offset": "homing_offset",
            "min_position_limit": "range_min",
            "max_position_limit": "range_max",
        }
        on_servo = {register: self._bus.sync_read(self._ids, register) for register in fields}
        mismatches = [
            f"{name} {field} {on_servo[register][cal.id]} on the servo vs {getattr(cal, field)} in the file"
            for name, cal in self.calibration.items()
            for register, field in fields.items()
            if on_servo[register][cal.id] != getattr(cal, field)
        ]
        if not mismatches:
            return
        if not write:
            raise CalibrationError(
                f"calibration {self.calibration_source} does not match the servos: "
                + "; ".join(mismatches)
                + ". Recalibrate with LeRobot, or pass write_calibration=True to write the file to them."
            )
        log.warning("writing calibration to the servos: %s", "; ".join(mismatches))
        self._torque_touched = True
        self._write_each("torque_enable", dict.fromkeys(self._ids, 0))
        self._write_each("lock", dict.fromkeys(self._ids, 0))  # EEPROM writable
        for register, field in fields.items():
            self._write_each(register, {c.id: getattr(c, field) for c in self.calibration.values()})
        self._write_each("lock", dict.fromkeys(self._ids, 1))

    def _shutdown(self, quiet: bool) -> list[str]:
        """Torque off, then close the port (even if that fails); returns the failures ('joint: error').

        `quiet` (a failed connect): log failures at debug level only, and skip the torque writes altogether
        when connecting never got as far as writing torque.
        """
        if self._closed:
            return []
        self._closed = True
        failures: list[str] = []
        try:
            with _sigint_deferred():
                if not quiet or self._torque_touched:
                    failures = self._torque_off()
        finally:
            self._bus.close()
        for failure in failures:
            (log.debug if quiet else log.error)("torque off failed: %s", failure)
        return failures

    def _torque_off(self) -> list[str]:
        """Acknowledged torque-off writes, every servo tried even if another fails; returns the failures."""
        if self.dry_run:
            self._send("torque_enable", dict.fromkeys(self._ids, 0))
            return []
        failures = []
        for name, cal in self.calibration.items():
            try:
                self._bus.write(cal.id, "torque_enable", 0)
            except ServoStatusError as err:  # it answered, so the write landed; report the fault anyway
                log.warning("torque off on %s: %s", name, err)
            except FeetechError as err:
                failures.append(f"{name}: {err}")
        return failures


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C until the block is done, then raise KeyboardInterrupt; only possible on the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    except ValueError:  # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
        if caught:
            raise KeyboardInterrupt
