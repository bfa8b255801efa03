"""Small synthetic canvases whose target depends on the action in a known way, for model tests.

Each scene is a smooth random image; the target frame is the context frame rolled right by `shift` px
under pan+, left under pan-, and unchanged under stay. A model that learns the dynamics must make its
predictions depend on the action.
"""

from __future__ import annotations

import numpy as np
import torch

from models.canvas import CanvasConfig, build_many
from models.vocab import NUM_ACTIONS, PAN_MINUS, PAN_PLUS

TINY_CANVAS = CanvasConfig(frame_width=16, frame_height=16, separator_width=4, motor_strip_height=4)


def rolled_scenes(n: int, config: CanvasConfig = TINY_CANVAS, shift: int = 4, seed: int = 0):
    """(canvases uint8 (n, H, W, 3), actions (n, 1)): context frame, action, target = rolled frame."""
    rng = np.random.default_rng(seed)
    h, w = config.frame_height, config.frame_width
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    actions = np.arange(n) % NUM_ACTIONS
    frames = {}
    for cam in config.cameras:
        base = np.empty((n, h, w, 3))
        for c in range(3):
            fx, fy, phase = rng.uniform(1, 3, n), rng.uniform(1, 3, n), rng.uniform(0, 6.3, n)
            base[..., c] = 0.5 + 0.4 * np.sin(
                2 * np.pi * (fx[:, None, None] * xx + fy[:, None, None] * yy) + phase[:, None, None]
            )
        context = (base * 255).astype(np.uint8)
        steps = np.where(actions == PAN_PLUS, shift, np.where(actions == PAN_MINUS, -shift, 0))
        target = np.stack([np.roll(f, s, axis=1) for f, s in zip(context, steps, strict=True)])
        frames[cam] = np.stack([context, target], axis=1)
    states = np.zeros((n, 2, len(config.joints)))
    states[:, 1, 0] = np.where(actions == PAN_PLUS, 5.0, np.where(actions == PAN_MINUS, -5.0, 0.0))
    canvases = build_many(config, frames, states, states[:, 0], actions[:, None])
    return canvases, actions[:, None]


def as_batch(canvases: np.ndarray, actions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    from models.world_model import to_tensor

    return to_tensor(canvases), torch.as_tensor(actions, dtype=torch.long)
