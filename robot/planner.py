"""Model-predictive control with a world model: center the wrist camera on an object.

Every control step: build the canvas of what the arm saw last (the same canvas the model was trained on),
predict the wrist frame after every action sequence of length H (3^H sequences, one batched `predict` per
depth, predictions fed back as the next context), score each by how far the target object would be from
the image center, and take the first action of the best. Repeat until the object is centered.

Two rules keep a learned model's imperfect frames from steering the arm (each found by reading the hard
benchmark's failures, see benchmarks/RESULTS.md):
- The target in a predicted frame is the largest blob of its color that one action can have moved it to
  (`target_offset(..., near=)`): predictions paint a similar-hue decoy partly in the target's hue, or leave
  scattered pixels of it, and a centroid over every such pixel sent the planner after them.
- A position inside the centered window costs nothing (`_cost`): with summed |offset| the best sequence
  stepped across the center and back (a pan moves the view ~0.25 half-widths, the window is 0.3 wide), so
  the arm never held still long enough to count as centered.

The target is found by color (HSV), by name (`red`, `green`, ... from robot.sim.PALETTE) or picked as the
largest object in view.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from models.canvas import CanvasConfig, build
from models.promoted import PromotedModel
from models.vocab import ACTION_NAMES, JOINT_NAMES, NUM_ACTIONS, STAY
from robot.sim import PALETTE, Observation

WRIST = "wrist"
HUE_TOLERANCE = 12  # OpenCV hue units (0..179)
MIN_SATURATION, MIN_VALUE = 150, 50
"""Objects are saturated (the sim's palette with its jitter and shading: 160-225 in OpenCV units, purple the
least); the sim's tables and room floors reach 140-170 at hues near red, orange and yellow (a dark wooden
table is saturation ~135 and hue 14: "orange"). At 90, 50 of 1136 frames of the hard centering benchmark's
scenes showed a target that was out of view; at 150 none did, none was missed, and a scene with a dark
wooden table still shows a few "red" table pixels about once in 2000 frames."""
MIN_PIXELS = 4  # fewer target pixels than this: the object is not in view
UNSEEN = 1.5  # the score of a predicted frame that does not show the target (worse than any visible offset)
MAX_SHIFT = 0.6
"""How far (half-widths) the target can move in the view in one action: a pan moves it ~0.25 (robot/sim.py,
SimConfig.pan_step), so a blob farther than this from where the target was is something else."""
WINDOW_SHARE = 0.9
"""The share of the success tolerance that costs nothing: inside it the planner has no reason to move, a
little inside the tolerance so that sensor noise at its edge does not count as centered."""


def _hue(rgb: tuple[int, int, int]) -> int:
    return int(cv2.cvtColor(np.uint8([[rgb]]), cv2.COLOR_RGB2HSV)[0, 0, 0])


TARGET_HUES = {name: _hue(rgb) for name, rgb in PALETTE.items()}


def _hue_distance(hue: np.ndarray, target: int) -> np.ndarray:
    distance = np.abs(hue - target)
    return np.minimum(distance, 180 - distance)  # hue is circular: red sits at both ends


def target_mask(frames: np.ndarray, color: str) -> np.ndarray:
    """(..., H, W) bool: saturated pixels whose hue is nearest `color`'s among the palette (and close to it).

    Nearest, not just near: orange lies between red and yellow, and a fixed tolerance alone would count it
    as both.
    """
    flat = frames.reshape(-1, *frames.shape[-3:])
    hsv = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2HSV) for f in flat]).reshape(frames.shape)
    hue, sat, val = hsv[..., 0].astype(int), hsv[..., 1], hsv[..., 2]
    distances = np.stack([_hue_distance(hue, h) for h in TARGET_HUES.values()])
    nearest = np.argmin(distances, axis=0) == list(TARGET_HUES).index(color)
    close = _hue_distance(hue, TARGET_HUES[color]) <= HUE_TOLERANCE
    return nearest & close & (sat >= MIN_SATURATION) & (val >= MIN_VALUE)


def _blob_offset(mask: np.ndarray, near: float) -> float:
    """The offset of the largest blob in one (H, W) mask whose centroid lies within MAX_SHIFT of `near`
    (any blob when `near` is NaN); NaN when there is none of MIN_PIXELS pixels."""
    count, _, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    half = mask.shape[1] / 2
    offsets = (centroids[1:, 0] + 0.5 - half) / half  # label 0 is the background
    areas = stats[1:, cv2.CC_STAT_AREA]
    allowed = areas >= MIN_PIXELS
    if not np.isnan(near):
        allowed &= np.abs(offsets - near) <= MAX_SHIFT
    if count <= 1 or not allowed.any():
        return float("nan")
    return float(offsets[np.argmax(np.where(allowed, areas, -1))])


def target_offset(frames: np.ndarray, color: str, near: np.ndarray | float | None = None) -> np.ndarray:
    """(...,) horizontal offset of the target from the image center, in half-widths; NaN when the target is
    not in view. Same unit as SimArm.object_offsets, so sim ground truth compares directly.

    The target is the largest connected blob of its color (a few stray pixels of a similar hue elsewhere do
    not pull it); with `near` (broadcast to the frames' leading shape, NaN: anywhere), the largest within
    MAX_SHIFT of that offset, i.e. where one action can have moved the target seen there.
    """
    mask = target_mask(frames, color)
    lead = frames.shape[:-3]
    nears = np.broadcast_to(np.nan if near is None else np.asarray(near, dtype=float), lead).reshape(-1)
    flat = mask.reshape(-1, *mask.shape[-2:])
    return np.array([_blob_offset(m, n) for m, n in zip(flat, nears, strict=True)]).reshape(lead)


def largest_object(frame: np.ndarray) -> str | None:
    """The palette color covering the most of `frame`, or None when no object is in view."""
    areas = {name: int(target_mask(frame, name).sum()) for name in PALETTE}
    name, area = max(areas.items(), key=lambda kv: kv[1])
    return name if area >= MIN_PIXELS else None


@dataclass
class PlannerConfig:
    horizon: int = 2
    tolerance: float = 0.15  # centered when |offset| <= this (half-widths: 0.15 of 64 px is about 5 px)
    seed: int = 0


@dataclass
class Plan:
    action: int
    scores: np.ndarray  # (3^H,) each sequence's summed `Planner._cost`, lowest best
    sequences: np.ndarray  # (3^H, H) action ids
    first: np.ndarray  # (3, H_frame, W_frame, 3) the predicted wrist frame after each first action
    offset_now: float  # the target's offset in the current frame (NaN when out of view)
    ms: float  # planning time

    @property
    def predicted(self) -> np.ndarray:
        """The predicted wrist frame after the chosen first action."""
        return self.first[self.action]

    @property
    def blind(self) -> bool:
        """No predicted frame of any sequence shows the target: the scores cannot tell the actions apart, and
        the tie-break would stay still forever. The caller should turn toward the target instead."""
        return bool(self.scores.min() >= UNSEEN * self.sequences.shape[1])


@dataclass
class Memory:
    """What the canvas needs from the past: observations at action boundaries and the actions between."""

    history: int
    steps: deque = field(default_factory=deque)  # (frames, state) at the last `history` boundaries
    actions: deque = field(default_factory=deque)  # actions between consecutive kept steps
    prev_state: np.ndarray | None = None  # one boundary before the oldest kept step

    def push(self, observation: Observation, action_before: int | None) -> None:
        if len(self.steps) == self.history:
            self.prev_state = self.steps[0][1]
            self.steps.popleft()
            if self.actions:
                self.actions.popleft()
        if action_before is not None and self.steps:
            self.actions.append(action_before)
        self.steps.append((observation.frames, np.asarray(observation.state, dtype=np.float64)))

    @property
    def ready(self) -> bool:
        return len(self.steps) == self.history


class Planner:
    """Chooses one discrete action per control step with a promoted world model."""

    def __init__(
        self, promoted: PromotedModel, target: str | None, config: PlannerConfig | None = None
    ) -> None:
        self.promoted = promoted
        self.model = promoted.model
        self.canvas: CanvasConfig = CanvasConfig.model_validate(promoted.config.canvas.model_dump())
        if WRIST not in self.canvas.cameras:
            raise ValueError(
                f"the model's canvas has no {WRIST!r} camera; cameras: {list(self.canvas.cameras)}"
            )
        if target is not None and target not in PALETTE:
            raise ValueError(f"unknown target color {target!r}; colors: {', '.join(PALETTE)}")
        self.target = target
        self.config = config or PlannerConfig()
        self.layout = self.canvas.layout
        self.sequences = np.array(list(itertools.product(range(NUM_ACTIONS), repeat=self.config.horizon)))
        self.memory = Memory(self.canvas.history)
        self.device = next(self.model.parameters()).device

    def observe(self, observation: Observation, action_before: int | None = None) -> None:
        """Record the observation at an action boundary (and the action that led to it)."""
        if self.target is None:
            self.target = largest_object(self._resized(observation.frames[WRIST]))
        self.memory.push(observation, action_before)

    def offset_now(self) -> float:
        """The target's offset in the last observed wrist frame (resized as the model sees it); NaN when it
        is out of view."""
        if self.target is None or not self.memory.steps:
            return float("nan")
        frame = self._resized(self.memory.steps[-1][0][WRIST])
        return float(target_offset(frame[None], self.target)[0])

    def _resized(self, frame: np.ndarray) -> np.ndarray:
        size = (self.canvas.frame_width, self.canvas.frame_height)
        return frame if frame.shape[1::-1] == size else cv2.resize(frame, size, interpolation=cv2.INTER_AREA)

    def context(self) -> np.ndarray:
        """The current canvas (uint8), the target step a copy of the last frame: predict blanks it anyway."""
        steps = list(self.memory.steps)
        while len(steps) < self.canvas.history:  # at the start: repeat the first observation
            steps.insert(0, steps[0])
        actions = list(self.memory.actions)
        actions = [STAY] * (self.canvas.history - 1 - len(actions)) + actions + [STAY]
        frames = {
            cam: np.stack([self._resized(f[cam]) for f, _ in steps] + [self._resized(steps[-1][0][cam])])
            for cam in self.canvas.cameras
        }
        states = np.stack([s for _, s in steps] + [steps[-1][1]])
        joints = [JOINT_NAMES.index(j) for j in self.canvas.joints]
        prev = self.memory.prev_state if self.memory.prev_state is not None else steps[0][1]
        return build(self.canvas, frames, states[:, joints], np.array(actions), prev[joints])

    def _predicted_offsets(self, wrist: np.ndarray, near: np.ndarray) -> np.ndarray:
        """The target's offset in each predicted wrist frame, looked for near where it was one action before
        (`near`, one per frame: the parent sequence's offset, NaN when the parent did not show it)."""
        if self.target is None:
            return np.full(len(wrist), np.nan)
        return target_offset(wrist, self.target, near=near)

    def _cost(self, offsets: np.ndarray) -> np.ndarray:
        """Per predicted frame: how far the target is outside the centered window (0 inside it), or UNSEEN
        when the frame does not show it."""
        window = WINDOW_SHARE * self.config.tolerance
        return np.where(np.isnan(offsets), UNSEEN, np.maximum(np.abs(offsets) - window, 0.0))

    def _blank(self, x: torch.Tensor) -> torch.Tensor:
        """The judge's protocol: the model never sees a target step or the last separator."""
        x[..., self.layout.target_columns] = 0.0
        x[..., self.layout.separator_columns(self.canvas.history - 1)] = 0.0
        return x

    def _shift(self, contexts: np.ndarray, predicted: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Next contexts: each step moves one left, the prediction becomes the last context step."""
        out = contexts.copy()
        lay, h = self.layout, self.canvas.history
        for step in range(h - 1):
            out[:, :, lay.step_columns(step)] = contexts[:, :, lay.step_columns(step + 1)]
        for sep in range(h - 2):
            out[:, :, lay.separator_columns(sep)] = contexts[:, :, lay.separator_columns(sep + 1)]
        if h >= 2:
            out[:, :, lay.separator_columns(h - 2)] = lay.action_color(actions)[:, None, None, :]
        out[:, :, lay.step_columns(h - 1)] = predicted
        return out

    @torch.inference_mode()
    def plan(self) -> Plan:
        """The first action of the sequence whose predicted final wrist frame centers the target best."""
        start = time.perf_counter()
        rows = self.layout.camera_rows(WRIST)
        current = self.context()
        last = self.layout.frame(current, self.canvas.history - 1, WRIST)
        now = float(target_offset(last[None], self.target)[0]) if self.target else float("nan")
        contexts = current[None]  # (N, H, W, 3); N = 3^depth sequences so far
        near = np.array([now])  # (N,) the target's offset at the end of each sequence so far
        scores = np.zeros(len(self.sequences))
        first = None
        for depth in range(self.config.horizon):
            x = self._blank(self.promoted.to_tensor(contexts, self.device))
            actions = torch.arange(NUM_ACTIONS, device=self.device).expand(len(contexts), -1)
            pred = self.promoted.to_uint8(self.model.predict(x, actions, seed=self.config.seed + depth))
            pred = pred.reshape(-1, *pred.shape[2:])  # (N * 3, H, W_target, 3), sequence-major
            offsets = self._predicted_offsets(pred[:, rows], np.repeat(near, NUM_ACTIONS))
            # every step of a sequence counts: an object held centered beats one swept past the center
            scores += np.repeat(self._cost(offsets), NUM_ACTIONS ** (self.config.horizon - depth - 1))
            near = np.where(np.isnan(offsets), np.repeat(near, NUM_ACTIONS), offsets)
            if depth == 0:
                first = pred
            if depth + 1 < self.config.horizon:
                parents = np.repeat(contexts, NUM_ACTIONS, axis=0)
                contexts = self._shift(parents, pred, np.tile(np.arange(NUM_ACTIONS), len(contexts)))
        best = int(np.argmin(scores + 1e-6 * (self.sequences[:, 0] != STAY)))  # ties: prefer staying still
        action = int(self.sequences[best, 0])
        return Plan(
            action=action,
            scores=scores,
            sequences=self.sequences,
            first=first[:, rows],
            offset_now=now,
            ms=(time.perf_counter() - start) * 1000,
        )


def describe(plan: Plan) -> str:
    return f"{ACTION_NAMES[plan.action]} (best score {plan.scores.min():.3f}, {plan.ms:.0f} ms)"
