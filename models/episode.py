"""One recorded episode in memory: what the sim or the arm produces and what the dataset files hold."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models.vocab import JOINT_NAMES


@dataclass
class Episode:
    """Frames, joint states and actions of one episode, aligned frame by frame.

    `state` and `action` are LeRobot-normalized joint positions (body joints in [-100, 100], gripper in
    [0, 100]); `action` is the commanded goal, `state` the measured position. `discrete_action[t]` is the
    vocabulary id (models.vocab) of the action held from frame t to t + 1, or vocab.BUFFER.
    """

    frames: dict[str, np.ndarray]
    """camera name -> (T, H, W, 3) uint8 RGB."""
    state: np.ndarray
    """(T, J) float32."""
    action: np.ndarray
    """(T, J) float32."""
    discrete_action: np.ndarray
    """(T,) int64."""
    fps: int = 30
    task: str = "pan the arm with discrete actions"
    joint_names: tuple[str, ...] = JOINT_NAMES
    meta: dict = field(default_factory=dict)
    """Free-form extras (e.g. the sim's scene parameters); not written to the dataset."""
    frame_times: np.ndarray | None = None
    """(T,) float seconds since frame 0 at which a real recorder took each frame (the sim's are exact)."""

    def __post_init__(self) -> None:
        n = len(self.discrete_action)
        self.state = np.asarray(self.state, dtype=np.float32)
        self.action = np.asarray(self.action, dtype=np.float32)
        self.discrete_action = np.asarray(self.discrete_action, dtype=np.int64)
        if self.state.shape != (n, len(self.joint_names)) or self.action.shape != self.state.shape:
            raise ValueError(
                f"episode arrays disagree: state {self.state.shape}, action {self.action.shape}, "
                f"discrete_action ({n},), {len(self.joint_names)} joints"
            )
        if self.frame_times is not None:
            self.frame_times = np.asarray(self.frame_times, dtype=np.float64)
            if self.frame_times.shape != (n,):
                raise ValueError(f"frame_times: expected ({n},), got {self.frame_times.shape}")
        for name, video in self.frames.items():
            if video.dtype != np.uint8 or video.ndim != 4 or video.shape[0] != n or video.shape[3] != 3:
                raise ValueError(
                    f"camera {name!r}: expected ({n}, H, W, 3) uint8, got {video.shape} {video.dtype}"
                )

    @property
    def length(self) -> int:
        return len(self.discrete_action)

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(self.frames)
