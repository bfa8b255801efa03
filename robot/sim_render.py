"""The simulator's rendering: the scene of an episode (objects, table texture, room), the cameras, and the arm
painted over the base view. numpy + OpenCV only (no GL), fast on one core: everything that does not depend on
the pan angle is computed once per episode, and a frame is a few vectorized lookups.

Frames and conventions are robot/sim.py's (world x forward, y left, z up, meters; the arm frame turns with the
pan). The arm's dynamics and its interface (`SimArm`) live there; this module only draws.
"""

from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from robot.sim import SimConfig

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


@dataclass(frozen=True)
class SceneObject:
    """A short upright cylinder standing on the table (world frame, meters)."""

    color: str
    rgb: tuple[int, int, int]
    x: float
    y: float
    radius: float
    height: float


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
