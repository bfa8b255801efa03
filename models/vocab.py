"""What the data speaks: joint names and the discrete action vocabulary, kept in one place.

v1 moves one joint (`shoulder_pan`) with three actions. Everything that needs an action id, name or
color imports it from here, so a multi-joint vocabulary later changes this file only.
"""

from __future__ import annotations

import numpy as np

JOINT_NAMES: tuple[str, ...] = (
    "shoulder_pan",
    "shoulder_lift",
    "elbow_flex",
    "wrist_flex",
    "wrist_roll",
    "gripper",
)
"""The SO-101's joints in bus-id order (ids 1..6), named as LeRobot names them."""

ACTION_JOINT = "shoulder_pan"
"""The joint the v1 discrete actions move."""

ACTION_NAMES: tuple[str, ...] = ("stay", "pan+", "pan-")
"""Action id -> name. The id is the value of the `discrete_action` column."""

STAY, PAN_PLUS, PAN_MINUS = 0, 1, 2
NUM_ACTIONS = len(ACTION_NAMES)

BUFFER = -1
"""Marks frames with no valid action (the published data's code 0, or frames before the first log line)."""

ACTION_COLORS: dict[str, tuple[int, int, int]] = {
    "stay": (255, 0, 0),
    "pan+": (0, 255, 0),
    "pan-": (0, 0, 255),
}
"""Default RGB color of the separator column that encodes each action on a canvas."""

GRIPPER = "gripper"
"""LeRobot normalizes the gripper to [0, 100] and every other joint to [-100, 100]."""


def joint_range(name: str) -> tuple[float, float]:
    """The normalized range of a joint: what a motor-strip gray level of 0 and 255 stands for."""
    return (0.0, 100.0) if name == GRIPPER else (-100.0, 100.0)


# The published canvas world-model data codes move+ = 1, move- = 2, stay = 3 and 0 for a buffer frame.
_PUBLISHED_CODE_TO_ACTION = np.array([BUFFER, PAN_PLUS, PAN_MINUS, STAY], dtype=np.int64)


def action_id(name: str) -> int:
    """Id of an action name; a clear error lists the vocabulary."""
    try:
        return ACTION_NAMES.index(name)
    except ValueError:
        raise ValueError(f"unknown action {name!r}; known actions: {', '.join(ACTION_NAMES)}") from None


def from_published_codes(codes: np.ndarray) -> np.ndarray:
    """Map the published data's codes (0 buffer, 1 move+, 2 move-, 3 stay) to our ids (buffer -> BUFFER)."""
    codes = np.asarray(codes, dtype=np.int64)
    bad = (codes < 0) | (codes > 3)
    if bad.any():
        raise ValueError(f"discrete action code {int(codes[bad][0])} is not one of 0 (buffer), 1, 2, 3")
    return _PUBLISHED_CODE_TO_ACTION[codes]


def derive_from_commands(
    commanded: np.ndarray, frames_per_action: int, deadband: float, measured: np.ndarray | None = None
) -> np.ndarray:
    """Discrete actions from the commanded position of `ACTION_JOINT`, for datasets that log none.

    Without a log we cannot know where actions start, so the episode is cut into windows of
    `frames_per_action` frames from its first frame, and every frame of a window gets the sign of how far
    the command moved over it (from the frame before the window to its last frame). A goal that jumps when
    the action starts (our sim, key teleop) and one that ramps through the window (leader-arm teleop) both
    come out right when the recording started on an action boundary. Moves within `deadband`
    (normalized units) count as `stay`. The first window has no frame before it: the command logged at
    frame 0 may already include the first action, so the measured position at frame 0 (`measured`, when
    given) stands in for the command before it.
    """
    commanded = np.asarray(commanded, dtype=np.float64)
    n = len(commanded)
    starts = np.arange(0, n, frames_per_action)
    before = commanded[np.maximum(starts - 1, 0)]
    if measured is not None and n:
        before[0] = float(np.asarray(measured, dtype=np.float64)[0])
    last = commanded[np.minimum(starts + frames_per_action - 1, n - 1)]
    delta = last - before
    per_window = np.full(len(starts), STAY, dtype=np.int64)
    per_window[delta > deadband] = PAN_PLUS
    per_window[delta < -deadband] = PAN_MINUS
    return np.repeat(per_window, frames_per_action)[:n]
