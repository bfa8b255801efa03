"""The pixel conventions of the contract: uint8 canvases, as a camera gives them; model tensors in [-1, 1];
which pixels count as dynamic.

Judging code (pinned): the judge hands a model uint8 contexts and scores the uint8 frames it gets back, and
the predictor converts between the two with these functions only. A model that rescales its inputs or
outputs does so inside its own code, where the judge sees the result in pixels.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

MID_GRAY = 128
"""The uint8 value of a blanked pixel: the nearest to 0.0 in model space (127.5)."""

DYNAMIC_THRESHOLD = 0.05
"""A pixel is dynamic when max over channels |last context - target| exceeds this share of the value range:
~13 gray levels, well above typical video-compression noise, so a still scene has few dynamic pixels."""


def to_tensor(canvases: np.ndarray | Tensor, device: torch.device | str = "cpu") -> Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    if isinstance(canvases, np.ndarray) and not canvases.flags.writeable:
        canvases = canvases.copy()  # a read-only memmap slice: torch wants memory it may write
    x = torch.as_tensor(canvases, device=device)
    return x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def to_uint8(x: Tensor) -> np.ndarray:
    """float (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3); values outside [-1, 1] are clipped.

    `to_uint8(to_tensor(u)) == u` for every uint8 value, so a model that returns its input unchanged gives
    back exactly the pixels it was given."""
    y = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return y.movedim(-3, -1).cpu().numpy()


def dynamic_mask(change: Tensor, channel_dim: int = -3, value_range: float = 2.0) -> Tensor:
    """Which pixels of `change` (the target minus the last context step) are dynamic: the judge's `dyn_mse`
    is scored on them, and a model may weight them in its loss. `value_range` is the span of the pictures'
    values (2 for model tensors in [-1, 1], 1 for [0, 1]); the channel dimension is kept, of size 1."""
    return change.abs().amax(channel_dim, keepdim=True) > DYNAMIC_THRESHOLD * value_range
