"""The judge on hand-made models whose scores are known exactly, then end to end on a tiny run directory.

The hand-made models run in this process through `ModelPredictor`, the same adapter the predictor process
uses, so the pixel conventions and the scoring are the ones a night's judge applies.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import Tensor

from models.canvas import CanvasConfig, build_many
from models.checkpoint import build_model, load_run, save_weights, write_json
from models.config import DiTConfig, ExperimentConfig
from models.data import CanvasSplit, build_cache, load_split
from models.errors import WorldloopError
from models.evaluate import (
    PSNR_CAP,
    TIMING_KEYS,
    TIMING_REPEATS,
    EvalResult,
    evaluate,
    evaluate_run,
    example_positions,
    main,
    sample_indices,
    ssim,
)
from models.pixels import MID_GRAY, to_tensor, to_uint8
from models.predictor import Request
from models.serve import ModelPredictor
from models.task import DataConfig, Task
from models.vocab import ACTION_JOINT, PAN_MINUS, PAN_PLUS, STAY
from models.world_model import WorldModel
from robot.record import record_sim_dataset
from robot.sim import SimConfig

CANVAS = CanvasConfig(frame_width=16, frame_height=16, separator_width=4, motor_strip_height=4)
LAYOUT = CANVAS.layout
PAN = CANVAS.joints.index(ACTION_JOINT)
SHIFT = 3  # pixels the scene moves per pan action
MOVE = 10.0  # normalized units the pan joint moves per pan action
DIRECTION = {STAY: 0, PAN_PLUS: 1, PAN_MINUS: -1}
ACTIONS = [STAY, PAN_PLUS, PAN_MINUS, PAN_PLUS, PAN_PLUS, PAN_MINUS, STAY, PAN_MINUS, PAN_PLUS, PAN_MINUS]
STAY_FRACTION = ACTIONS.count(STAY) / len(ACTIONS)  # 0.2: distinguishable from chance


def scenes(
    actions: list[int], seed: int = 0, strip_sign: int = 1, config: CanvasConfig = CANVAS
) -> CanvasSplit:
    """Random frames; the target is the context frame rolled by +SHIFT px for pan+, -SHIFT for pan-, unchanged
    for stay. The pan joint moves by MOVE the same way (by -MOVE with strip_sign=-1: the strip lies)."""
    rng = np.random.default_rng(seed)
    n, h, w = len(actions), config.frame_height, config.frame_width
    direction = np.array([DIRECTION[a] for a in actions])
    frames = {}
    for cam in config.cameras:
        video = np.repeat(rng.integers(0, 256, (n, 1, h, w, 3), dtype=np.uint8), 2, axis=1)
        for i, d in enumerate(direction):
            video[i, 1] = np.roll(video[i, 0], d * SHIFT, axis=1)
        frames[cam] = video
    states = np.repeat(rng.uniform(-50, 50, (n, 1, len(config.joints))), 2, axis=1)
    states[:, 1, PAN] += strip_sign * MOVE * direction
    acts = np.array(actions, dtype=np.int64)[:, None]
    canvases = build_many(config, frames, states, states[:, 0], acts)
    return CanvasSplit(
        name="val",
        config=config,
        canvases=canvases,
        episode=np.zeros(n, dtype=np.int64),
        frames=np.stack([np.arange(n), np.arange(n) + 1], axis=1),
        actions=acts,
        states=states,
    )


class Fake(WorldModel):
    """A model without weights (only the base class's position table); subclasses define `predict`."""

    kind = "fake"

    def __init__(self, config: CanvasConfig = CANVAS) -> None:
        super().__init__(SimpleNamespace(patch=4, width=16, heads=2, position="sincos"), config)

    def loss(self, canvases: Tensor, actions: Tensor) -> Tensor:
        """Nothing to learn: the judge never trains."""
        return canvases.new_zeros(())

    def last_step(self, context: Tensor) -> Tensor:
        """The last context step's column (camera frames and strip), (B, 3, H, W_target)."""
        return context[..., self.canvas.layout.step_columns(self.canvas.history - 1)]


class Oracle(Fake):
    """Knows every target of a split (looked up by the first context step) and its true action: returns it
    under the true action and its negative under the others."""

    def __init__(self, split: CanvasSplit, answers: np.ndarray | None = None) -> None:
        super().__init__(split.config)
        answers = split.canvases if answers is None else answers
        targets = to_tensor(answers)[..., LAYOUT.target_columns]
        self.table = {
            self.key(canvas): (int(split.actions[i, -1]), targets[i])
            for i, canvas in enumerate(split.canvases)
        }

    def key(self, canvas: np.ndarray) -> bytes:
        return np.ascontiguousarray(canvas[:, LAYOUT.step_columns(0)]).tobytes()

    def predict(self, context: Tensor, actions: Tensor, seed: int | None = None) -> Tensor:
        out = []
        for canvas, candidates in zip(to_uint8(context), actions, strict=True):
            true_action, target = self.table[self.key(canvas)]
            out.append(torch.stack([target if a == true_action else -target for a in candidates.tolist()]))
        return torch.stack(out)


class Copy(Fake):
    """The copy-last-frame baseline as a model: blind to the action."""

    def predict(self, context: Tensor, actions: Tensor, seed: int | None = None) -> Tensor:
        return self.last_step(context)[:, None].expand(-1, actions.shape[1], -1, -1, -1)


class Roll(Fake):
    """Rolls the last camera frames by the action's shift; `swapped` rolls the wrong way for pan+/pan-."""

    def __init__(self, swapped: bool = False) -> None:
        super().__init__()
        self.sign = -1 if swapped else 1

    def predict(self, context: Tensor, actions: Tensor, seed: int | None = None) -> Tensor:
        last, cam = self.last_step(context), slice(0, LAYOUT.strip_rows.start)
        out = last[:, None].repeat(1, actions.shape[1], 1, 1, 1)
        for b, k in np.ndindex(*actions.shape):
            shift = self.sign * DIRECTION[int(actions[b, k])] * SHIFT
            out[b, k, :, cam] = torch.roll(last[b, :, cam], shift, dims=-1)
        return out


class Noisy(Fake):
    """Copy plus noise from the seed and from torch's global generator: deterministic only if seeded."""

    def predict(self, context: Tensor, actions: Tensor, seed: int | None = None) -> Tensor:
        last = self.last_step(context)
        generator = torch.Generator().manual_seed(seed)
        noise = 0.1 * torch.randn(last.shape, generator=generator) + 0.1 * torch.randn(last.shape)
        return (last + noise).clamp(-1, 1)[:, None].expand(-1, actions.shape[1], -1, -1, -1)


class Spy(Copy):
    """Remembers the contexts it was given."""

    seen: list[Tensor]

    def predict(self, context: Tensor, actions: Tensor, seed: int | None = None) -> Tensor:
        self.seen = [*getattr(self, "seen", []), context.clone()]
        return super().predict(context, actions, seed)


class Broken(Copy):
    """Copy, but one kind of wrong answer: non-finite values, or a target step of the wrong width."""

    def __init__(self, wrong: str) -> None:
        super().__init__()
        self.wrong = wrong

    def predict(self, context: Tensor, actions: Tensor, seed: int | None = None) -> Tensor:
        out = super().predict(context, actions, seed).clone()
        if self.wrong == "nan":
            out[0, 0, 0, 0, 0] = float("nan")
            return out
        return out[..., :-1]


class Requests:
    """A predictor in front of another that remembers the requests the judge sent."""

    def __init__(self, inner: ModelPredictor) -> None:
        self.inner = inner
        self.model_kind, self.parameters, self.canvas = inner.model_kind, inner.parameters, inner.canvas
        self.seen: list[Request] = []

    def predict(self, request: Request) -> np.ndarray:
        self.seen.append(request)
        return self.inner.predict(request)


def judge(model: WorldModel, split: CanvasSplit, **options: object) -> EvalResult:
    return evaluate(ModelPredictor(model), split, **options)


def without_timing(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


# ----------------------------------------------------------------------------------------------- tests


def test_oracle_is_perfect():
    split = scenes(ACTIONS)
    m = judge(Oracle(split), split).metrics
    assert m["mse"] == 0.0 and m["dyn_mse"] == 0.0 and m["mse_vs_copy"] == 0.0
    assert m["psnr"] == PSNR_CAP
    assert m["ssim"] == 1.0
    assert m["cf_acc"] == 1.0
    assert m["motor_dir_acc"] == 1.0
    assert m["copy_mse"] > 0 and m["copy_dyn_mse"] > 0 and 0 < m["dyn_fraction"] < 1
    assert m["cf_spread"] > 0
    assert m["n_samples"] == len(ACTIONS) and m["split"] == "val" and m["history"] == 1
    assert m["model_kind"] == "fake" and m["parameters"] == 0 and m["seed"] == 0
    assert m["infer_ms"] > 0 and m["infer_ms_27"] == pytest.approx(27 * m["infer_ms"])
    assert m["infer_ms_27_noise"] >= 0


def test_copy_model_scores_the_copy_baseline_and_chance():
    split = scenes(ACTIONS)
    m = judge(Copy(), split, batch_size=3).metrics
    assert m["mse"] == m["copy_mse"] > 0
    assert m["dyn_mse"] == m["copy_dyn_mse"] > 0
    assert m["mse_vs_copy"] == 1.0 and m["dyn_mse_vs_copy"] == 1.0
    assert m["cf_acc"] == 1 / 3
    assert m["cf_spread"] == 0.0
    assert m["motor_dir_acc"] == 0.0  # the strip did not move; the truth did
    assert 0 < m["ssim"] < 1 and m["psnr"] < PSNR_CAP


def test_known_shift_right_and_swapped():
    split = scenes(ACTIONS)
    right = judge(Roll(), split).metrics
    assert right["cf_acc"] == 1.0 and right["mse"] == 0.0
    swapped = judge(Roll(swapped=True), split).metrics
    assert swapped["cf_acc"] == STAY_FRACTION


def test_motor_direction_from_the_strip_only():
    split = scenes(ACTIONS)
    backwards = scenes(ACTIONS, strip_sign=-1).canvases  # same frames, the strip moves the other way
    liar = Oracle(split, answers=backwards)
    m = judge(liar, split).metrics
    assert m["motor_dir_acc"] == 0.0
    assert m["mse"] == 0.0 and m["cf_acc"] == 1.0  # the strip is not part of the pixel metrics


def test_deterministic_for_a_seed():
    split = scenes(ACTIONS)
    first = without_timing(judge(Noisy(), split, seed=3, batch_size=4).metrics)
    assert first == without_timing(judge(Noisy(), split, seed=3, batch_size=4).metrics)
    assert first["mse"] != judge(Noisy(), split, seed=4, batch_size=4).metrics["mse"]


def test_static_scenes_and_no_strip():
    config = CanvasConfig(frame_width=16, frame_height=16, separator_width=4, motor_strip_height=0)
    split = scenes([STAY] * 4, config=config)
    m = judge(Copy(config), split).metrics
    assert m["dyn_fraction"] == 0.0 and m["mse"] == 0.0 and m["copy_mse"] == 0.0
    for key in ("dyn_mse", "copy_dyn_mse", "dyn_mse_vs_copy", "mse_vs_copy", "motor_dir_acc"):
        assert m[key] is None, key
    json.dumps(m)  # None must survive JSON


def test_model_sees_neither_target_nor_true_action():
    split = scenes(ACTIONS)
    spy = Spy()
    requests = Requests(ModelPredictor(spy))
    evaluate(requests, split, batch_size=4)
    hidden = np.r_[LAYOUT.separator_columns(0), LAYOUT.target_columns]
    assert len(requests.seen) == 3 + 1 + TIMING_REPEATS  # 10 samples in batches of 4, then the timing calls
    for request in requests.seen:  # the answer never leaves the judge: it is blanked out of the pixels
        assert (request.context[:, :, hidden] == MID_GRAY).all()
        assert (request.context[:, :, LAYOUT.step_columns(0)] != MID_GRAY).any()
    for context in spy.seen:  # and the model sees exact mid-gray there
        assert (context[..., hidden] == 0).all()
        assert (context[..., LAYOUT.step_columns(0)] != 0).any()
    assert (split.canvases[:, :, LAYOUT.target_columns] != MID_GRAY).any()  # the split itself is untouched


@pytest.mark.parametrize(
    ("wrong", "message"),
    [("nan", "non-finite values"), ("shape", r"predict returned shape \(10, 3, 3, 36, 15\), expected")],
)
def test_a_wrong_prediction_is_an_error_that_says_what(wrong: str, message: str):
    with pytest.raises(WorldloopError, match=message):
        judge(Broken(wrong), scenes(ACTIONS), batch_size=16)


def test_a_model_built_for_another_canvas_is_refused():
    other = CANVAS.model_copy(update={"velocity_range": 5.0})
    message = r"another canvas than the task's: velocity_range 5.0 \(task: 20.0\)"
    with pytest.raises(WorldloopError, match=message):
        judge(Copy(other), scenes(ACTIONS))


def test_pixels_survive_the_round_trip_exactly():
    every = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    x = to_tensor(every)
    assert x.min() == -1 and x.max() == 1
    np.testing.assert_array_equal(to_uint8(x), every)
    gray = to_tensor(np.full((1, 1, 1, 3), MID_GRAY, np.uint8))
    assert gray.abs().max().item() == pytest.approx(0.5 / 127.5, rel=1e-4)  # half a level: the nearest to 0


def test_sample_choice_and_counterfactual_examples():
    actions = (ACTIONS * 2)[:20]
    split = scenes(actions)
    result: EvalResult = judge(Copy(), split, max_samples=7, cf_examples=4, batch_size=3)
    chosen = sample_indices(20, 7)
    np.testing.assert_array_equal(chosen, np.linspace(0, 19, 7, dtype=int))
    assert result.metrics["n_samples"] == 7

    n, h, wt = 4, LAYOUT.height, CANVAS.frame_width
    assert result.context.shape == (n, *LAYOUT.shape) and result.context.dtype == np.uint8
    assert result.truth.shape == (n, h, wt, 3) and result.predictions.shape == (n, 3, h, wt, 3)
    assert result.true_action.shape == result.mse.shape == result.hard.shape == (n,)
    even = chosen[example_positions(7, 4)]
    np.testing.assert_array_equal(result.index[~result.hard], even)
    assert result.hard.sum() == 2 and len(set(result.index.tolist())) == n
    np.testing.assert_array_equal(result.context, split.canvases[result.index])
    np.testing.assert_array_equal(result.truth, split.canvases[result.index][:, :, LAYOUT.target_columns])
    np.testing.assert_array_equal(result.true_action, split.actions[result.index, -1])
    last = split.canvases[result.index][:, :, LAYOUT.step_columns(0)]
    for a in range(3):
        np.testing.assert_array_equal(result.predictions[:, a], last)


def test_hardest_examples_have_the_largest_error():
    split = scenes(ACTIONS)
    full = judge(Copy(), split, cf_examples=len(ACTIONS))  # every sample, so every mse is known
    errors = dict(zip(full.index.tolist(), full.mse.tolist(), strict=True))
    result = judge(Copy(), split, cf_examples=4)
    hard = set(result.index[result.hard].tolist())
    others = [errors[i] for i in errors if i not in set(result.index.tolist())]
    assert min(errors[i] for i in hard) >= max(others)
    np.testing.assert_allclose(result.mse, [errors[i] for i in result.index.tolist()])


def test_ssim_identical_noisy_and_small_frames():
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    assert torch.equal(ssim(x, x), torch.ones(2, dtype=torch.float64))
    noisy = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    assert (ssim(x, noisy) < 0.95).all()


def test_main_reports_a_missing_run_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nope"), "--split", "val"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "nope" in err


def test_evaluate_run_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    dataset = record_sim_dataset(
        tmp_path / "sim",
        episodes=3,
        actions_per_episode=4,
        seed=1,
        workers=1,
        config=SimConfig(frame_width=32, frame_height=32),
    )
    config = ExperimentConfig(
        model=DiTConfig(patch=4, width=16, depth=1, heads=2, sample_steps=1),
        canvas=CANVAS,
        data=DataConfig(dataset=dataset),
    )
    build_cache(dataset, config.canvas)  # default SplitConfig == this DataConfig's split
    run = tmp_path / "run"
    run.mkdir()
    write_json(run / "config.json", config.model_dump(mode="json"))
    save_weights(build_model(config), run / "model.safetensors")

    task = Task(canvas=config.canvas, data=config.data)
    metrics = evaluate_run(run, "val", task=task, max_samples=4)  # the model in a process of its own
    saved = json.loads((run / "eval_val.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    keys = {"mse", "psnr", "ssim", "dyn_mse", "dyn_fraction", "copy_mse", "copy_dyn_mse", "mse_vs_copy",
            "dyn_mse_vs_copy", "cf_acc", "cf_spread", "motor_dir_acc", "infer_ms", "infer_ms_27",
            "infer_ms_27_noise", "n_samples", "split", "seed", "model_kind", "parameters",
            "history"}  # fmt: skip
    assert keys <= set(saved) and saved["model_kind"] == "dit" and saved["n_samples"] >= 1
    # untrained, the residual DiT is the copy baseline (adaLN-Zero) and blind to the action: the judge says so
    assert saved["mse"] == pytest.approx(saved["copy_mse"], rel=1e-6) and saved[
        "mse_vs_copy"
    ] == pytest.approx(1.0)
    assert saved["cf_acc"] == pytest.approx(1 / 3) and saved["cf_spread"] == 0.0
    with np.load(run / "cf_val.npz") as cf:
        n = len(cf["index"])
        assert n == min(8, saved["n_samples"])
        assert cf["context"].shape == (n, *LAYOUT.shape) and cf["context"].dtype == np.uint8
        assert cf["truth"].shape == (n, LAYOUT.height, CANVAS.frame_width, 3)
        assert cf["predictions"].shape == (n, 3, LAYOUT.height, CANVAS.frame_width, 3)
        assert cf["true_action"].shape == cf["mse"].shape == cf["hard"].shape == (n,)
    assert not list(run.glob(".*.tmp"))

    model, _ = load_run(run)  # the same model judged in this process scores the same
    split = load_split(dataset, CANVAS, "val")
    assert without_timing(judge(model, split, max_samples=4).metrics) == without_timing(metrics)

    experiment = tmp_path / "task.toml"
    experiment.write_text(
        "[canvas]\nframe_width = 16\nframe_height = 16\nseparator_width = 4\nmotor_strip_height = 4\n\n"
        f'[data]\ndataset = "{dataset}"\n'
    )
    main([str(run), "--split", "val", "--max-samples", "4", "--task", str(experiment)])
    assert "cf_acc" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # without --task: experiments/dit.toml, whose canvas is not this one
        main([str(run), "--split", "val", "--max-samples", "4", "--dataset", str(dataset)])
    err = capsys.readouterr().err
    assert "error: the model was built for another canvas than the task's: frame_width 16 (task: 64)" in err
