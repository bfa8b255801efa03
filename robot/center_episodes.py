"""The hard centering benchmark's episodes: where the target starts and what else stands on the table.

The easy starts (`robot.center.benchmark_start`: target in view, 0.3-0.9 half-widths off center) are centered
by a random walk about half the time, so they say little about the model. Every start here is far from
centered, and every scene holds distractors:

- `edge`: the target in view near the edge, 0.7-0.95 half-widths off center (3-4 pan actions away).
- `lost`: the target was in view, then the arm turned away from it (a lead-in of pan actions that every policy
  sees before control starts); control starts with it 1.2-2.0 half-widths off center, out of view. A planner
  has to turn back toward where it saw it last.
- `unseen`: never in view. The arm starts near one end of its range (|pan| >= 40 of 63.6 units) and the target
  is 1.2-2.0 half-widths off, toward the middle of the range: on the other side it could not be centered
  without passing the pan limit. A planner has to sweep, and the side with more range is the one to try first.

Distractors: `distractors` objects of other colors anywhere on the arc, plus one `decoy` of the palette
color nearest the target's hue (`SIMILAR_HUE`), standing in the wrist view near its center when control
starts, at a reach where the arm hides it in the base view (the sim's arm painter draws over it). Targets are
the colors that have a decoy the detector can still tell apart (see `SIMILAR_HUE`).

Each start is a pure function of its seed (a random stream of its own, beside the sim's): the same seed gives
the same start for every policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from models.vocab import PAN_MINUS, PAN_PLUS
from robot.sim import PALETTE, SceneObject, SceneSpec, SimArm

KINDS = ("edge", "lost", "unseen")

SIMILAR_HUE: dict[str, str] = {"red": "orange", "blue": "purple", "purple": "blue"}
"""Target -> decoy: the palette color nearest in hue. In OpenCV hue units (0-179), red 0 / orange 14 and
blue 112 / purple 141: 14 and 29 units apart, against the detector's tolerance of 12 (robot/planner.py
HUE_TOLERANCE, and its nearest-palette-hue rule): an orange pixel reads as red only when its hue is 7 or
more units off orange's, a purple or blue one as the other only when 14 or more off its own; the sim's
jitter, shading and noise stay well inside that. Yellow (25) and orange are left out: under the brightest
lights the sim saturates an orange object's red channel and its hue reaches ~21, nearer yellow, so the
detector itself cannot tell them apart. Green's nearest palette hue is 42 units away (not similar), and
orange is no target: dark wooden tables come near its hue and saturation."""

TRIES = 200  # placements tried per object before the start is drawn again


@dataclass(frozen=True)
class HardSettings:
    """What the hard benchmark's starts look like; every range is sampled uniformly per start."""

    kinds: tuple[tuple[str, float], ...] = (("edge", 0.4), ("lost", 0.3), ("unseen", 0.3))
    """Start kinds and their probabilities."""
    edge_offset: tuple[float, float] = (0.7, 0.95)
    """|offset| of an `edge` target, half-widths (in view)."""
    outside_offset: tuple[float, float] = (1.2, 2.0)
    """|offset| of a `lost` or `unseen` target when control starts, half-widths (out of view)."""
    seen_offset: float = 0.9
    """A `lost` target's |offset| before the lead-in is at most this: it was clearly in view."""
    unseen_pan: float = 40.0
    """An `unseen` start's |pan| is at least this, normalized units: near one end of the range."""
    limit_margin: float = 4.8
    """The target's centered pan stays this far inside the pan limit (one pan action)."""
    distractors: int = 2
    """Objects of other (not similar) colors."""
    decoy: bool = True
    """Add the similar-hue decoy."""
    decoy_offset: float = 0.3
    """The decoy's |offset| when control starts is at most this (in view, near the center)."""
    decoy_reach: tuple[float, float] = (0.26, 0.32)
    """The decoy's distance from the pan axis, meters: near enough that the arm covers it in the base view."""
    decoy_hidden: float = 0.5
    """At least this fraction of the decoy's base-view pixels lies under the arm when control starts."""
    targets: tuple[str, ...] = tuple(SIMILAR_HUE)
    """Target colors."""


@dataclass(frozen=True)
class Start:
    """One episode start: reset the arm with `scene` under `seed`, play `lead_in`, then control begins."""

    seed: int
    kind: str
    target: str
    scene: SceneSpec
    lead_in: tuple[int, ...] = ()
    """Actions the arm makes before control starts; every policy observes them (`robot.center.run_start`)."""
    decoy: str | None = None
    distractors: tuple[str, ...] = field(default=())


def make_start(
    arm: SimArm, seed: int, settings: HardSettings | None = None, kind: str | None = None
) -> Start:
    """The start of seed `seed` (of kind `kind` when given, else drawn from `settings.kinds`).

    `arm` measures the geometry (the seed's camera pose, what the arm hides): it is reset along the way, so
    play the start with `robot.center.run_start`, which resets it to the start's scene.
    """
    settings = settings or HardSettings()
    rng = np.random.default_rng([seed, 0x5EED])  # a stream of its own: the sim's is default_rng(seed)
    names, weights = zip(*settings.kinds, strict=True)
    drawn = str(rng.choice(names, p=np.array(weights) / sum(weights)))
    kind = kind or drawn
    if kind not in KINDS:
        raise ValueError(f"unknown start kind {kind!r}; kinds: {', '.join(KINDS)}")
    for _ in range(TRIES):
        start = _try_start(arm, seed, settings, kind, rng)
        if start is not None:
            return start
    raise RuntimeError(f"seed {seed}: no {kind} start found in {TRIES} tries; are the settings consistent?")


def make_starts(
    arm: SimArm, episodes: int, first_seed: int = 1000, settings: HardSettings | None = None
) -> list[Start]:
    """The starts of seeds first_seed, first_seed + 1, ...: one per seed, so N episodes are N seeds."""
    return [make_start(arm, seed, settings) for seed in range(first_seed, first_seed + episodes)]


# ----------------------------------------------------------------------------------------------------------


def _try_start(
    arm: SimArm, seed: int, settings: HardSettings, kind: str, rng: np.random.Generator
) -> Start | None:
    """One attempt at a start; None when a draw does not fit (target unreachable, no room for an object)."""
    cfg = arm.config
    limit = cfg.pan_limit
    if kind == "unseen":
        pan = float(rng.uniform(settings.unseen_pan, limit)) * float(rng.choice([-1.0, 1.0]))
        side = math.copysign(1.0, pan)  # the target lies toward the middle: pan- when turned left (pan > 0)
    else:
        pan, side = float(rng.uniform(-limit, limit)), float(rng.choice([-1.0, 1.0]))
    span = settings.edge_offset if kind == "edge" else settings.outside_offset
    offset = side * float(rng.uniform(*span))

    arm.reset(seed, SceneSpec((), pan))  # the wrist camera's pose depends on the seed alone
    target_color = str(rng.choice(settings.targets))
    target = _object_at(arm, rng, target_color, offset, pan, cfg.object_reach)
    centered_pan = math.degrees(math.atan2(target.y, target.x)) / cfg.degrees_per_unit
    if abs(centered_pan) > limit - settings.limit_margin:
        return None

    if kind != "edge":  # out of view: not one pixel of it, however near and wide it stands
        arm.reset(seed, SceneSpec((target,), pan))
        if arm.wrist_pixels()[0] > 0:
            return None

    lead_in: tuple[int, ...] = ()
    pan_start = pan
    if kind == "lost":  # turn back toward the target until it is clearly in view: that is where it was seen
        toward = -side * cfg.pan_step  # offset > 0 (right) is centered by pan-
        for steps in range(1, 20):
            seen, visible = arm.offset_at(target.x, target.y, target.height / 2, pan + steps * toward)
            if visible and abs(seen) <= settings.seen_offset:
                pan_start = pan + steps * toward
                lead_in = (PAN_PLUS if toward < 0 else PAN_MINUS,) * steps
                break
        else:
            return None
        if abs(pan_start) > limit:
            return None

    objects = [target]
    decoy = SIMILAR_HUE.get(target_color) if settings.decoy else None
    if decoy is not None:
        hidden = _hidden_decoy(arm, seed, rng, decoy, objects, pan, settings)
        if hidden is None:
            return None
        objects.append(hidden)
    others = [c for c in PALETTE if c not in (target_color, decoy)]
    chosen = [str(c) for c in rng.permutation(others)[: settings.distractors]]
    for color in chosen:
        placed = _free_object(arm, rng, color, objects)
        if placed is None:
            return None
        objects.append(placed)
    scene = SceneSpec(tuple(objects), pan_start)
    return Start(seed, kind, target_color, scene, lead_in, decoy, tuple(chosen))


def _shape(arm: SimArm, rng: np.random.Generator, color: str) -> tuple[tuple[int, int, int], float, float]:
    """Color (the palette's, jittered like the sim's own objects), radius and height of a new object."""
    jitter = rng.integers(-12, 13, size=3)
    rgb = tuple(int(c) for c in np.clip(np.array(PALETTE[color]) + jitter, 0, 255))
    return rgb, float(rng.uniform(*arm.config.object_radius)), float(rng.uniform(*arm.config.object_height))


def _object_at(
    arm: SimArm,
    rng: np.random.Generator,
    color: str,
    offset: float,
    pan: float,
    reach_range: tuple[float, float],
) -> SceneObject:
    """An object whose center shows at `offset` in the wrist view with the pan at `pan`."""
    rgb, radius, height = _shape(arm, rng, color)
    reach = float(rng.uniform(*reach_range))
    azimuth = _azimuth_for(arm, offset, reach, height / 2, pan)
    return SceneObject(color, rgb, reach * math.cos(azimuth), reach * math.sin(azimuth), radius, height)


def _azimuth_for(arm: SimArm, offset: float, reach: float, z: float, pan: float) -> float:
    """World azimuth (rad) at which a point `reach` from the pan axis shows at `offset` with the pan at `pan`.

    The offset falls monotonically as the azimuth turns left (robot/sim.py: pan+ moves content right), so a
    bisection over +-80 degrees around the heading finds it.
    """
    heading = math.radians(pan * arm.config.degrees_per_unit)
    lo, hi = heading - math.radians(80), heading + math.radians(80)  # offset(lo) > offset > offset(hi)
    for _ in range(50):
        mid = (lo + hi) / 2
        seen, _ = arm.offset_at(reach * math.cos(mid), reach * math.sin(mid), z, pan)
        lo, hi = (mid, hi) if seen > offset else (lo, mid)
    return (lo + hi) / 2


def _clear(candidate: SceneObject, objects: list[SceneObject]) -> bool:
    """Apart from every object by 2 cm, as robot/sim.py's own placement."""
    return all(
        math.hypot(candidate.x - o.x, candidate.y - o.y) > candidate.radius + o.radius + 0.02 for o in objects
    )


def _hidden_decoy(
    arm: SimArm,
    seed: int,
    rng: np.random.Generator,
    color: str,
    objects: list[SceneObject],
    pan: float,
    settings: HardSettings,
) -> SceneObject | None:
    """The similar-hue decoy: near the wrist view's center and under the arm in the base view at `pan`."""
    for _ in range(TRIES // 10):
        offset = float(rng.uniform(-settings.decoy_offset, settings.decoy_offset))
        decoy = _object_at(arm, rng, color, offset, pan, settings.decoy_reach)
        if not _clear(decoy, objects):
            continue
        arm.reset(seed, SceneSpec((decoy,), pan))
        if arm.base_occlusion()[0] >= settings.decoy_hidden:
            return decoy
    return None


def _free_object(
    arm: SimArm, rng: np.random.Generator, color: str, objects: list[SceneObject]
) -> SceneObject | None:
    """A distractor anywhere on the arc the wrist view sweeps (like the sim's own placement), clear of the
    others."""
    cfg = arm.config
    max_angle = math.radians(cfg.pan_limit * cfg.degrees_per_unit + cfg.object_arc_margin_deg)
    rgb, radius, height = _shape(arm, rng, color)
    for _ in range(TRIES):
        angle, reach = rng.uniform(-max_angle, max_angle), rng.uniform(*cfg.object_reach)
        candidate = SceneObject(
            color, rgb, float(reach * math.cos(angle)), float(reach * math.sin(angle)), radius, height
        )
        if _clear(candidate, objects):
            return candidate
    return None
