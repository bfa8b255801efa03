"""GPT world model on a tiny canvas: it learns, the action matters, the KV cache is exact, it is causal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.blocks import patchify
from models.canvas import CanvasConfig, build_many
from models.config import GPTConfig
from models.gpt import GPT
from models.vocab import JOINT_NAMES, NUM_ACTIONS, PAN_MINUS, PAN_PLUS
from models.world_model import to_tensor
from tests.helpers import train_on_batch

CANVAS = CanvasConfig(frame_width=16, frame_height=16, separator_width=4, motor_strip_height=4)
CONFIG = GPTConfig(width=32, depth=2, heads=2, patch=4, residual=False)
"""Absolute patches: whole-frame rolls of random blocks are easier to learn as patches than as changes."""
SHIFT = {PAN_PLUS: -4, PAN_MINUS: 4}  # pixels the target frames roll under each action; stay = 0


def action_canvases(contexts: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Every context under every action: the target frames are the context frames rolled by the action.

    Frames are smooth random images (4x4 noise upsampled by 4), so rolls by a patch are easy to see.
    Returns canvases (contexts * 3, 3, H, W) in [-1, 1] and actions (contexts * 3, 1).
    """
    rng = np.random.default_rng(seed)
    actions = np.tile(np.arange(NUM_ACTIONS), contexts)
    frames = {}
    for cam in CANVAS.cameras:
        coarse = rng.integers(0, 256, (contexts, 4, 4, 3), dtype=np.uint8)
        first = np.repeat(coarse.repeat(4, axis=1).repeat(4, axis=2), NUM_ACTIONS, axis=0)
        target = np.stack([np.roll(f, SHIFT.get(a, 0), axis=1) for f, a in zip(first, actions, strict=True)])
        frames[cam] = np.stack([first, target], axis=1)
    states = np.zeros((len(actions), 2, len(JOINT_NAMES)))
    states[:, 1, 0] = [SHIFT.get(a, 0) * 5.0 for a in actions]  # the pan joint moves with the action
    canvases = build_many(CANVAS, frames, states, states[:, 0], actions[:, None])
    return to_tensor(canvases), torch.as_tensor(actions)[:, None]


@pytest.fixture(scope="module")
def trained() -> tuple[GPT, torch.Tensor, torch.Tensor, list[float]]:
    """A tiny GPT overfitted on 2 contexts x 3 actions; returns it, the batch and the loss curve."""
    torch.manual_seed(0)
    model = GPT(CONFIG, CANVAS)
    canvases, actions = action_canvases(contexts=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = train_on_batch(model, optimizer, canvases, actions, steps=300)
    return model.eval(), canvases, actions, losses


def test_overfits_one_batch(trained):
    _, _, _, losses = trained
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0] / 10, f"loss went {losses[0]:.4f} -> {losses[-1]:.4f}"


def test_predict_shapes_and_determinism():
    torch.manual_seed(1)
    model = GPT(CONFIG, CANVAS).eval()
    torch.nn.init.normal_(model.final.linear.weight, std=0.05)  # a non-constant output
    context, _ = action_canvases(contexts=1)
    actions = torch.tensor([[0, 1, 2, 1]] * 3)
    out = model.predict(context, actions, seed=3)
    assert out.shape == (3, 4, 3, 36, 16)
    assert out.min() >= -1 and out.max() <= 1
    assert torch.equal(out, model.predict(context, actions, seed=4))
    # the target region and the last separator of the context are ignored: the action paints it
    scrambled = context.clone()
    scrambled[..., 16:] = torch.rand_like(scrambled[..., 16:]) * 2 - 1
    assert torch.allclose(model.predict(scrambled, actions), out, atol=1e-6)


def test_actions_change_the_prediction_and_the_true_one_is_nearest(trained):
    """The first generated patch sees only the context, the separator and the action: under the true
    action it is the true patch, and the three actions give three different frames.

    Only the first patch is compared with the truth: free-running generation feeds its own outputs back, and
    on 6 memorized canvases a 1e-4 error in one patch grows to ~0.5 by the eighth (exposure bias, issue 16);
    which action's whole frame lands nearest then depends on the thread count's rounding. Whole-frame
    action accuracy is the judge's cf_acc on real canvases.
    """
    model, canvases, actions, _ = trained
    out = model.predict(canvases, torch.arange(NUM_ACTIONS).repeat(len(canvases), 1))
    truth = model.target_of(canvases)
    first = patchify(out.flatten(0, 1), CONFIG.patch)[:, 0].unflatten(0, out.shape[:2])  # (B, K, 3*p*p)
    errors = (first - patchify(truth, CONFIG.patch)[:, None, 0]).square().mean(dim=2)
    assert (errors.argmin(dim=1) == actions[:, 0]).all(), errors
    true_error = errors.gather(1, actions).squeeze(1)
    assert (true_error < 0.01).all(), errors
    spread = (out[:, :, None] - out[:, None]).abs().mean(dim=(3, 4, 5))
    assert spread[:, ~torch.eye(NUM_ACTIONS, dtype=torch.bool)].min() > 0.05, spread


@pytest.mark.parametrize("rows", [1, 2, 100, None])
def test_block_decoding_with_the_kv_cache_matches_the_slow_reference_decode(rows: int | None):
    """The cached path must equal rerunning the full teacher-forced sequence per step (float64: no drift
    from rounding amplified through the steps): a row at a time (9 steps), 2 rows (5 steps, the last one
    shorter), and all rows in one step (the default, None)."""
    torch.manual_seed(2)
    model = GPT(CONFIG.model_copy(update={"rows_per_step": rows}), CANVAS).double().eval()
    assert len(model.steps) == {1: 9, 2: 5, 100: 1, None: 1}[rows]
    torch.nn.init.normal_(model.final.linear.weight, std=0.1)
    context, _ = action_canvases(contexts=2)
    context = context[::NUM_ACTIONS].double()
    actions = torch.tensor([[0, 1, 2], [2, 2, 0]])
    cached = model.predict(context, actions)
    assert cached.std() > 0.01
    torch.testing.assert_close(cached, model.predict_uncached(context, actions), atol=1e-10, rtol=0)


@pytest.mark.parametrize("rows", [1, 2])
def test_target_outputs_see_only_the_blocks_above(rows: int):
    torch.manual_seed(3)
    model = GPT(CONFIG.model_copy(update={"rows_per_step": rows}), CANVAS).eval()
    torch.nn.init.normal_(model.final.linear.weight, std=0.05)
    canvases, actions = action_canvases(contexts=1)
    base = model(canvases, actions[:, -1])
    p, cells = CONFIG.patch, model.target_index
    for j in (0, 7, 20):
        row, col = divmod(int(cells[j]), model.grid.cols)
        changed = canvases.clone()
        changed[:, :, row * p : (row + 1) * p, col * p : (col + 1) * p] = 1.0
        assert not torch.equal(patchify(changed, p), patchify(canvases, p))
        out = model(changed, actions[:, -1])
        end = (j // model.shift + 1) * model.shift  # where the block holding patch j ends
        torch.testing.assert_close(out[:, :end], base[:, :end], atol=1e-6, rtol=0)  # its block, those above
        assert (out[:, j + model.shift] - base[:, j + model.shift]).abs().max() > 1e-4  # the patch below


def test_untrained_residual_model_predicts_the_last_frame():
    """With `residual`, the zero-initialized head makes the untrained model the copy-last-frame baseline."""
    torch.manual_seed(0)
    model = GPT(CONFIG.model_copy(update={"residual": True}), CANVAS).eval()
    context, _ = action_canvases(contexts=2)
    out = model.predict(context, torch.arange(NUM_ACTIONS).repeat(len(context), 1))
    last = context[
        ...,
        model.grid.separator_pixel_columns.start
        - CANVAS.frame_width : model.grid.separator_pixel_columns.start,
    ]
    assert torch.equal(out, last[:, None].expand_as(out))
