"""A simulated SO-101 on a table with colored objects, seen by a wrist and a base camera.

It makes the training data and is the controller's test bed, so it speaks the same interface the real arm and
cameras will (`act` / `observe` / `commanded` / `close`). This module is the arm: its config, dynamics and
interface; what it sees is drawn by robot/sim_render.py (scene, cameras, the arm in the base view).

Frames and conventions
----------------------
World: x forward (away from the arm's base), y to the arm's left, z up, meters; the table top is z = 0
and the pan axis is the vertical line through the origin. The *arm frame* is the world rotated by the pan
angle, so the wrist camera is fixed in it.

Pan sign: `pan+` raises the normalized `shoulder_pan` position, which turns the arm to its left
(counter-clockwise seen from above). The wrist camera then looks further left, so the wrist view's content
moves to the RIGHT of the image (+x) and an object's `offset` (see `SimArm.object_offsets`) grows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.vocab import ACTION_NAMES, JOINT_NAMES, PAN_MINUS, PAN_PLUS, STAY
from robot.sim_render import (  # noqa: F401 - PALETTE and SceneObject are this module's public names too
    NOMINAL_POSE,
    PALETTE,
    SHOULDER_HEIGHT,
    SceneObject,
    _arm_profile,
    _ArmPainter,
    _Camera,
    _gaussian_table,
    _gripper_jaw,
    _make_scene,
    _rot2,
    _View,
)


class SimConfig(BaseModel):
    """Everything the sim can be asked to do differently. Travels with the dataset's meta.

    Pan geometry (defaults): normalized [-100, 100] <-> [-110 deg, +110 deg] (`degrees_per_unit` 1.1), limits
    +-63.6 units = +-70 deg so the arm never turns past the table's sides, one action = 4.8 units = 5.3 deg.
    The wrist camera (70 deg horizontal FOV, 45 deg pitched down, ~0.13 m above the table) sees the table
    ~0.19 m ahead along its axis, and table points there move by ~0.125 of the frame width per action:
    the "one action ~ 1/8 frame" learnability target, independent of the frame size.
    """

    model_config = ConfigDict(extra="forbid")

    frame_width: int = Field(64, ge=16, description="Width in pixels of every camera frame.")
    frame_height: int = Field(64, ge=16, description="Height in pixels of every camera frame.")
    cameras: tuple[str, ...] = Field(("wrist", "base"), description="Cameras rendered, in canvas order.")
    fps: int = Field(30, gt=0, description="Frames per second; physics advances 1/fps per observe().")
    action_duration: float = Field(0.5, gt=0, description="Seconds each discrete action is held.")

    degrees_per_unit: float = Field(
        1.1, gt=0, description="Joint degrees per normalized unit (+-100 = +-110)."
    )
    pan_step: float = Field(
        4.8, gt=0, description="Normalized units one pan action moves the goal (5.3 deg)."
    )
    pan_limit: float = Field(63.6, gt=0, le=100, description="Pan goal limit, +- normalized units (70 deg).")
    pan_time_constant: float = Field(
        0.08,
        gt=0,
        description="Seconds of the pan's first-order lag; 0.08 settles to 0.2% in a 0.5 s action.",
    )
    pan_process_noise: float = Field(
        0.03, ge=0, description="Std (normalized units) of the random jitter added to the pan every frame."
    )
    state_noise: float = Field(0.1, ge=0, description="Std (normalized units) of the joint sensor noise.")
    pose_jitter: float = Field(
        2.0, ge=0, description="Max +- normalized units the fixed joints vary between episodes (camera pose)."
    )
    camera_noise: float = Field(2.0, ge=0, description="Std (gray levels) of per-frame gaussian pixel noise.")

    wrist_hfov_deg: float = Field(
        70.0, gt=10, lt=170, description="Horizontal field of view of the wrist camera."
    )
    base_hfov_deg: float = Field(
        75.0, gt=10, lt=170, description="Horizontal field of view of the base camera."
    )
    wrist_gripper: bool = Field(
        True, description="Draw the fixed gripper jaw at the bottom of the wrist view."
    )

    min_objects: int = Field(1, ge=0, description="Fewest objects on the table.")
    max_objects: int = Field(4, ge=0, description="Most objects on the table.")
    object_colors: tuple[str, ...] = Field(
        tuple(PALETTE), description="Color names objects are drawn from (distinct within an episode)."
    )
    object_radius: tuple[float, float] = Field((0.018, 0.035), description="Object radius range, meters.")
    object_height: tuple[float, float] = Field((0.012, 0.05), description="Object height range, meters.")
    object_arc_margin_deg: float = Field(
        12.0,
        ge=0,
        description="Objects lie within the pan limits plus this, so every one can be centered or nearly.",
    )
    object_reach: tuple[float, float] = Field(
        (0.26, 0.45),
        description="Range of object distances from the pan axis (the wrist view's center is ~0.34).",
    )

    @model_validator(mode="after")
    def _check(self) -> SimConfig:
        unknown = set(self.cameras) - {"wrist", "base"}
        if unknown or len(set(self.cameras)) != len(self.cameras) or not self.cameras:
            raise ValueError(f"cameras must be distinct names from ('wrist', 'base'), got {self.cameras}")
        bad = [c for c in self.object_colors if c not in PALETTE]
        if bad:
            raise ValueError(f"unknown object colors {bad}; known: {', '.join(PALETTE)}")
        if not self.min_objects <= self.max_objects <= len(set(self.object_colors)):
            raise ValueError("need min_objects <= max_objects <= number of distinct object_colors")
        for name in ("object_radius", "object_height", "object_reach"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be a range 0 < low <= high, got {(lo, hi)}")
        if round(self.action_duration * self.fps) < 1:
            raise ValueError("action_duration * fps must round to at least one frame")
        return self


@dataclass
class Observation:
    """One camera tick: what the real arm + cameras will also return."""

    frames: dict[str, np.ndarray]
    """camera -> (H, W, 3) uint8 RGB."""
    state: np.ndarray
    """(6,) float32 measured joint positions, normalized, in JOINT_NAMES order."""
    time: float
    """Seconds since reset."""


@dataclass(frozen=True)
class SceneSpec:
    """An explicit scene for `SimArm.reset`: these objects instead of seeded random ones, this pan start.

    Only the centering benchmark (robot/center_episodes.py) uses it, to put the target where it wants it
    (near the edge of the view, outside it) among chosen distractors. Everything else in the episode (table,
    lights, room, camera pose, noise) still comes from the seed, and a reset without a spec draws exactly
    what it always did, so recorded datasets do not change.
    """

    objects: tuple[SceneObject, ...]
    pan_start: float
    """Normalized pan position the arm starts at, at rest (within the pan limits)."""


# ----------------------------------------------------------------------------------------------------------
# The arm


class SimArm:
    """The simulated arm + its cameras, with the interface the real SO-101 driver will have.

    Only `shoulder_pan` moves. A discrete action changes the pan goal by `pan_step` (clamped to the limits)
    the moment `act` is called; the pan then follows with a first-order lag plus jitter as `observe` advances
    time. The other joints hold a seeded pose (it sets the wrist camera's height and pitch), read with sensor
    noise.
    """

    joint_names: tuple[str, ...] = JOINT_NAMES

    def __init__(self, config: SimConfig | None = None, seed: int = 0):
        self.config = config or SimConfig()
        self.seed = seed
        self.reset(seed)

    @property
    def frames_per_action(self) -> int:
        return round(self.config.action_duration * self.config.fps)

    @property
    def commanded(self) -> np.ndarray:
        """(6,) float32 current goal, normalized; the dataset's `action` column."""
        return self._goal.astype(np.float32)

    @property
    def scene(self) -> dict:
        """JSON-friendly description of the episode's scene, for Episode.meta and debugging."""
        s = self._scene
        return {
            "seed": self.seed,
            "objects": [
                {
                    "color": o.color,
                    "rgb": list(o.rgb),
                    "x": o.x,
                    "y": o.y,
                    "radius": o.radius,
                    "height": o.height,
                }
                for o in s.objects
            ],
            "table_rgb": list(s.table_rgb),
            "light_gain": s.gain,
            "light_gradient": s.gradient,
            "light_dir": [float(c) for c in s.light_dir],
            "pose": {name: float(v) for name, v in zip(self.joint_names, self._goal, strict=True)},
            "pan_start": self._pan_start,
            "config": self.config.model_dump(mode="json"),
        }

    def reset(self, seed: int | None = None, scene: SceneSpec | None = None) -> Observation:
        """A new seeded scene and pose; pan starts at rest at a seeded position within the limits.

        `scene` (the centering benchmark's): its objects and pan start instead of seeded ones. The camera
        pose and everything else still come from the seed, and do not depend on the spec's objects.
        """
        cfg = self.config
        if seed is not None:
            self.seed = seed
        self._rng = np.random.default_rng(self.seed)
        self._scene = _make_scene(self._rng, cfg, None if scene is None else scene.objects)
        pose = {k: v + self._rng.uniform(-cfg.pose_jitter, cfg.pose_jitter) for k, v in NOMINAL_POSE.items()}
        self._pan_start = float(self._rng.uniform(-cfg.pan_limit, cfg.pan_limit))
        if scene is not None:
            if abs(scene.pan_start) > cfg.pan_limit:
                raise ValueError(f"pan_start {scene.pan_start} is beyond the pan limit +-{cfg.pan_limit}")
            self._pan_start = float(scene.pan_start)
        self._goal = np.array([self._pan_start] + [pose[n] for n in self.joint_names[1:]], np.float64)
        self._pan = self._pan_start
        self._frame = 0

        profile, pitch = _arm_profile(pose, cfg.degrees_per_unit)
        reach, height = profile[3]
        wrist = _Camera.looking(
            np.array([reach, 0.0, height]),
            np.array([math.cos(pitch), 0.0, math.sin(pitch)]),
            cfg.wrist_hfov_deg,
            cfg.frame_width,
            cfg.frame_height,
        )
        self._wrist = _View(wrist, self._scene)
        self._jaw = _gripper_jaw(cfg.frame_width, cfg.frame_height) if cfg.wrist_gripper else None

        base_origin = np.array([-0.20, 0.0, 0.58]) + self._rng.uniform(-0.015, 0.015, 3)
        base_target = np.array([0.24, 0.0, 0.0]) + self._rng.uniform(-0.02, 0.02, 3)
        if "base" in cfg.cameras:
            base = _Camera.looking(base_origin, base_target - base_origin, cfg.base_hfov_deg, *self._size)
            self._base_view = _View(base, self._scene)
            self._base_static = self._base_view.render(0.0)
            self._draw_base_housing(base)
            self._painter = _ArmPainter(base, profile)
        return self._observation()

    def act(self, action: int) -> None:
        """Command a discrete action; it holds until the next `act`."""
        if action not in (STAY, PAN_PLUS, PAN_MINUS):
            raise ValueError(f"unknown action id {action!r}; known: {dict(enumerate(ACTION_NAMES))}")
        direction = {STAY: 0.0, PAN_PLUS: 1.0, PAN_MINUS: -1.0}[action]
        limit = self.config.pan_limit
        self._goal[0] = float(np.clip(self._goal[0] + direction * self.config.pan_step, -limit, limit))

    def observe(self) -> Observation:
        """Advance physics by 1/fps and return the next camera frame, like waiting for a real camera."""
        cfg = self.config
        alpha = 1.0 - math.exp(-1.0 / (cfg.fps * cfg.pan_time_constant))
        self._pan += alpha * (self._goal[0] - self._pan) + cfg.pan_process_noise * self._rng.standard_normal()
        self._pan = float(np.clip(self._pan, -100.0, 100.0))
        self._frame += 1
        return self._observation()

    def object_offsets(self) -> list[dict]:
        """Ground truth for an oracle: where each object's center is in the wrist view right now.

        `offset` is the horizontal offset of the object's center (at half its height) from the image center
        in units of half the frame width: negative = left, |offset| <= 1 inside the frame. Objects behind the
        camera get +-10 by the side they are on. `visible`: the center projects inside the frame.
        """
        theta = self._theta()
        out = []
        for o in self._scene.objects:
            offset, visible = self._wrist_offset(o.x, o.y, o.height / 2, theta)
            out.append({"color": o.color, "offset": offset, "visible": visible})
        return out

    def offset_at(self, x: float, y: float, z: float, pan: float) -> tuple[float, bool]:
        """Where the world point (x, y, z) would be in this episode's wrist view with the pan at `pan`
        (normalized units): (offset, visible) as in `object_offsets`. Lets the centering benchmark place
        objects at chosen offsets before it builds the scene: the wrist camera's pose depends on the seed
        only.
        """
        return self._wrist_offset(x, y, z, math.radians(pan * self.config.degrees_per_unit))

    def base_occlusion(self, pan: float | None = None) -> list[float]:
        """Per object, the fraction of its pixels in the base view that the arm covers, with the pan where it
        is now or at `pan` (normalized units); 1.0 for an object outside the base view. The centering
        benchmark uses it to hide a distractor under the arm."""
        if "base" not in self.config.cameras:
            raise ValueError("base_occlusion needs the base camera in SimConfig.cameras")
        theta = self._theta() if pan is None else math.radians(pan * self.config.degrees_per_unit)
        arm = np.zeros((*self._size[::-1], 3), np.uint8)
        self._painter.draw(arm, theta)
        covered = arm.any(axis=-1)
        out = []
        for o in self._scene.objects:
            mask = self._base_view.silhouette(o, 0.0)  # the base camera stands still in the world
            out.append(float((mask & covered).sum() / mask.sum()) if mask.any() else 1.0)
        return out

    def wrist_pixels(self, pan: float | None = None) -> list[int]:
        """Per object, how many wrist-view pixels it would cover alone (no other object, no gripper jaw), with
        the pan where it is now or at `pan`. 0: nothing of it in view, however large it is."""
        theta = self._theta() if pan is None else math.radians(pan * self.config.degrees_per_unit)
        return [int(self._wrist.silhouette(o, theta).sum()) for o in self._scene.objects]

    def close(self) -> None:
        """Nothing to release in simulation; exists so callers treat the sim and the real arm alike."""

    # -------------------------------------------------------------------------------------------------------

    @property
    def _size(self) -> tuple[int, int]:
        return self.config.frame_width, self.config.frame_height

    def _theta(self) -> float:
        return math.radians(self._pan * self.config.degrees_per_unit)

    def _wrist_offset(self, x: float, y: float, z: float, theta: float) -> tuple[float, bool]:
        """(offset, visible) of a world point in the wrist view with the arm turned by `theta` (rad)."""
        cam = self._wrist.camera
        ax, ay = _rot2(-theta) @ (x, y)
        u, v, depth = cam.project(np.array([[ax, ay, z]]))
        if depth[0] > 1e-3:
            return float((u[0] - cam.cx) / cam.cx), bool(0 <= u[0] < cam.width and 0 <= v[0] < cam.height)
        side = (np.array([ax, ay, z]) - cam.origin) @ cam.rot[0]
        return math.copysign(10.0, side), False

    def _draw_base_housing(self, camera: _Camera) -> None:
        """The arm's base plate and pan servo: static, so drawn into the base camera's static view."""
        u, v, z = camera.project(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, SHOULDER_HEIGHT]]))
        radius = max(1, round(0.045 * camera.fx / z[0]))
        cv2.circle(
            self._base_static, (int(u[0] * 16), int(v[0] * 16)), 16 * radius, (40, 40, 44), -1, cv2.LINE_AA, 4
        )

    def _observation(self) -> Observation:
        cfg = self.config
        frames: dict[str, np.ndarray] = {}
        for name in cfg.cameras:
            image = self._render_wrist() if name == "wrist" else self._render_base()
            frames[name] = self._add_noise(image)
        state = self._goal.copy()
        state[0] = self._pan
        state += cfg.state_noise * self._rng.standard_normal(len(state))
        state[-1] = np.clip(state[-1], 0.0, 100.0)
        state[:-1] = np.clip(state[:-1], -100.0, 100.0)
        return Observation(frames=frames, state=state.astype(np.float32), time=self._frame / cfg.fps)

    def _render_wrist(self) -> np.ndarray:
        image = self._wrist.render(self._theta())
        if self._jaw is not None:
            mask, colors = self._jaw
            cv2.copyTo(colors, mask, image)
        return image

    def _render_base(self) -> np.ndarray:
        image = self._base_static.copy()
        self._painter.draw(image, self._theta())
        return image

    def _add_noise(self, image: np.ndarray) -> np.ndarray:
        sigma = self.config.camera_noise
        if sigma <= 0:
            return image
        noise = _gaussian_table(sigma)[self._rng.integers(0, 1 << 16, image.shape, dtype=np.uint16)]
        return cv2.add(image, noise, dtype=cv2.CV_8U)
