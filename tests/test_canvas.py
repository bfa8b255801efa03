"""Canvas layout and pixels, checked exactly against hand-computed positions and gray levels."""

import numpy as np
import pytest
from pydantic import ValidationError

from models.canvas import IMAGE, PAD, SEPARATOR, STRIP, VELOCITY_ZERO_GRAY, CanvasConfig, build, build_many
from models.vocab import ACTION_COLORS, JOINT_NAMES, PAN_MINUS, PAN_PLUS, STAY


def random_frames(config: CanvasConfig, steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (steps, config.frame_height, config.frame_width, 3)
    return {cam: rng.integers(0, 256, shape, dtype=np.uint8) for cam in config.cameras}


def test_default_layout_geometry():
    config = CanvasConfig()
    layout = config.layout
    # two 64 px steps and one 8 px separator side by side; two 64 px cameras and an 8 px strip stacked
    assert layout.shape == (136, 136, 3)
    assert layout.step_columns(0) == slice(0, 64)
    assert layout.separator_columns(0) == slice(64, 72)
    assert layout.target_columns == slice(72, 136)
    assert layout.context_columns == slice(0, 72)
    assert layout.camera_rows("wrist") == slice(0, 64)
    assert layout.camera_rows("base") == slice(64, 128)
    assert layout.strip_rows == slice(128, 136)
    assert layout.patch_width == 64 // 12


def test_region_map_counts():
    config = CanvasConfig(history=2)
    layout = config.layout
    counts = np.bincount(layout.regions.ravel(), minlength=4)
    steps, fw, fh, sw, sh = 3, 64, 64, 8, 8
    assert counts[IMAGE] == steps * 2 * fh * fw
    assert counts[SEPARATOR] == 2 * sw * (2 * fh + sh)
    assert counts[STRIP] == steps * sh * 12 * layout.patch_width
    assert counts[PAD] == steps * sh * (fw - 12 * layout.patch_width)
    assert layout.target_image_mask.sum() == 2 * fh * fw
    assert layout.target_image_mask[:128, 144:].all()


def test_build_places_frames_separators_and_motor_patches():
    config = CanvasConfig(history=2)
    layout = config.layout
    frames = random_frames(config, steps=3)
    states = np.zeros((3, len(JOINT_NAMES)))
    states[:, 0] = [-50.0, 0.0, 30.0]  # shoulder_pan pans right through the steps
    states[:, 5] = [10.0, 10.0, 90.0]  # gripper, normalized in [0, 100]
    prev = states[0].copy()
    prev[0] = -60.0
    canvas = build(config, frames, states, [PAN_PLUS, STAY], prev_state=prev)

    assert canvas.dtype == np.uint8 and canvas.shape == layout.shape
    for step in range(3):
        for cam in config.cameras:
            np.testing.assert_array_equal(layout.frame(canvas, step, cam), frames[cam][step])
    assert (canvas[:, 64:72] == ACTION_COLORS["pan+"]).all()
    assert (canvas[:, 136:144] == ACTION_COLORS["stay"]).all()

    def patch(step: int, joint: int, velocity: bool = False) -> np.ndarray:
        columns = (layout.velocity_patch_columns if velocity else layout.position_patch_columns)(step, joint)
        return canvas[layout.strip_rows, columns]

    # position gray = place in the joint's range: pan -50 of [-100, 100] -> 0.25 * 255 = 63.75 -> 64
    assert (patch(0, 0) == 64).all()
    assert (patch(1, 0) == 128).all()  # 0.5 * 255 = 127.5 -> 128
    assert (patch(2, 0) == 166).all()  # 0.65 * 255 = 165.75 -> 166
    assert (patch(0, 5) == 26).all()  # gripper 10 of [0, 100] -> 25.5 -> 26
    assert (patch(2, 5) == 230).all()  # 229.5 -> 230
    # velocity gray = 128 + delta * 127 / velocity_range(20); clipped to [0, 255]
    assert (patch(0, 0, velocity=True) == 128 + round(10 * 127 / 20)).all()
    assert (patch(1, 0, velocity=True) == 255).all()  # +50 saturates
    assert (patch(2, 5, velocity=True) == 255).all()
    assert (patch(1, 5, velocity=True) == VELOCITY_ZERO_GRAY).all()

    decoded = layout.decode_positions(canvas, 2)
    np.testing.assert_allclose(decoded, states[2], atol=100 / 255 + 1e-9)
    assert layout.decode_actions(canvas).tolist() == [PAN_PLUS, STAY]


def test_build_many_matches_build_and_resizes_frames():
    config = CanvasConfig(frame_width=32, frame_height=24)
    big = random_frames(CanvasConfig(frame_width=64, frame_height=48), steps=2, seed=3)
    states = np.random.default_rng(1).uniform(-100, 100, (2, 6))
    one = build(config, big, states, [PAN_MINUS])
    many = build_many(
        config,
        {k: v[None].repeat(3, 0) for k, v in big.items()},
        states[None].repeat(3, 0),
        states[:1].repeat(3, 0),
        np.full((3, 1), PAN_MINUS),
    )
    assert one.shape == (2 * 24 + 8, 2 * 32 + 8, 3)
    for canvas in many:
        np.testing.assert_array_equal(canvas, one)
    # area resize of a 2x larger frame = mean of each 2x2 block
    expected = big["wrist"][1].reshape(24, 2, 32, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(config.layout.frame(one, 1, "wrist"), expected, atol=1)


def test_build_rejects_bad_inputs():
    config = CanvasConfig()
    frames = random_frames(config, steps=2)
    states = np.zeros((2, 6))
    with pytest.raises(ValueError, match="buffer"):
        build(config, frames, states, [-1])
    with pytest.raises(KeyError, match="base"):
        build(config, {"wrist": frames["wrist"]}, states, [STAY])
    with pytest.raises(ValueError, match="states"):
        build(config, frames, np.zeros((3, 6)), [STAY])


def test_config_lists_every_bad_field():
    with pytest.raises(ValidationError) as info:
        CanvasConfig(history=0, frame_width="wide", colour="red")
    fields = {err["loc"][0] for err in info.value.errors()}
    assert fields == {"history", "frame_width", "colour"}
    with pytest.raises(ValidationError, match="one color per action"):
        CanvasConfig(action_colors={"stay": (1, 2, 3)})
    with pytest.raises(ValidationError, match="too narrow"):
        CanvasConfig(frame_width=8)


def test_fingerprint_tracks_every_field():
    base = CanvasConfig()
    assert base.fingerprint() == CanvasConfig().fingerprint()
    assert base.fingerprint() != CanvasConfig(separator_width=4).fingerprint()
    assert CanvasConfig.model_validate_json(base.model_dump_json()) == base
