"""The contract every world model keeps, and the tensor form of canvases.

Evaluation, reports and the robot planner only ever call `loss` and `predict`, so a model the agent invents
plugs in as long as it subclasses `WorldModel`:

- `loss(canvases, actions)`: the per-canvas losses (B,) of a training batch of whole canvases; training
  minimizes their mean, and high-error sampling (models/train.py) reads each canvas's own. A scalar still
  trains, without high-error sampling.
- `predict(context, actions, seed)`: for B context canvases and K candidate actions each, the predicted
  target step (camera frames and motor strip) under every candidate: (B, K, 3, H, W_target). The target
  region of `context` is ignored; the last separator is painted from the action. A sampling model uses the
  same noise for all K candidates of a context (common random numbers), so candidates differ only by the
  action, and `seed` makes the prediction reproducible.

Tensors: canvases are float (B, 3, H, W) in [-1, 1]; `to_tensor` / `to_uint8` convert from / to the
uint8 (B, H, W, 3) arrays of the canvas cache. They live in `models/pixels.py` (pinned): the judge's
predictor converts with them, so they are the contract, not a model's choice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn

from models.blocks import Rope, rope_2d, sincos_2d
from models.canvas import CanvasConfig
from models.errors import ConfigError
from models.pixels import to_tensor as to_tensor  # the contract's conventions, here for model code
from models.pixels import to_uint8 as to_uint8
from models.vocab import ACTION_NAMES


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix products beat float32 on `device`: on CUDA, and on CPUs with bf16 instructions
    (AVX512-BF16, AMX); elsewhere a CPU emulates bf16, slower than float32."""
    if device.type == "cuda":
        return True
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own probes
    return device.type == "cpu" and any(getattr(torch.cpu, name, lambda: False)() for name in checks)


class CanvasGrid:
    """The canvas as a grid of patch tokens, split into what a model is given and what it predicts.

    - context: every token left of the last separator (context steps and earlier separators), raster order;
    - separator: the last separator's tokens, which carry the action being asked about;
    - target: the target step's tokens (camera frames and motor strip), raster order;
    - last_step: the last context step's tokens, cell for cell under the target's.
    Splitting the action off the context lets a model encode the context once and reuse it for every
    candidate action and every sampling step.
    """

    def __init__(self, canvas: CanvasConfig, patch: int) -> None:
        bad = canvas.sizes_not_divisible_by(patch)
        if bad:
            raise ConfigError(f"patch {patch} must divide every canvas size; not: {', '.join(bad)}")
        layout = canvas.layout
        self.patch = patch
        self.rows, self.cols = layout.height // patch, layout.width // patch
        col_of = np.arange(self.cols) * patch
        target = layout.target_columns
        separator = layout.separator_columns(canvas.history - 1)
        grid = np.arange(self.rows * self.cols).reshape(self.rows, self.cols)
        self.context_index = torch.as_tensor(grid[:, col_of < separator.start].ravel())
        self.separator_index = torch.as_tensor(
            grid[:, (col_of >= separator.start) & (col_of < separator.stop)].ravel()
        )
        self.target_index = torch.as_tensor(grid[:, col_of >= target.start].ravel())
        last = layout.step_columns(canvas.history - 1)
        self.last_step_index = torch.as_tensor(grid[:, (col_of >= last.start) & (col_of < last.stop)].ravel())
        """The last context step's tokens, aligned one to one with `target_index`: what the copy baseline
        predicts, and what residual models predict a change from."""
        self.target_cols = int((col_of >= target.start).sum())
        # Where each cell sits inside its step: frame-relative row and column, and which step or separator
        # it belongs to (step k -> 2k, separator k -> 2k + 1). Separator columns continue the frame's.
        segment, col_in = np.zeros(self.cols, dtype=np.int64), np.zeros(self.cols, dtype=np.int64)
        for k in range(layout.steps):
            cols = layout.step_columns(k)
            inside = (col_of >= cols.start) & (col_of < cols.stop)
            segment[inside], col_in[inside] = 2 * k, (col_of[inside] - cols.start) // patch
            if k < canvas.history:
                sep = layout.separator_columns(k)
                inside = (col_of >= sep.start) & (col_of < sep.stop)
                segment[inside] = 2 * k + 1
                col_in[inside] = canvas.frame_width // patch + (col_of[inside] - sep.start) // patch
        rows = np.repeat(np.arange(self.rows), self.cols)
        self.cell_row = torch.as_tensor(rows)
        self.cell_col = torch.as_tensor(np.tile(col_in, self.rows))
        self.cell_segment = torch.as_tensor(np.tile(segment, self.rows))
        self.segments = 2 * canvas.history + 1
        self.target_pixel_columns = target
        self.separator_pixel_columns = separator


class WorldModel(nn.Module, ABC):
    """Base class of world models: canvas geometry, action painting, and the two calls."""

    kind: str = "base"

    def __init__(self, config, canvas: CanvasConfig) -> None:
        super().__init__()
        self.config = config
        self.canvas = canvas
        self.grid = CanvasGrid(canvas, config.patch)
        colors = [canvas.action_colors[name] for name in ACTION_NAMES]
        self.register_buffer(
            "action_colors", torch.tensor(colors, dtype=torch.float32) / 127.5 - 1.0, persistent=False
        )
        grid, width = self.grid, config.width
        # The token groups as buffers, so they follow the model to its device.
        for name in ("context_index", "separator_index", "target_index", "last_step_index"):
            self.register_buffer(name, getattr(grid, name), persistent=False)
        if config.position == "sincos":
            self.register_buffer("pos", sincos_2d(grid.rows, grid.cols, width), persistent=False)
        else:
            self.step_embed = nn.Parameter(torch.randn(grid.segments, width) * 0.1)
            cos, sin = rope_2d(grid.cell_row, grid.cell_col, width // config.heads)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
            self.register_buffer("cell_segment", grid.cell_segment, persistent=False)

    def positions(self, index: Tensor) -> tuple[Tensor, Rope | None]:
        """Position terms of the canvas cells `index`: what to add to their tokens, and their rotary tables.

        sincos: an absolute embedding of the cell, no rotary. rope: a learned embedding of the cell's step
        (or separator), with the cell's place inside its frame given by rotary tables.
        """
        if self.config.position == "sincos":
            return self.pos[index], None
        return self.step_embed[self.cell_segment[index]], (self.rope_cos[index], self.rope_sin[index])

    # -- what every model does, one way ----------------------------------------------------------------

    def last_step(self, patches: Tensor) -> Tensor:
        """The last context step's patches (B, N_target, 3*p*p), cell for cell under the target's."""
        return patches[:, self.last_step_index]

    def residual_base(self, patches: Tensor) -> Tensor:
        """What the network's target output is added to, (B, N_target, 3*p*p): with `residual` the last
        context step (the model predicts a change, and untrained it is the copy baseline), else zeros."""
        last = self.last_step(patches)
        return last if self.config.residual else torch.zeros_like(last)

    def separator_patches(self, actions: Tensor) -> Tensor:
        """The last separator's patches painted in each action's color, (N, N_separator, 3*p*p): what
        `paint_action` then `patchify` would give, without a canvas."""
        p = self.config.patch
        colors = self.action_colors[actions]  # (N, 3)
        patch = colors[:, :, None].expand(-1, -1, p * p).reshape(len(actions), 1, 3 * p * p)
        return patch.expand(-1, len(self.separator_index), -1)

    def paint_action(self, canvases: Tensor, actions: Tensor) -> Tensor:
        """Canvases with the last separator set to the color of `actions` (B,); returns a new tensor."""
        out = canvases.clone()
        cols = self.grid.separator_pixel_columns
        out[:, :, :, cols] = self.action_colors[actions][:, :, None, None]
        return out

    def target_of(self, canvases: Tensor) -> Tensor:
        """The target step region (B, 3, H, W_target)."""
        return canvases[..., self.grid.target_pixel_columns]

    def check_actions(self, context: Tensor, actions: Tensor) -> tuple[int, int]:
        """(B, K) of a `predict` call; one line naming the shapes when `actions` is not (B, K) ids."""
        if actions.dim() != 2 or actions.shape[0] != context.shape[0]:
            raise ValueError(
                f"actions must be (B={context.shape[0]}, K) candidate ids, got {tuple(actions.shape)}"
            )
        return actions.shape[0], actions.shape[1]

    def predicts_in_bf16(self) -> bool:
        """Whether predictions run in bf16: `inference_bf16` on a device where bf16 is fast (`fast_bf16`)."""
        return self.config.inference_bf16 and fast_bf16(next(self.parameters()).device)

    def for_inference(self) -> WorldModel:
        """This model in eval mode, ready to predict: with `inference_bf16` on a device with fast bf16 its
        parameters are cast to bf16 once, here, rather than by autocast on every call, and the activations
        between layers stay bf16 instead of going back and forth (27 DiT predictions in 0.8-0.9x the time,
        benchmarks/RESULTS.md; a few percent of predicted pixel values move by a uint8 level or two).
        Buffers (rotary tables, action colors) stay float32. For a loaded run (`load_run`): a model that
        trains keeps float32 weights."""
        self.eval()
        if self.predicts_in_bf16():
            for param in self.parameters():
                param.data = param.data.to(torch.bfloat16)
        return self

    @contextmanager
    def eval_mode(self) -> Iterator[None]:
        """Predicting: dropout off, whatever mode the caller left the model in, and bf16 autocast where it
        pays (`predicts_in_bf16`)."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        try:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.predicts_in_bf16()):
                yield
        finally:
            self.train(was_training)

    @abstractmethod
    def loss(self, canvases: Tensor, actions: Tensor) -> Tensor:
        """Per-canvas training losses (B,) of a batch: canvases (B, 3, H, W), actions (B, history)."""

    @abstractmethod
    def predict(self, context: Tensor, actions: Tensor, seed: int | None = None) -> Tensor:
        """Target step (B, K, 3, H, W_target) for B contexts under K candidate actions (module docstring)."""

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
