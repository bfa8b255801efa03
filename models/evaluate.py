"""The judge: metrics of a world model on a split of the night's task, from the frames it predicts.

Judging code (pinned): the harness runs this file, and every module it imports, from a snapshot of the
night's base commit (harness/pinned.py), in a process where no code of the agent's runs. The truth comes
from the task (canvas, dataset, split: models/task.py) and the dataset's uint8 canvases. The model only
answers requests (models/predictor.py): in a process of its own in the agent's tree, it gets contexts with
the target blanked and returns uint8 frames, as a camera would. The judge is deterministic for a given
checkpoint and seed (fixed sample choice, one seed per batch).

    python -m models.evaluate runs/0007 --split val [--task experiments/dit.toml] [--dataset data/sim]
        [--max-samples 512] [--seed 0] [--device cpu] [--predictor-root .] [--timeout 600]

`--task` defaults to `experiments/<model kind>.toml` of the tree this judge runs from, what a person
judging a run of their checkout expects; the harness always names the night's. `--predictor-root` (the tree
whose code loads and runs the model) defaults to that tree too; the harness passes the night's worktree.

What is measured, all on the target step's camera pixels (the motor strip is scored by `motor_dir_acc`), as
uint8 pixels scaled to [0, 1]:
- `mse`, `psnr`, `ssim` of the prediction under the true action;
- `dyn_mse`: error on the pixels that change between the last context frame and the target
  (`models.pixels.dynamic_mask`), where a model that copies the last frame is wrong; `copy_*` are the
  copy-last-frame baseline's numbers on the same pixels;
- `cf_acc`: predict under every action; correct when the true action's prediction is nearest the truth.
  Ties share credit, so an action-blind model scores exactly chance (1/3);
- `cf_spread`: how different the predictions under different actions are;
- `motor_dir_acc`: does the predicted motor strip move the action joint the way it really moved;
- `infer_ms_27`: the planner's call, 9 contexts x 3 actions, timed by the judge around the request (uint8
  in, uint8 out, as the robot calls it): the fastest of 5 after a warm-up; `infer_ms` is that per frame.
  `infer_ms_27_noise` = (median - fastest) / fastest of the 5: the load on the machine, so a change between
  two runs means something only past both runs' noise.

The model never sees the answer: the judge blanks the target step and the last separator (which carries the
true action's color) to mid-gray before a context leaves it; `predict` paints the separator from the
candidate action itself.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from models.canvas import CanvasConfig, CanvasLayout
from models.data import SPLITS, CanvasSplit, load_split
from models.errors import DatasetError, WorldloopError
from models.files import replacing, write_json
from models.pixels import MID_GRAY, dynamic_mask
from models.predictor import Predictor, PredictorError, PredictorProcess, Request
from models.task import Task, default_experiment, load_task
from models.vocab import ACTION_JOINT, NUM_ACTIONS, PAN_MINUS, PAN_PLUS

CODE_ROOT = Path(__file__).resolve().parents[1]
"""The tree this judge runs from: where `--task` and `--predictor-root` default to."""

PSNR_CAP = 100.0
"""PSNR of a perfect prediction (the real value is infinite, which averages badly)."""

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2

TIMING_CONTEXTS = 9
"""The planner's call: 9 contexts x 3 actions = 27 predicted frames."""

TIMING_REPEATS = 5
"""Timed calls after the warm-up: the fastest is the model's cost, their spread the machine's load."""

TIMING_KEYS = ("infer_ms", "infer_ms_27", "infer_ms_27_noise")
"""Metrics that are measured, not computed: the only ones that differ between two identical evaluations."""

Metrics = dict[str, float | int | str | None]


@dataclass
class EvalResult:
    """Metrics plus the counterfactual examples a report draws (what `cf_<split>.npz` holds)."""

    metrics: Metrics
    index: np.ndarray  # (N,) sample index in the split
    context: np.ndarray  # (N, H, W, 3) uint8 full canvases, target region as in the data
    truth: np.ndarray  # (N, H, W_target, 3) uint8 target step incl. motor strip
    predictions: np.ndarray  # (N, NUM_ACTIONS, H, W_target, 3) uint8, one per action id
    true_action: np.ndarray  # (N,)
    mse: np.ndarray  # (N,) under the true action
    hard: np.ndarray  # (N,) bool: chosen as one of the hardest

    def examples(self) -> dict[str, np.ndarray]:
        return {
            "index": self.index,
            "context": self.context,
            "truth": self.truth,
            "predictions": self.predictions,
            "true_action": self.true_action,
            "mse": self.mse,
            "hard": self.hard,
        }


# ---------------------------------------------------------------------------------------- pixel metrics


def unit(pixels: np.ndarray) -> Tensor:
    """uint8 (..., H, W, 3) -> float64 (..., 3, H, W) in [0, 1], contiguous. Truth, baseline and predictions
    all take this path, so a model that returns its input's last step scores bit-exactly what the copy
    baseline scores."""
    return (torch.from_numpy(np.ascontiguousarray(pixels)).movedim(-1, -3).double() / 255).contiguous()


def per_sample_mse(a: Tensor, b: Tensor) -> Tensor:
    """(B, C, h, w) x2 -> (B,). Always called on fresh contiguous tensors of one shape, so equal inputs give
    bit-equal outputs (ties in `cf_acc` must be exact)."""
    return ((a.contiguous() - b.contiguous()) ** 2).flatten(1).mean(1)


def psnr(mse: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.minimum(10 * np.log10(1.0 / mse), PSNR_CAP)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample mean SSIM of (B, 3, h, w) images in [0, 1]: per channel, gaussian window, reflect padding.

    Reflect padding (rather than the valid region) keeps every pixel in the mean and works for frames
    smaller than the window (the canvas allows 8 px). Equal images give exactly 1.
    """
    channels = a.shape[1]
    pad = SSIM_WINDOW // 2
    weight = gaussian_window().to(a.device)[None, None].expand(channels, 1, -1, -1).contiguous()

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), weight, groups=channels)

    a, b = a.contiguous(), b.contiguous()
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a * mu_a
    var_b = blur(b * b) - mu_b * mu_b
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu_a * mu_a + mu_b * mu_b + SSIM_C1) * (var_a + var_b + SSIM_C2)
    return (num / den).flatten(1).mean(1)


def camera_ssim(pred: Tensor, truth: Tensor, layout: CanvasLayout) -> Tensor:
    """SSIM per camera frame, averaged: the window never runs across the seam between two stacked cameras."""
    per_camera = [
        ssim(pred[..., layout.camera_rows(cam), :], truth[..., layout.camera_rows(cam), :])
        for cam in layout.config.cameras
    ]
    return torch.stack(per_camera).mean(0)


def cf_credit(distances: np.ndarray, true_action: int) -> Fraction:
    """Credit 1 when the true action is strictly nearest; 1/k when it ties with k-1 others for nearest."""
    tied = distances == distances.min()
    return Fraction(1, int(tied.sum())) if tied[true_action] else Fraction(0)


# --------------------------------------------------------------------------------------- sample choice


def sample_indices(n: int, max_samples: int) -> np.ndarray:
    """At most `max_samples` evenly spaced indices over a split of `n`: fixed, so every run sees the same."""
    if n == 0 or max_samples <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, num=min(max_samples, n), dtype=np.int64))


def example_positions(n: int, count: int) -> np.ndarray:
    """Positions (in the evaluated samples) of the evenly spaced half of the counterfactual examples."""
    return sample_indices(n, count - count // 2)


# ------------------------------------------------------------------------------------------- the judge


def hidden_columns(layout: CanvasLayout) -> tuple[tuple[int, int], ...]:
    """Columns a model must not see: the target step, and the last separator (the true action's color)."""
    target, separator = layout.target_columns, layout.separator_columns(layout.config.history - 1)
    return ((target.start, target.stop), (separator.start, separator.stop))


def request_for(canvases: np.ndarray, layout: CanvasLayout, seed: int) -> Request:
    """The request for canvases (b, H, W, 3) under every action, the answer blanked out of the pixels."""
    hidden = hidden_columns(layout)
    context = np.array(canvases, dtype=np.uint8)  # a copy: the split's canvases stay as they are
    for start, stop in hidden:
        context[:, :, start:stop] = MID_GRAY
    actions = np.tile(np.arange(NUM_ACTIONS, dtype=np.int64), (len(canvases), 1))
    return Request(context=context, actions=actions, seed=seed, hidden=hidden)


def check_prediction(frames: np.ndarray, expected: tuple[int, ...]) -> None:
    """Frames of the expected (b, K, H, W_target, 3) uint8 shape; the error speaks of `predict`'s shape."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise PredictorError(f"the predictor returned {type(frames).__name__} frames, not uint8 pixels")
    if frames.shape != expected:

        def as_model(shape: tuple[int, ...]) -> tuple[int, ...]:  # (..., H, W, 3) -> (..., 3, H, W)
            return (*shape[:-3], shape[-1], *shape[-3:-1]) if len(shape) >= 3 else shape

        shape, want = as_model(frames.shape), as_model(expected)
        raise PredictorError(f"predict returned shape {shape}, expected {want}")


def check_canvas(predictor: Predictor, config: CanvasConfig) -> None:
    """A model built for another canvas than the task's is refused: its scores would mean nothing."""
    if predictor.canvas is None:
        return
    try:
        canvas = CanvasConfig.model_validate(predictor.canvas)
    except ValueError as err:
        raise PredictorError(f"the model's canvas is not a canvas config ({err})") from None
    if canvas != config:
        mine, theirs = config.model_dump(), canvas.model_dump()
        diff = ", ".join(f"{k} {theirs[k]} (task: {mine[k]})" for k in mine if mine[k] != theirs[k])
        raise WorldloopError(f"the model was built for another canvas than the task's: {diff}")


def motor_joint(config: CanvasConfig) -> int | None:
    """Index of the action joint on the motor strip, or None when the canvas has no strip for it."""
    if not config.layout.patch_width or ACTION_JOINT not in config.joints:
        return None
    return config.joints.index(ACTION_JOINT)


@dataclass
class Scores:
    """What one batch contributes: per-sample numbers and pooled sums; `merge` joins batches in order."""

    mse: np.ndarray  # (b,) under the true action
    copy_mse: np.ndarray  # (b,) of the copy-last-frame baseline
    ssim: np.ndarray  # (b,)
    distances: np.ndarray  # (b, K) mse under every action
    spread: np.ndarray  # (b,) mean pairwise mse between the K predictions
    dyn_sq: float  # squared error summed over dynamic pixel-channels
    copy_dyn_sq: float
    dyn_pixels: int
    pixels: int
    motor_hits: list[bool]  # one per sample whose action moves the joint

    @staticmethod
    def merge(parts: list[Scores]) -> Scores:
        return Scores(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("mse", "copy_mse", "ssim", "distances", "spread")
            ),
            *(sum(getattr(p, f) for p in parts) for f in ("dyn_sq", "copy_dyn_sq", "dyn_pixels", "pixels")),
            [hit for p in parts for hit in p.motor_hits],
        )


def score_batch(
    frames: np.ndarray, canvases: np.ndarray, true_actions: np.ndarray, config: CanvasConfig
) -> Scores:
    """Scores of predicted frames (b, K, H, W_t, 3) of uint8 canvases (b, H, W, 3) and their true actions."""
    layout, b = config.layout, len(canvases)
    cam = slice(0, layout.strip_rows.start)  # camera rows: the strip is scored by motor_dir_acc only
    full = unit(canvases)
    truth = full[:, :, cam, layout.target_columns]
    last = full[:, :, cam, layout.step_columns(config.history - 1)]
    predicted = unit(frames)
    preds = [predicted[:, a, :, cam] for a in range(NUM_ACTIONS)]
    whole = frames[np.arange(b), true_actions]  # the prediction under the true action, uint8
    under_true = predicted[torch.arange(b), torch.as_tensor(true_actions)][:, :, cam]
    pairs = [(i, j) for i in range(NUM_ACTIONS) for j in range(i + 1, NUM_ACTIONS)]
    dynamic = dynamic_mask(truth - last, channel_dim=1, value_range=1.0).expand_as(truth)
    joint = motor_joint(config)
    motor_hits = [] if joint is None else motor_directions(canvases, whole, layout, joint, true_actions)
    return Scores(
        mse=per_sample_mse(under_true, truth).numpy(),
        copy_mse=per_sample_mse(last, truth).numpy(),
        ssim=camera_ssim(under_true, truth, layout).numpy(),
        distances=np.stack([per_sample_mse(p, truth).numpy() for p in preds], axis=1),
        spread=(sum(per_sample_mse(preds[i], preds[j]) for i, j in pairs) / len(pairs)).numpy(),
        dyn_sq=float(((under_true - truth) ** 2)[dynamic].sum()),
        copy_dyn_sq=float(((last - truth) ** 2)[dynamic].sum()),
        dyn_pixels=int(dynamic[:, 0].sum()),
        pixels=dynamic[:, 0].numel(),
        motor_hits=motor_hits,
    )


def motor_directions(
    canvases: np.ndarray, pred_target: np.ndarray, layout: CanvasLayout, joint: int, actions: np.ndarray
) -> list[bool]:
    """For each sample whose action moves the joint: does the predicted strip move it the way it really moved?

    Positions are decoded from the strips: the last context step's and the true target's from the canvas,
    the predicted one from the prediction. A move that did not happen (the joint at its limit) must be
    predicted as no move.
    """
    history = layout.config.history
    predicted = canvases.copy()
    predicted[:, :, layout.target_columns] = pred_target
    before = layout.decode_positions(canvases, history - 1)[:, joint]
    after_true = layout.decode_positions(canvases, history)[:, joint]
    after_pred = layout.decode_positions(predicted, history)[:, joint]
    moves = (actions == PAN_PLUS) | (actions == PAN_MINUS)
    same = np.sign(after_pred - before) == np.sign(after_true - before)
    return [bool(s) for s in same[moves]]


class ExamplePicker:
    """Collects the counterfactual examples while batches stream by, so no prediction is kept or redone.

    Half are evenly spaced over the evaluated samples (known up front), half the hardest of the rest (largest
    mse under the true action; ties go to the earlier sample), kept as a running top-k.
    """

    def __init__(self, n: int, count: int) -> None:
        count = min(count, n)
        self.even = [int(p) for p in example_positions(n, count)]
        self.n_hard = count - len(self.even)
        self.even_arrays: dict[int, tuple[np.ndarray, ...]] = {}
        self.hardest: list[tuple[float, int, tuple[np.ndarray, ...]]] = []

    def offer(
        self, positions: np.ndarray, mse: np.ndarray, canvases: np.ndarray, pred_u8: np.ndarray
    ) -> None:
        target = slice(canvases.shape[2] - pred_u8.shape[3], None)  # the target step is the rightmost column
        for r, pos in enumerate(positions.tolist()):
            arrays = (canvases[r], canvases[r, :, target], pred_u8[r])
            if pos in self.even:
                self.even_arrays[pos] = arrays
            elif self.n_hard:
                self.hardest.append((float(mse[r]), pos, arrays))
        self.hardest = sorted(self.hardest, key=lambda h: (-h[0], h[1]))[: self.n_hard]

    def arrays(
        self, chosen: np.ndarray, true_actions: np.ndarray, mse: np.ndarray, config: CanvasConfig
    ) -> dict:
        """The example arrays of `EvalResult`."""
        picked = [(p, self.even_arrays[p], False) for p in self.even] + [
            (p, a, True) for _, p, a in self.hardest
        ]
        layout = config.layout
        width = config.frame_width
        positions = np.array([p for p, _, _ in picked], dtype=np.int64)

        def stack(i: int, shape: tuple[int, ...]) -> np.ndarray:
            return np.stack([a[i] for _, a, _ in picked]) if picked else np.zeros((0, *shape), dtype=np.uint8)

        return {
            "index": chosen[positions].astype(np.int64),
            "context": stack(0, layout.shape),
            "truth": stack(1, (layout.height, width, 3)),
            "predictions": stack(2, (NUM_ACTIONS, layout.height, width, 3)),
            "true_action": true_actions[positions],
            "mse": mse[positions],
            "hard": np.array([h for _, _, h in picked], dtype=bool),
        }


def evaluate(
    predictor: Predictor,
    split: CanvasSplit,
    max_samples: int = 512,
    seed: int = 0,
    batch_size: int = 32,
    cf_examples: int = 8,
) -> EvalResult:
    """Score a predictor on up to `max_samples` evenly spaced samples of `split` (metrics: module docstring).

    Batch i is requested with seed `seed + i`, under all actions at once (one request, actions (B, 3)): a
    sampling model uses the same noise for every candidate, so candidates differ only by the action.
    """
    config = split.config
    layout = config.layout
    check_canvas(predictor, config)
    chosen = sample_indices(len(split), max_samples)
    if len(chosen) == 0:
        raise DatasetError(f"split {split.name!r} has no samples to evaluate")
    n = len(chosen)
    true_actions = split.actions[chosen, config.history - 1].astype(np.int64)
    picker = ExamplePicker(n, cf_examples)
    parts = []
    for batch, start in enumerate(range(0, n, batch_size)):
        rows = np.arange(start, min(start + batch_size, n))
        canvases = np.asarray(split.canvases[chosen[rows]])
        frames = predictor.predict(request_for(canvases, layout, seed + batch))
        check_prediction(frames, (len(rows), NUM_ACTIONS, layout.height, config.frame_width, 3))
        parts.append(score_batch(frames, canvases, true_actions[rows], config))
        picker.offer(rows, parts[-1].mse, canvases, frames)
    scores = Scores.merge(parts)
    metrics = (
        summarize(scores, true_actions)
        | time_predict(predictor, split, chosen, seed)
        | {
            "n_samples": n,
            "split": split.name,
            "seed": seed,
            "model_kind": predictor.model_kind,
            "parameters": predictor.parameters,
            "history": config.history,
        }
    )
    return EvalResult(metrics=metrics, **picker.arrays(chosen, true_actions, scores.mse, config))


def summarize(s: Scores, true_actions: np.ndarray) -> Metrics:
    """The quality metrics from the scores of every sample."""
    credit = sum((cf_credit(d, int(a)) for d, a in zip(s.distances, true_actions, strict=True)), Fraction(0))
    dyn_mse = s.dyn_sq / (3 * s.dyn_pixels) if s.dyn_pixels else None
    copy_dyn_mse = s.copy_dyn_sq / (3 * s.dyn_pixels) if s.dyn_pixels else None
    mse, copy_mse = float(s.mse.mean()), float(s.copy_mse.mean())
    return {
        "mse": mse,
        "psnr": float(psnr(s.mse).mean()),
        "ssim": float(s.ssim.mean()),
        "dyn_mse": dyn_mse,
        "dyn_fraction": s.dyn_pixels / s.pixels,
        "copy_mse": copy_mse,
        "copy_dyn_mse": copy_dyn_mse,
        "mse_vs_copy": ratio(mse, copy_mse),
        "dyn_mse_vs_copy": ratio(dyn_mse, copy_dyn_mse),
        "cf_acc": float(credit / len(s.mse)),  # exact: an action-blind model scores float(1/3)
        "cf_spread": float(s.spread.mean()),
        "motor_dir_acc": float(np.mean(s.motor_hits)) if s.motor_hits else None,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def time_predict(predictor: Predictor, split: CanvasSplit, chosen: np.ndarray, seed: int) -> Metrics:
    """The planner's call (9 contexts x 3 actions) as the judge sees it: the fastest of TIMING_REPEATS after
    a warm-up, and the spread of the repeats (timing keys: module docstring)."""
    picks = np.resize(chosen[:TIMING_CONTEXTS], TIMING_CONTEXTS)  # repeats when fewer
    request = request_for(np.asarray(split.canvases[picks]), split.config.layout, seed)

    def call() -> float:
        start = time.perf_counter()
        predictor.predict(request)  # uint8 frames: any device work has finished when they arrive
        return time.perf_counter() - start

    call()  # warm-up: lazy init, allocator, kernels
    times = [call() for _ in range(TIMING_REPEATS)]
    fastest = min(times)
    return {
        "infer_ms": fastest * 1000 / (TIMING_CONTEXTS * NUM_ACTIONS),
        "infer_ms_27": fastest * 1000,
        "infer_ms_27_noise": (statistics.median(times) - fastest) / fastest,
    }


# -------------------------------------------------------------------------------------------- run dirs


def evaluate_run(
    run_dir: Path,
    split: str = "val",
    task: Task | Path | None = None,
    dataset: Path | None = None,
    max_samples: int = 512,
    seed: int = 0,
    device: str = "cpu",
    predictor_root: Path | None = None,
    timeout_s: float | None = None,
) -> Metrics:
    """Judge a run directory's model on a split of the task; the model runs in its own process
    (`python -m models.serve` in `predictor_root`), and nothing the run wrote is read here.

    `task`: a Task or an experiment config to read it from; by default `experiments/<kind>.toml` of this
    judge's tree. `dataset` defaults to the task's. `timeout_s` bounds the predictor's whole time.
    Writes `<run_dir>/eval_<split>.json` (the metrics) and `<run_dir>/cf_<split>.npz` (the counterfactual
    examples), each atomically, so the harness never reads half a file. Returns the metrics.
    """
    if split not in SPLITS:
        raise WorldloopError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise WorldloopError(f"{run_dir}: no such run directory")
    if task is not None and not isinstance(task, Task):
        task = load_task(Path(task))
    with PredictorProcess(run_dir, predictor_root or CODE_ROOT, device, timeout_s) as predictor:
        task = task or load_task(default_task(predictor.model_kind))
        check_canvas(predictor, task.canvas)  # first: with a default task, the likelier mistake
        canvases = load_split(Path(dataset or task.data.dataset), task.canvas, split, task.data.split())
        result = evaluate(predictor, canvases, max_samples=max_samples, seed=seed)
    write_json(run_dir / f"eval_{split}.json", result.metrics)
    with replacing(run_dir / f"cf_{split}.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **result.examples())
    return result.metrics


def default_task(model_kind: str) -> Path:
    """The default experiment of a model kind in this judge's tree: what a person judging a run expects."""
    path = CODE_ROOT / default_experiment(model_kind)
    if not model_kind.isidentifier() or not path.exists():
        raise WorldloopError(
            f"no task given, and {CODE_ROOT / 'experiments'} has no experiment config for a {model_kind!r} "
            "model: pass --task <experiment.toml>"
        )
    return path


# ------------------------------------------------------------------------------------------------- CLI


def format_value(value: float | int | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def print_table(metrics: Metrics, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, format_value(value))
    Console().print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m models.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--split", choices=SPLITS, default="val")
    parser.add_argument("--task", type=Path, default=None, help="default: experiments/<model kind>.toml")
    parser.add_argument("--dataset", type=Path, default=None, help="default: the task's data.dataset")
    parser.add_argument("--max-samples", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where the model runs")
    parser.add_argument(
        "--predictor-root", type=Path, default=None, help="the tree whose code runs the model"
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds the model may take in all")
    args = parser.parse_args(argv)
    try:
        metrics = evaluate_run(
            args.run_dir,
            args.split,
            task=args.task,
            dataset=args.dataset,
            max_samples=args.max_samples,
            seed=args.seed,
            device=args.device,
            predictor_root=args.predictor_root,
            timeout_s=args.timeout,
        )
    except WorldloopError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print_table(metrics, f"{args.run_dir} ({args.split})")


if __name__ == "__main__":
    main()
