"""A simulated SO-101 on a table with colored objects, seen by a wrist and a base camera.

It makes the training data and is the controller's test bed, so it speaks the same interface the real arm and
cameras will (`act` / `observe` / `commanded` / `close`). Rendering is numpy + OpenCV only (no GL) and fast on
one core: everything that does not depend on the pan angle is computed once per episode, and a frame is a few
vectorized lookups.

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

import functools
import math
import statistics
from dataclasses import dataclass, field

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.vocab import ACTION_NAMES, JOINT_NAMES, PAN_MINUS, PAN_PLUS, STAY

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 35),
    "green": (40, 165, 70),
    "blue": (35, 80, 205),
    "yellow": (235, 200, 35),
    "orange": (240, 125, 25),
    "purple": (135, 55, 170),
}
"""Object colors by name (RGB). The controller targets objects by these names."""

TABLE_COLORS: tuple[tuple[int, int, int], ...] = (
    (196, 160, 118),  # light wood
    (125, 90, 60),  # dark wood
    (212, 212, 206),  # white laminate
    (150, 150, 148),  # gray
    (112, 126, 140),  # blue-gray
)
"""Table base colors; none of them is close to an object color."""

# Arm geometry (meters). The other joints set the vertical shape of the arm; these lengths are roughly the
# SO-101's. The wrist camera sits on the wrist link, the gripper tip beyond it.
SHOULDER_HEIGHT = 0.095
UPPER_ARM = 0.116
FOREARM = 0.135
WRIST_TO_CAMERA = 0.05
WRIST_TO_TIP = 0.10

# Nominal normalized poses of the joints that do not move (the body joints map to degrees like the pan, see
# SimConfig.degrees_per_unit): upper arm 70 deg above horizontal, forearm 15 deg below, wrist link (and wrist
# camera axis) 45 deg below horizontal -> camera about 0.205 m out and 0.134 m above the table.
NOMINAL_POSE: dict[str, float] = {
    "shoulder_lift": 18.18,
    "elbow_flex": 77.27,
    "wrist_flex": 27.27,
    "wrist_roll": 0.0,
    "gripper": 30.0,
}

# The table (world meters) and the resolution of its texture.
TABLE_X = (-0.25, 0.70)
TABLE_Y = (-0.60, 0.60)
TEXTURE_RES = 0.004
PANORAMA_PX_PER_DEG = 1.0

_MISS = -1.0e4  # table coordinate given to rays that never reach the table plane; lands outside the texture


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
class SceneObject:
    """A short upright cylinder standing on the table (world frame, meters)."""

    color: str
    rgb: tuple[int, int, int]
    x: float
    y: float
    radius: float
    height: float


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
# Geometry


def _rot2(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


@dataclass
class _Camera:
    """A pinhole camera: pose, intrinsics and the (unnormalized) ray direction of every pixel."""

    origin: np.ndarray  # (3,)
    rot: np.ndarray  # (3, 3) rows: right, down, forward (world -> camera)
    fx: float
    cx: float
    cy: float
    width: int
    height: int
    dirs: np.ndarray  # (H, W, 3) float32

    @classmethod
    def looking(
        cls, origin: np.ndarray, forward: np.ndarray, hfov_deg: float, width: int, height: int
    ) -> _Camera:
        """A camera without roll: its image x axis stays horizontal, so pan shifts are purely horizontal."""
        fwd = forward / np.linalg.norm(forward)
        right = np.cross(fwd, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(fwd, right)
        rot = np.stack([right, down, fwd])
        fx = (width / 2) / math.tan(math.radians(hfov_deg) / 2)  # square pixels: fy = fx
        u = (np.arange(width) + 0.5 - width / 2) / fx
        v = (np.arange(height) + 0.5 - height / 2) / fx
        dirs = fwd + u[None, :, None] * right + v[:, None, None] * down
        return cls(origin, rot, fx, width / 2, height / 2, width, height, dirs.astype(np.float32))

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, 3) world points -> pixel u, v (continuous, pixel i spans [i, i+1)) and depth along the axis."""
        cam = (points - self.origin) @ self.rot.T
        z = cam[:, 2]
        safe = np.where(np.abs(z) < 1e-9, 1e-9, z)
        return self.fx * cam[:, 0] / safe + self.cx, self.fx * cam[:, 1] / safe + self.cy, z

    def bbox(self, points: np.ndarray) -> tuple[int, int, int, int] | None:
        """Pixel window (v0, v1, u0, u1) holding the points; the whole frame if one is behind, None if off."""
        u, v, z = self.project(points)
        if np.any(z <= 1e-3):
            return 0, self.height, 0, self.width
        u0, u1 = max(int(u.min()) - 1, 0), min(int(math.ceil(u.max())) + 1, self.width)
        v0, v1 = max(int(v.min()) - 1, 0), min(int(math.ceil(v.max())) + 1, self.height)
        return (v0, v1, u0, u1) if u0 < u1 and v0 < v1 else None


def _arm_profile(pose: dict[str, float], deg_per_unit: float) -> tuple[list[tuple[float, float]], float]:
    """The arm's joints in its vertical plane as (reach, height) points, and the wrist link's pitch (rad).

    Points: shoulder, elbow, wrist, camera, gripper tip.
    """
    elevation = math.radians(90.0 - deg_per_unit * pose["shoulder_lift"])
    forearm = elevation - math.radians(deg_per_unit * pose["elbow_flex"])
    wrist = forearm - math.radians(deg_per_unit * pose["wrist_flex"])

    def step(p: tuple[float, float], length: float, angle: float) -> tuple[float, float]:
        return p[0] + length * math.cos(angle), p[1] + length * math.sin(angle)

    shoulder = (0.0, SHOULDER_HEIGHT)
    elbow = step(shoulder, UPPER_ARM, elevation)
    wrist_pt = step(elbow, FOREARM, forearm)
    return [
        shoulder,
        elbow,
        wrist_pt,
        step(wrist_pt, WRIST_TO_CAMERA, wrist),
        step(wrist_pt, WRIST_TO_TIP, wrist),
    ], wrist


def _cylinder_hull(x: float, y: float, radius: float, height: float) -> np.ndarray:
    """16 points whose convex hull contains the cylinder (octagons at its bottom and top)."""
    ang = np.arange(8) * (math.pi / 4)
    r = radius / math.cos(math.pi / 8)
    ring = np.stack([x + r * np.cos(ang), y + r * np.sin(ang)], axis=1)
    return np.concatenate([np.column_stack([ring, np.zeros(8)]), np.column_stack([ring, np.full(8, height)])])


# ----------------------------------------------------------------------------------------------------------
# Scene: everything about an episode that is fixed in the world


@dataclass
class _Scene:
    objects: list[SceneObject]
    texture: np.ndarray  # (rows over y, cols over x, 3) uint8: the lit table top
    panorama: np.ndarray  # (180 * px/deg, 360 * px/deg, 3) uint8: the room, by world azimuth and elevation
    light_dir: np.ndarray  # (2,) unit vector on the table pointing towards the light
    gain: float  # global lighting gain
    gradient: float  # strength of the light gradient across the table
    table_rgb: tuple[int, int, int]
    object_rgb: list[np.ndarray] = field(default_factory=list)  # (3,) float32 lit color of each object

    def illumination(self, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray | float:
        """Brightness at table points: global gain times a soft linear gradient towards the light."""
        along = (x - 0.2) * self.light_dir[0] + y * self.light_dir[1]
        return self.gain * (1.0 + self.gradient * np.clip(along / 0.6, -1.0, 1.0))


def _place_objects(rng: np.random.Generator, cfg: SimConfig) -> list[SceneObject]:
    """Objects spread around the arc the wrist view sweeps, not overlapping, distinct colors."""
    count = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    colors = rng.permutation(list(dict.fromkeys(cfg.object_colors)))[:count]
    max_angle = math.radians(cfg.pan_limit * cfg.degrees_per_unit + cfg.object_arc_margin_deg)
    objects: list[SceneObject] = []
    for color in colors:
        for _ in range(200):
            angle = rng.uniform(-max_angle, max_angle)
            reach = rng.uniform(*cfg.object_reach)
            radius = rng.uniform(*cfg.object_radius)
            x, y = reach * math.cos(angle), reach * math.sin(angle)
            if all(math.hypot(x - o.x, y - o.y) > radius + o.radius + 0.02 for o in objects):
                break
        # After 200 tries (not reached with the default ranges) the last candidate is kept, overlap or not.
        jitter = rng.integers(-12, 13, size=3)
        rgb = tuple(int(c) for c in np.clip(np.array(PALETTE[str(color)]) + jitter, 0, 255))
        height = rng.uniform(*cfg.object_height)
        objects.append(SceneObject(str(color), rgb, float(x), float(y), float(radius), float(height)))
    return objects


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, int], blobs: int, sigma_px: float
) -> np.ndarray:
    """Low-frequency variation in [-1, 1]: a few random soft blobs, blurred so there is no pixel-scale detail.

    Drawn and blurred at a quarter of the resolution, then scaled up: it is smooth anyway, and 16x cheaper.
    """
    small = (max(shape[0] // 4, 2), max(shape[1] // 4, 2))
    values = np.zeros(small, np.float32)
    for _ in range(blobs):
        center = (int(rng.integers(0, small[1])), int(rng.integers(0, small[0])))
        axes = (int(rng.uniform(0.05, 0.25) * small[1]) + 1, int(rng.uniform(0.05, 0.25) * small[0]) + 1)
        cv2.ellipse(values, center, axes, float(rng.uniform(0, 180)), 0, 360, float(rng.uniform(-1, 1)), -1)
    values = cv2.GaussianBlur(values, (0, 0), sigma_px / 4)
    values = cv2.resize(values, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return values / max(float(np.abs(values).max()), 1e-6)


def _make_texture(rng: np.random.Generator, table_rgb: np.ndarray, scene: _Scene) -> np.ndarray:
    """The lit table top over world (x, y) with soft object shadows: rows over y, columns over x."""
    cols = int(round((TABLE_X[1] - TABLE_X[0]) / TEXTURE_RES))
    rows = int(round((TABLE_Y[1] - TABLE_Y[0]) / TEXTURE_RES))
    shade = 1.0 + float(rng.uniform(0.10, 0.20)) * _smooth_field(rng, (rows, cols), 16, 0.03 / TEXTURE_RES)
    hue = 1.0 + 0.04 * _smooth_field(rng, (rows, cols), 6, 0.06 / TEXTURE_RES)  # a slight tint variation
    xs = TABLE_X[0] + (np.arange(cols, dtype=np.float32) + 0.5) * TEXTURE_RES
    ys = TABLE_Y[0] + (np.arange(rows, dtype=np.float32) + 0.5) * TEXTURE_RES
    light = scene.illumination(xs[None, :], ys[:, None]).astype(np.float32)

    shadow = np.zeros((rows, cols), np.float32)
    for o in scene.objects:  # cast away from the light, longer for taller objects
        cx = o.x - scene.light_dir[0] * o.height * 0.6
        cy = o.y - scene.light_dir[1] * o.height * 0.6
        center = (int((cx - TABLE_X[0]) / TEXTURE_RES), int((cy - TABLE_Y[0]) / TEXTURE_RES))
        cv2.circle(shadow, center, int(o.radius * 1.15 / TEXTURE_RES), 1.0, -1)
    shadow = cv2.GaussianBlur(shadow, (0, 0), 0.008 / TEXTURE_RES)

    lum = light * shade * (1.0 - 0.35 * shadow)
    red, green, blue = (float(c) for c in table_rgb)
    return cv2.convertScaleAbs(cv2.merge([lum * hue * red, lum * green, lum / hue * blue]))  # saturates


def _make_panorama(rng: np.random.Generator, gain: float) -> np.ndarray:
    """The room beyond the table by (azimuth, elevation): floor below the horizon, wall above, both smooth."""
    rows, cols = int(180 * PANORAMA_PX_PER_DEG), int(360 * PANORAMA_PX_PER_DEG)
    floor = rng.uniform(50, 110, size=3)
    wall = rng.uniform(150, 225, size=3)
    elevation = 90.0 - (np.arange(rows) + 0.5) / PANORAMA_PX_PER_DEG
    blend = np.clip((elevation + 8.0) / 16.0, 0, 1)[:, None, None]  # soft skirting band around the horizon
    base = floor * (1 - blend) + wall * blend
    variation = 1.0 + 0.15 * _smooth_field(rng, (rows, cols), 12, 6 * PANORAMA_PX_PER_DEG)
    pano = base * variation[..., None] * gain
    return np.clip(pano, 0, 255).astype(np.uint8)


def _make_scene(
    rng: np.random.Generator, cfg: SimConfig, objects: tuple[SceneObject, ...] | None = None
) -> _Scene:
    """The seeded scene; `objects` replaces the seeded placement (and its draws) when given."""
    angle = rng.uniform(0, 2 * math.pi)
    table_rgb = np.array(TABLE_COLORS[int(rng.integers(len(TABLE_COLORS)))], float) + rng.uniform(-10, 10, 3)
    scene = _Scene(
        objects=_place_objects(rng, cfg) if objects is None else list(objects),
        texture=np.zeros((0, 0, 3), np.uint8),
        panorama=np.zeros((0, 0, 3), np.uint8),
        light_dir=np.array([math.cos(angle), math.sin(angle)]),
        gain=float(rng.uniform(0.8, 1.15)),
        gradient=float(rng.uniform(0.08, 0.25)),
        table_rgb=tuple(int(c) for c in np.clip(table_rgb, 0, 255)),
    )
    scene.object_rgb = [
        np.float32(scene.illumination(o.x, o.y)) * np.array(o.rgb, np.float32) for o in scene.objects
    ]
    scene.texture = _make_texture(rng, table_rgb, scene)
    scene.panorama = _make_panorama(rng, scene.gain)
    return scene


# ----------------------------------------------------------------------------------------------------------
# Rendering


class _View:
    """Renders one camera that is rigidly attached to the arm frame, at any pan angle.

    The ray of every pixel is fixed in the arm frame, so where it meets the table (and its direction in the
    room) is computed once; a frame only rotates those points by the pan angle and looks up the texture, then
    ray-casts the few objects inside their projected bounding boxes.
    """

    def __init__(self, camera: _Camera, scene: _Scene):
        self.camera, self.scene = camera, scene
        d = camera.dirs
        down = d[..., 2] < -1e-6
        t = np.where(down, -camera.origin[2] / np.where(down, d[..., 2], -1.0), 0.0)
        hits = camera.origin[:2] + t[..., None] * d[..., :2]
        self.table_points = np.where(down[..., None], hits, _MISS).astype(np.float32)  # (H, W, 2) arm frame
        azimuth = np.degrees(np.arctan2(d[..., 1], d[..., 0]))
        elevation = np.degrees(np.arctan2(d[..., 2], np.hypot(d[..., 0], d[..., 1])))
        self.panorama_points = np.stack(
            [(azimuth + 180.0) * PANORAMA_PX_PER_DEG, (90.0 - elevation) * PANORAMA_PX_PER_DEG - 0.5], axis=-1
        ).astype(np.float32)

    def render(self, theta: float) -> np.ndarray:
        """The noise-free (H, W, 3) uint8 image with the arm frame rotated by `theta` (rad) in the world."""
        c, s, r = math.cos(theta), math.sin(theta), 1.0 / TEXTURE_RES
        to_texture = np.array(
            [[c * r, -s * r, -TABLE_X[0] * r - 0.5], [s * r, c * r, -TABLE_Y[0] * r - 0.5]], np.float32
        )
        room_map = self.panorama_points + np.array(
            [math.degrees(theta) * PANORAMA_PX_PER_DEG, 0.0], np.float32
        )
        image = cv2.remap(self.scene.panorama, room_map, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
        # The table over the room; BORDER_TRANSPARENT leaves the room where a ray lands off the table.
        table_map = cv2.transform(self.table_points, to_texture)
        cv2.remap(self.scene.texture, table_map, None, cv2.INTER_LINEAR, image, cv2.BORDER_TRANSPARENT)
        self._draw_objects(image, theta)
        return image

    def silhouette(self, obj: SceneObject, theta: float) -> np.ndarray:
        """(H, W) bool: the pixels `obj` covers on its own, with the arm frame rotated by `theta` (rad)."""
        x, y = _rot2(-theta) @ (obj.x, obj.y)
        pixels = np.zeros((self.camera.height, self.camera.width, 3), np.uint8)
        window = self.camera.bbox(_cylinder_hull(x, y, obj.radius, obj.height))
        if window is not None:
            white, light = np.full(3, 255.0, np.float32), np.array([1.0, 0.0])
            self._cast_cylinder(pixels, window, x, y, obj.radius, obj.height, white, light)
        return pixels.any(axis=-1)

    def _draw_objects(self, image: np.ndarray, theta: float) -> None:
        """Ray-cast the objects (far to near: nearer ones cover farther ones) inside their bounding boxes."""
        to_arm = _rot2(-theta)
        light = to_arm @ self.scene.light_dir
        placed = []
        for o, rgb in zip(self.scene.objects, self.scene.object_rgb, strict=True):
            x, y = to_arm @ (o.x, o.y)
            placed.append((math.hypot(x - self.camera.origin[0], y - self.camera.origin[1]), x, y, o, rgb))
        for _, x, y, o, rgb in sorted(placed, key=lambda p: -p[0]):
            window = self.camera.bbox(_cylinder_hull(x, y, o.radius, o.height))
            if window is not None:
                self._cast_cylinder(image, window, x, y, o.radius, o.height, rgb, light)

    def _cast_cylinder(
        self,
        image: np.ndarray,
        window: tuple[int, int, int, int],
        x: float,
        y: float,
        radius: float,
        height: float,
        rgb: np.ndarray,
        light: np.ndarray,
    ) -> None:
        v0, v1, u0, u1 = window
        d = self.camera.dirs[v0:v1, u0:u1]
        dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
        # Python floats keep the math in the rays' float32.
        ox, oy, oz = (float(c) for c in self.camera.origin - (x, y, 0.0))
        a = dx * dx + dy * dy + 1e-12
        b = ox * dx + oy * dy
        disc = b * b - a * (ox * ox + oy * oy - radius * radius)
        root = np.sqrt(np.maximum(disc, 0.0))
        t_side_in, t_side_out = (-b - root) / a, (-b + root) / a
        dz_safe = np.where(dz < -1e-9, dz, -1e-9)
        t_top, t_bottom = (height - oz) / dz_safe, -oz / dz_safe
        t_in = np.maximum(t_side_in, t_top)
        hit = (disc > 0) & (dz < -1e-9) & (t_in < np.minimum(t_side_out, t_bottom)) & (t_in > 0)
        if not hit.any():
            return
        # Sides: lambert on the horizontal normal; top: flat and brightest. Gives the objects a 3D look.
        nx, ny = (ox + t_in * dx) / radius, (oy + t_in * dy) / radius
        shade = np.where(t_top >= t_side_in, 1.0, 0.62 + 0.28 * (nx * light[0] + ny * light[1]))
        colored = np.clip(shade[..., None] * rgb, 0, 255).astype(np.uint8)
        cv2.copyTo(colored, hit.view(np.uint8), image[v0:v1, u0:u1])  # writes into the view


@functools.lru_cache(maxsize=8)
def _gaussian_table(sigma: float) -> np.ndarray:
    """Gaussian noise by inverse CDF on 2^16 quantiles, rounded to gray levels.

    Indexing it with random uint16s is ~3x faster than drawing normals, and the result is quantized to
    integers when added to a uint8 frame anyway.
    """
    normal = statistics.NormalDist(0.0, sigma)
    quantiles = [normal.inv_cdf((i + 0.5) / (1 << 16)) for i in range(1 << 16)]
    return np.round(np.array(quantiles)).astype(np.int16)


def _gripper_jaw(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed jaw the wrist camera sees at the bottom of its view: (H, W) uint8 mask, (H, W, 3) colors."""
    pts = np.array([(0.60, 1.02), (0.66, 0.84), (0.74, 0.80), (0.80, 0.83), (0.84, 1.02)]) * (width, height)
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    ramp = np.linspace(45, 75, height, dtype=np.float32)[:, None, None]  # darker where it's further away
    colors = np.broadcast_to(ramp, (height, width, 3)).astype(np.uint8)
    return np.where(mask > 127, 255, 0).astype(np.uint8), colors


class _ArmPainter:
    """Draws the arm over the base camera's static view: thick links from the base to the gripper."""

    OUTLINE = (35, 35, 38)
    BODY = (232, 228, 214)
    JOINT = (30, 30, 32)
    LINK_WIDTH = 0.030  # meters

    def __init__(self, camera: _Camera, profile: list[tuple[float, float]]):
        self.camera = camera
        self.profile = np.array(profile)  # (5, 2) reach, height: shoulder, elbow, wrist, camera, tip

    def draw(self, image: np.ndarray, theta: float) -> None:
        reach, height = self.profile[:, 0], self.profile[:, 1]
        points = np.column_stack([reach * math.cos(theta), reach * math.sin(theta), height])
        points = np.vstack([[0.0, 0.0, 0.0], points])  # the base, under the shoulder
        u, v, z = self.camera.project(points)
        # 4 fractional bits (shift=4): the arm moves smoothly, not in whole-pixel jumps.
        px = np.round(np.column_stack([u, v]) * 16).astype(np.int32)
        widths = [max(1, round(self.LINK_WIDTH * self.camera.fx / max(depth, 1e-3))) for depth in z]
        links = [(0, 1), (1, 2), (2, 3), (3, 5)]  # base-shoulder, upper arm, forearm, wrist-to-tip
        for extra, color in ((2, self.OUTLINE), (0, self.BODY)):
            for i, j in links:
                width = (widths[i] + widths[j]) // 2 + extra
                cv2.line(image, tuple(px[i]), tuple(px[j]), color, width, cv2.LINE_AA, shift=4)
        for k in (1, 2, 3):  # shoulder, elbow, wrist servos
            cv2.circle(image, tuple(px[k]), 16 * max(1, widths[k] // 2), self.JOINT, -1, cv2.LINE_AA, shift=4)
        cv2.circle(image, tuple(px[4]), 16 * max(1, widths[4] // 3), self.JOINT, -1, cv2.LINE_AA, shift=4)


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
