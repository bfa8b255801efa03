"""Where to turn while the target is out of the wrist view: back toward where it was last seen, else a sweep.

A world model plans toward what the wrist camera shows. With the target out of view every predicted frame
scores the same (unseen), and the planner's tie-break (stay still) would hold forever, so the world-model
policy hands each such step to this search. It uses observations only, as the real arm would: the target's
offset in the wrist frame (NaN when not in view) and the measured pan position.

- Seen before: turn toward the side it was last seen on (offset > 0 is right of center, and pan- moves the
  view's content left, robot/sim.py). One action moves the view by about a quarter of its half-width, so an
  object cannot cross the view between two frames unseen: the side it was last seen on is the side it is on.
- Never seen: sweep, first toward the middle of the pan range (normalized 0): from near one end of the range
  most of the arc the arm can center lies that way, and from the middle either way is as good.
- A pan action that no longer moves the measured pan has hit a limit: turn around and sweep the other way,
  forgetting the last-seen side (the object was moved, or cannot be centered from that side).
"""

from __future__ import annotations

import math

from models.vocab import PAN_MINUS, PAN_PLUS

STUCK_UNITS = 1.0
"""A pan action that moved the measured pan less than this (normalized units) hit a limit. One action moves it
4.8 units (SimConfig.pan_step, the real arm's default too) and the sensor noise is ~0.1."""


class Search:
    """Remembers where the target was last seen and where a sweep is heading; `action` says where to turn."""

    def __init__(self) -> None:
        self.last_seen: float | None = None  # the target's offset when last in view
        self.sweep: int | None = None  # PAN_PLUS or PAN_MINUS while sweeping
        self.pan: float | None = None  # measured pan at the last observation

    def observe(self, offset: float, pan: float, action_before: int | None = None) -> None:
        """Record an observation at an action boundary: the target's offset (NaN: not in view), the measured
        pan, and the action that led here."""
        turned = action_before in (PAN_PLUS, PAN_MINUS)
        if turned and self.pan is not None and abs(pan - self.pan) < STUCK_UNITS:
            self.last_seen = None
            self.sweep = PAN_MINUS if action_before == PAN_PLUS else PAN_PLUS
        self.pan = pan
        if not math.isnan(offset):
            self.last_seen, self.sweep = offset, None

    def action(self) -> int:
        """The pan action that searches: toward the last-seen side, else the sweep's direction."""
        if self.last_seen is not None:
            return PAN_MINUS if self.last_seen > 0 else PAN_PLUS
        if self.sweep is None:
            self.sweep = PAN_MINUS if (self.pan or 0.0) > 0 else PAN_PLUS
        return self.sweep
