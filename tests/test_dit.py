"""The DiT world model on tiny configs: it learns, it is deterministic, it conditions on the action."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from models.blocks import Attention
from models.config import DiTConfig, load_config
from models.dit import DiT
from models.errors import ConfigError
from models.pixels import dynamic_mask
from models.world_model import fast_bf16
from tests.helpers import ROOT, train_on_batch
from tests.synthetic import TINY_CANVAS, as_batch, rolled_scenes

TINY = DiTConfig(patch=4, width=64, depth=2, heads=4, sample_steps=1)


def fixed_noise_loss(model: DiT, canvases: torch.Tensor, actions: torch.Tensor) -> float:
    """The training loss with the same noise and noise levels every time: comparable before and after."""
    torch.manual_seed(123)
    with torch.no_grad():
        return model.loss(canvases.repeat(8, 1, 1, 1), actions.repeat(8, 1)).mean().item()


def trained_dit(steps: int = 300, config: DiTConfig = TINY, seed: int = 0) -> tuple[DiT, tuple[float, float]]:
    """A tiny DiT overfit on 6 rolled scenes; returns it and its fixed-noise loss before and after."""
    torch.manual_seed(seed)
    model = DiT(config, TINY_CANVAS)
    canvases, actions = as_batch(*rolled_scenes(6))
    before = fixed_noise_loss(model, canvases, actions)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    torch.manual_seed(seed)
    train_on_batch(model, optimizer, canvases, actions, steps)
    return model.eval(), (before, fixed_noise_loss(model, canvases, actions))


@pytest.fixture(scope="module")
def overfit() -> tuple[DiT, tuple[float, float]]:
    return trained_dit()


def test_loss_falls_when_overfitting_a_batch(overfit):
    _, (before, after) = overfit
    assert after < before / 4, (before, after)


def test_predict_shape_determinism_and_common_noise():
    torch.manual_seed(0)
    model = DiT(TINY.model_copy(update={"sample_steps": 3}), TINY_CANVAS).eval()
    torch.nn.init.normal_(model.final.linear.weight, std=0.05)  # an untrained model predicts flat gray
    canvases, _ = as_batch(*rolled_scenes(2))
    actions = torch.tensor([[0, 1, 1], [2, 2, 0]])
    a = model.predict(canvases, actions, seed=7)
    assert a.shape == (2, 3, 3, 16 * 2 + 4, 16)
    assert torch.equal(a, model.predict(canvases, actions, seed=7))
    assert not torch.equal(a, model.predict(canvases, actions, seed=8))
    # the same action twice in one call sees the same noise: identical predictions
    assert torch.equal(a[0, 1], a[0, 2]) and torch.equal(a[1, 0], a[1, 1])
    # the target region of the context input is ignored
    scrambled = canvases.clone()
    scrambled[..., model.grid.target_pixel_columns] = torch.rand_like(
        scrambled[..., model.grid.target_pixel_columns]
    )
    assert torch.equal(a, model.predict(scrambled, actions, seed=7))


def test_one_step_from_pure_noise_predicts_the_same_whatever_the_noise():
    """At t = 1 the noisy patch carries nothing about the target, and the network is shown zeros in its
    place: a one-step prediction does not vary with the seed (with more steps it does: the test above)."""
    torch.manual_seed(0)
    model = DiT(TINY, TINY_CANVAS).eval()
    torch.nn.init.normal_(model.final.linear.weight, std=0.05)  # untrained, it would copy the last frame
    canvases, _ = as_batch(*rolled_scenes(2))
    actions = torch.tensor([[0, 1, 2], [2, 2, 0]])
    assert torch.equal(model.predict(canvases, actions, seed=7), model.predict(canvases, actions, seed=8))


def test_predictions_follow_the_action_after_training(overfit):
    model, _ = overfit
    canvases, actions = as_batch(*rolled_scenes(6))
    with torch.inference_mode():
        predictions = model.predict(canvases, torch.arange(3).repeat(6, 1), seed=0)
    truth = model.target_of(canvases)
    distance = ((predictions - truth[:, None]) ** 2).mean(dim=(2, 3, 4))  # (samples, actions)
    assert (distance.argmin(dim=1) == actions[:, 0]).all()
    spread = ((predictions[:, 1] - predictions[:, 2]) ** 2).mean()
    assert spread > 10 * distance.gather(1, actions).mean()


def test_flow_prediction_trains_too():
    _, (before, after) = trained_dit(steps=150, config=TINY.model_copy(update={"prediction": "flow"}))
    assert after < before / 2, (before, after)


def test_patch_must_divide_the_canvas():
    with pytest.raises(ConfigError, match="separator_width=4"):
        DiT(TINY.model_copy(update={"patch": 8}), TINY_CANVAS)


def test_more_than_one_sampling_step_needs_training_below_pure_noise(tmp_path: Path):
    """The baseline trains only at t = 1 (pure_noise_fraction 1.0): asking it for 2 sampling steps is a
    config error naming the field, not a model that samples from inputs it never saw."""
    baseline = (ROOT / "experiments/dit.toml").read_text()
    assert load_config(ROOT / "experiments/dit.toml").model.pure_noise_fraction == 1.0
    two_steps = tmp_path / "dit.toml"
    two_steps.write_text(baseline.replace("sample_steps = 1", "sample_steps = 2"))
    with pytest.raises(ConfigError, match="model.dit: .*sample_steps 2 needs pure_noise_fraction below 1"):
        load_config(two_steps)
    refining = baseline.replace("pure_noise_fraction = 1.0", "pure_noise_fraction = 0.9")
    two_steps.write_text(refining.replace("sample_steps = 1", "sample_steps = 2"))
    assert load_config(two_steps).model.sample_steps == 2


def test_adaln_zero_makes_the_untrained_model_the_copy_baseline():
    """Every block's modulation and the output head start at zero: each block is the identity on its tokens
    and, with `residual`, the untrained DiT predicts the last context step exactly, under every action."""
    torch.manual_seed(0)
    model = DiT(TINY, TINY_CANVAS).eval()
    for layer in [block.ada[-1] for block in model.blocks] + [model.final.ada[-1], model.final.linear]:
        assert not layer.weight.any() and not layer.bias.any()
    canvases, _ = as_batch(*rolled_scenes(2))
    out = model.predict(canvases, torch.arange(3).repeat(len(canvases), 1), seed=0)
    last = model.grid.separator_pixel_columns.start
    expected = canvases[..., last - TINY_CANVAS.frame_width : last]
    assert torch.equal(out, expected[:, None].expand_as(out))


def test_dynamic_weight_counts_each_changed_pixel_1_plus_w_times():
    """With `dynamic_weight` w, a canvas's loss weighs each target pixel-channel whose pixel is dynamic (the
    judge's rule, `dynamic_mask`, on the picture) 1 + w times, normalized by the weights' sum. The untrained
    residual DiT outputs zeros, so its loss is the squared change from the last step, computed here on the
    pictures; a mask taken over the wrong channels or cells of the patches gives other numbers."""
    canvases, actions = as_batch(*rolled_scenes(4))
    layout = TINY_CANVAS.layout
    last = layout.step_columns(TINY_CANVAS.history - 1)
    change = canvases[..., layout.target_columns] - canvases[..., last]
    dynamic = dynamic_mask(change, channel_dim=1).expand_as(change).float()
    assert 0.05 < dynamic.mean() < 0.95  # the rolled scenes have both kinds of pixel
    for w in (0.0, 3.0):
        torch.manual_seed(0)
        model = DiT(TINY.model_copy(update={"dynamic_weight": w, "pure_noise_fraction": 1.0}), TINY_CANVAS)
        weight = 1 + w * dynamic
        expected = (change.square() * weight).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3))
        with torch.no_grad():
            assert torch.allclose(model.loss(canvases, actions), expected, rtol=1e-5), w
    plain = change.square().mean(dim=(1, 2, 3))
    moving = plain > 0  # canvases whose action moved the camera: their weighted loss is another number
    assert moving.sum() >= 2 and (expected[moving] > 1.05 * plain[moving]).all()


def test_qk_norm_is_an_option_of_the_attention_that_uses_it():
    """qk-norm normalizes each head's keys (and queries) to unit RMS; off, the weights are as before, so a
    model that does not ask for it loads its old checkpoints."""
    torch.manual_seed(0)
    x = 50 * torch.randn(2, 7, 32)
    with torch.no_grad():
        _, (keys, _) = Attention(32, 2, qk_norm=True)(x)
        _, (plain, _) = Attention(32, 2)(x)
    assert torch.allclose(keys.square().mean(dim=-1).sqrt(), torch.ones(2, 2, 7), atol=1e-3)
    assert plain.square().mean(dim=-1).sqrt().min() > 2  # unnormalized keys grow with the input
    assert sorted(Attention(32, 2).state_dict()) == ["proj.bias", "proj.weight", "qkv.bias", "qkv.weight"]


def test_predictions_in_bf16_where_it_pays_stay_within_a_bf16_rounding_of_float32(overfit):
    """`inference_bf16` predicts under bf16 autocast on hardware with fast bf16 (`fast_bf16`), and in plain
    float32 elsewhere or when turned off."""
    model, _ = overfit
    canvases, _ = as_batch(*rolled_scenes(2))
    actions = torch.arange(3).repeat(len(canvases), 1)
    on = model.predict(canvases, actions, seed=0)
    model.config = model.config.model_copy(update={"inference_bf16": False})
    try:
        off = model.predict(canvases, actions, seed=0)
    finally:
        model.config = model.config.model_copy(update={"inference_bf16": True})
    assert on.dtype == off.dtype == torch.float32
    if fast_bf16(torch.device("cpu")):
        assert not torch.equal(on, off) and (on - off).abs().max() < 0.05
    else:
        assert torch.equal(on, off)


def test_a_model_made_ready_to_predict_keeps_bf16_weights_where_it_predicts_in_bf16(overfit):
    """`for_inference` (what `load_run` returns) casts the parameters to bf16 once where predictions run under
    bf16 autocast anyway; buffers stay float32, predictions stay float32 and within a bf16 rounding."""
    model, _ = overfit
    canvases, _ = as_batch(*rolled_scenes(2))
    actions = torch.arange(3).repeat(len(canvases), 1)
    fast = fast_bf16(torch.device("cpu"))
    ready = copy.deepcopy(model).for_inference()
    assert not ready.training
    assert {p.dtype for p in ready.parameters()} == {torch.bfloat16 if fast else torch.float32}
    assert {b.dtype for b in ready.buffers() if b.is_floating_point()} == {torch.float32}
    off = copy.deepcopy(model)
    off.config = off.config.model_copy(update={"inference_bf16": False})
    assert {p.dtype for p in off.for_inference().parameters()} == {torch.float32}
    autocast, cast = model.predict(canvases, actions, seed=0), ready.predict(canvases, actions, seed=0)
    assert cast.dtype == torch.float32
    if fast:
        assert not torch.equal(cast, autocast) and (cast - autocast).abs().max() < 0.05
    else:
        assert torch.equal(cast, autocast)
