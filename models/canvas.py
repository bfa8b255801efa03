"""The canvas: one training example as one image.

A canvas holds `history` context steps and one target step, left to right. Each step is a column of camera
frames stacked vertically with a motor strip under them; between two steps stands a separator column whose
color encodes the action taken between them:

    +--------+---+--------+
    | wrist  | s | wrist  |      s = separator, colored by the action (stay red, pan+ green, pan- blue)
    +--------+ e +--------+
    | base   | p | base   |
    +--------+   +--------+
    | motors |   | motors |      per joint a position patch, then per joint a velocity patch
    +--------+---+--------+
     context       target

The config travels with every checkpoint, so every size is a field here. `CanvasLayout` answers where
things are (the target region, which pixels are image, strip or separator) and decodes a strip back into
joint positions; models, the evaluator and the robot planner use it instead of recomputing offsets.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.vocab import ACTION_COLORS, ACTION_NAMES, BUFFER, JOINT_NAMES, NUM_ACTIONS, joint_range

# Region codes of `CanvasLayout.regions`.
IMAGE, STRIP, SEPARATOR, PAD = 0, 1, 2, 3

VELOCITY_ZERO_GRAY = 128
"""Gray level of a velocity patch for a joint that did not move."""


class CanvasConfig(BaseModel):
    """How a canvas is laid out. Defaults are sized for CPU training (the published setting is 224 px
    frames, 32 px separators and a 16 px strip)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cameras: tuple[str, ...] = Field(("wrist", "base"), description="Cameras stacked top to bottom.")
    frame_width: int = Field(64, ge=8, le=1024)
    frame_height: int = Field(64, ge=8, le=1024)
    history: int = Field(1, ge=1, le=16, description="Context steps before the target step.")
    separator_width: int = Field(8, ge=1, le=128)
    motor_strip_height: int = Field(8, ge=0, le=128, description="0 leaves the strip out.")
    joints: tuple[str, ...] = Field(JOINT_NAMES, description="Joints drawn on the motor strip, in order.")
    velocity_range: float = Field(
        20.0,
        gt=0,
        description="Change of a joint over one action (normalized units) drawn as white or black.",
    )
    action_duration: float = Field(0.5, gt=0, description="Seconds each discrete action is held: one step.")
    action_colors: dict[str, tuple[int, int, int]] = Field(default_factory=lambda: dict(ACTION_COLORS))

    @field_validator("cameras", "joints")
    @classmethod
    def _unique_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(names)) != len(names):
            raise ValueError(f"names must be unique, got {list(names)}")
        return names

    @field_validator("cameras")
    @classmethod
    def _some_camera(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        if not names:
            raise ValueError("at least one camera is needed")
        return names

    @field_validator("action_colors")
    @classmethod
    def _one_color_per_action(
        cls, colors: dict[str, tuple[int, int, int]]
    ) -> dict[str, tuple[int, int, int]]:
        if set(colors) != set(ACTION_NAMES):
            raise ValueError(f"need exactly one color per action {list(ACTION_NAMES)}, got {sorted(colors)}")
        for name, rgb in colors.items():
            if any(not 0 <= c <= 255 for c in rgb):
                raise ValueError(f"color of {name!r} must be RGB in 0..255, got {rgb}")
        if len({tuple(c) for c in colors.values()}) != len(colors):
            raise ValueError("action colors must differ from each other")
        return colors

    @model_validator(mode="after")
    def _strip_fits(self) -> CanvasConfig:
        if self.motor_strip_height and self.joints and self.frame_width < 2 * len(self.joints):
            raise ValueError(
                f"frame_width {self.frame_width} is too narrow for {len(self.joints)} joints "
                f"(a position and a velocity patch each, at least 1 px)"
            )
        return self

    def sizes_not_divisible_by(self, patch: int) -> list[str]:
        """The sizes a square patch of side `patch` does not tile, as `canvas.<field>=<value>`: a patch model
        needs every frame, separator and strip size to be a multiple of its patch."""
        fields = ("frame_width", "frame_height", "separator_width", "motor_strip_height")
        return [f"canvas.{name}={getattr(self, name)}" for name in fields if getattr(self, name) % patch]

    def fingerprint(self) -> str:
        """A stable hash of every field: caches and checkpoints compare configs by it."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def frames_per_action(self, fps: float) -> int:
        """Frames between two canvas steps in a recording at `fps`."""
        return max(1, round(self.action_duration * fps))

    @cached_property
    def layout(self) -> CanvasLayout:
        return CanvasLayout(self)


class CanvasLayout:
    """Where everything is on a canvas of a given config; pure geometry, no pixels."""

    def __init__(self, config: CanvasConfig) -> None:
        self.config = config
        c = config
        self.steps = c.history + 1
        self.height = len(c.cameras) * c.frame_height + c.motor_strip_height
        self.width = self.steps * c.frame_width + c.history * c.separator_width
        self.shape = (self.height, self.width, 3)
        self.patch_width = c.frame_width // (2 * len(c.joints)) if c.joints and c.motor_strip_height else 0
        self._colors = np.array([c.action_colors[name] for name in ACTION_NAMES], dtype=np.uint8)

    def step_columns(self, step: int) -> slice:
        """Columns of step `step` (0 = oldest context step, `history` = target)."""
        if not 0 <= step < self.steps:
            raise IndexError(f"step {step} is outside 0..{self.steps - 1}")
        x = step * (self.config.frame_width + self.config.separator_width)
        return slice(x, x + self.config.frame_width)

    def separator_columns(self, index: int) -> slice:
        """Columns of the separator between step `index` and step `index + 1`."""
        if not 0 <= index < self.config.history:
            raise IndexError(f"separator {index} is outside 0..{self.config.history - 1}")
        x = self.step_columns(index).stop
        return slice(x, x + self.config.separator_width)

    def camera_rows(self, camera: str) -> slice:
        try:
            i = self.config.cameras.index(camera)
        except ValueError:
            raise KeyError(
                f"camera {camera!r} is not on this canvas; cameras: {list(self.config.cameras)}"
            ) from None
        return slice(i * self.config.frame_height, (i + 1) * self.config.frame_height)

    @property
    def strip_rows(self) -> slice:
        top = len(self.config.cameras) * self.config.frame_height
        return slice(top, top + self.config.motor_strip_height)

    @property
    def target_columns(self) -> slice:
        """The target step: what a world model predicts."""
        return self.step_columns(self.steps - 1)

    @property
    def context_columns(self) -> slice:
        """Everything left of the target, separators included: what a world model is given."""
        return slice(0, self.target_columns.start)

    def position_patch_columns(self, step: int, joint: int) -> slice:
        x = self.step_columns(step).start + joint * self.patch_width
        return slice(x, x + self.patch_width)

    def velocity_patch_columns(self, step: int, joint: int) -> slice:
        return self.position_patch_columns(step, len(self.config.joints) + joint)

    @cached_property
    def regions(self) -> np.ndarray:
        """(H, W) uint8 map of IMAGE, STRIP, SEPARATOR and PAD (strip pixels no patch covers)."""
        out = np.full((self.height, self.width), PAD, dtype=np.uint8)
        strip_used = 2 * len(self.config.joints) * self.patch_width
        for step in range(self.steps):
            cols = self.step_columns(step)
            out[: self.strip_rows.start, cols] = IMAGE
            out[self.strip_rows, cols.start : cols.start + strip_used] = STRIP
        for index in range(self.config.history):
            out[:, self.separator_columns(index)] = SEPARATOR
        out.setflags(write=False)
        return out

    @cached_property
    def target_image_mask(self) -> np.ndarray:
        """(H, W) bool: the camera pixels of the target step (image-quality metrics use these)."""
        mask = np.zeros((self.height, self.width), dtype=bool)
        mask[: self.strip_rows.start, self.target_columns] = True
        mask.setflags(write=False)
        return mask

    def frame(self, canvas: np.ndarray, step: int, camera: str) -> np.ndarray:
        """One camera's frame at one step; works on (..., H, W, C) batches."""
        return canvas[..., self.camera_rows(camera), self.step_columns(step), :]

    def action_color(self, action: int) -> np.ndarray:
        return self._colors[action]

    def decode_actions(self, canvas: np.ndarray) -> np.ndarray:
        """Action ids read back from the separator colors (nearest color), shape (..., history)."""
        out = []
        for index in range(self.config.history):
            mean = (
                canvas[..., self.separator_columns(index), :].reshape(*canvas.shape[:-3], -1, 3).mean(axis=-2)
            )
            dist = ((mean[..., None, :] - self._colors.astype(np.float64)) ** 2).sum(-1)
            out.append(dist.argmin(-1))
        return np.stack(out, axis=-1)

    def decode_positions(self, canvas: np.ndarray, step: int) -> np.ndarray:
        """Normalized joint positions read back from a step's motor strip, shape (..., J)."""
        lows, highs = self._joint_bounds
        gray = np.stack(
            [
                canvas[..., self.strip_rows, self.position_patch_columns(step, j), :].mean(axis=(-3, -2, -1))
                for j in range(len(self.config.joints))
            ],
            axis=-1,
        )
        return lows + gray / 255.0 * (highs - lows)

    @cached_property
    def _joint_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        bounds = np.array([joint_range(name) for name in self.config.joints], dtype=np.float64).reshape(-1, 2)
        return bounds[:, 0], bounds[:, 1]

    def position_gray(self, positions: np.ndarray) -> np.ndarray:
        """Gray level (uint8) of a position patch: the position's place in the joint's normalized range."""
        lows, highs = self._joint_bounds
        unit = np.clip((np.asarray(positions, dtype=np.float64) - lows) / (highs - lows), 0.0, 1.0)
        return np.floor(unit * 255.0 + 0.5).astype(np.uint8)

    def velocity_gray(self, deltas: np.ndarray) -> np.ndarray:
        """Gray level (uint8) of a velocity patch: mid-gray when still, white/black at +/- velocity_range."""
        scaled = VELOCITY_ZERO_GRAY + np.asarray(deltas, dtype=np.float64) * (
            127.0 / self.config.velocity_range
        )
        return np.floor(np.clip(scaled, 0.0, 255.0) + 0.5).astype(np.uint8)


def build_many(
    config: CanvasConfig,
    frames: dict[str, np.ndarray],
    states: np.ndarray,
    prev_states: np.ndarray,
    actions: np.ndarray,
) -> np.ndarray:
    """Canvases for a batch of N samples.

    frames: camera -> (N, steps, h, w, 3) uint8 RGB, resized to the canvas frame size when h, w differ.
    states: (N, steps, J) normalized positions of `config.joints` at each step.
    prev_states: (N, J) positions one action before the first step (velocity of the first step).
    actions: (N, history) action ids taken between consecutive steps.
    Returns (N, H, W, 3) uint8.
    """
    layout = config.layout
    states = np.asarray(states, dtype=np.float64)
    actions = np.asarray(actions, dtype=np.int64)
    n, steps = actions.shape[0], layout.steps
    if states.shape != (n, steps, len(config.joints)):
        raise ValueError(
            f"states must be (N={n}, steps={steps}, joints={len(config.joints)}), got {states.shape}"
        )
    if actions.shape != (n, config.history):
        raise ValueError(f"actions must be (N={n}, history={config.history}), got {actions.shape}")
    if ((actions < 0) | (actions >= NUM_ACTIONS)).any():
        bad = int(actions[(actions < 0) | (actions >= NUM_ACTIONS)][0])
        raise ValueError(
            f"action {bad} is not a vocabulary id" + (" (buffer frame)" if bad == BUFFER else "")
        )
    missing = [cam for cam in config.cameras if cam not in frames]
    if missing:
        raise KeyError(f"no frames for camera(s) {missing}; got {sorted(frames)}")

    canvas = np.zeros((n, *layout.shape), dtype=np.uint8)
    for cam in config.cameras:
        video = _resized(frames[cam], config.frame_height, config.frame_width)
        if video.shape[:2] != (n, steps):
            raise ValueError(f"frames[{cam!r}] must be (N={n}, steps={steps}, h, w, 3), got {video.shape}")
        rows = layout.camera_rows(cam)
        for step in range(steps):
            canvas[:, rows, layout.step_columns(step)] = video[:, step]

    if layout.patch_width:
        full = np.concatenate([np.asarray(prev_states, dtype=np.float64)[:, None], states], axis=1)
        positions = layout.position_gray(states)
        velocities = layout.velocity_gray(np.diff(full, axis=1))
        for step in range(steps):
            for j in range(len(config.joints)):
                canvas[:, layout.strip_rows, layout.position_patch_columns(step, j)] = positions[
                    :, step, j, None, None, None
                ]
                canvas[:, layout.strip_rows, layout.velocity_patch_columns(step, j)] = velocities[
                    :, step, j, None, None, None
                ]

    for index in range(config.history):
        canvas[:, :, layout.separator_columns(index)] = layout.action_color(actions[:, index])[
            :, None, None, :
        ]
    return canvas


def build(
    config: CanvasConfig,
    frames: dict[str, np.ndarray],
    states: np.ndarray,
    actions: np.ndarray,
    prev_state: np.ndarray | None = None,
) -> np.ndarray:
    """One canvas. frames: camera -> (steps, h, w, 3); states: (steps, J); actions: (history,).

    Without `prev_state` the first step's velocity is drawn as zero.
    """
    states = np.asarray(states, dtype=np.float64)
    prev = states[0] if prev_state is None else np.asarray(prev_state, dtype=np.float64)
    batch = {cam: np.asarray(video)[None] for cam, video in frames.items()}
    return build_many(config, batch, states[None], prev[None], np.asarray(actions)[None])[0]


def _resized(video: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (..., h, w, 3) frames to the canvas size; area interpolation keeps them sharp but unaliased."""
    if video.shape[-3:-1] == (height, width):
        return video
    flat = video.reshape(-1, *video.shape[-3:])
    out = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in flat])
    return out.reshape(*video.shape[:-3], height, width, 3)
