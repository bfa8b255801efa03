"""Train a world model for a fixed wall-clock budget.

    python -m models.train --config experiments/dit.toml --budget 5m --out runs/dit-baseline

Every run gets the same budget, so runs compare by what they learn in that time, not by how long they ran
(like autoresearch). The learning rate warms up over `warmup_steps` and then follows a cosine over the
budget's *time*, so a run always ends at the low learning rate whatever its speed. CPU runs use float32
on every core; CUDA runs use bf16 autocast, SDPA and optionally torch.compile.

Writes to --out: config.json, model.safetensors, ema.safetensors (when EMA is on), train_log.csv
(step, time, samples, loss, lr) and metrics.json. A NaN or infinite loss stops the run with exit code 3.
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from models.checkpoint import CONFIG_FILE, EMA_FILE, WEIGHTS_FILE, build_model, save_weights, write_json
from models.config import ExperimentConfig, TrainConfig, load_config, parse_duration
from models.data import load_split
from models.errors import MissingCacheError, WorldloopError
from models.vocab import NUM_ACTIONS
from models.world_model import WorldModel, to_tensor

EXIT_NAN = 3
VAL_LOSS_SAMPLES = 256


@dataclass
class TrainResult:
    steps: int
    samples: int
    train_seconds: float
    final_loss: float
    val_loss: float | None


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def learning_rate(train: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup by steps, then cosine by the fraction of the time budget used."""
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return train.lr * (train.min_lr_ratio + (1.0 - train.min_lr_ratio) * cosine)


class EMA:
    """Exponential moving average of the weights, with the usual warmup so early steps are not frozen in."""

    def __init__(self, model: WorldModel, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: WorldModel) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_params = list(self.model.parameters())
        torch._foreach_lerp_(ema_params, list(model.parameters()), 1.0 - decay)


class NonFiniteLoss(WorldloopError):
    pass


def train(
    config: ExperimentConfig,
    budget_s: float,
    out: Path,
    dataset: Path | None = None,
    device: torch.device | None = None,
    show_progress: bool = True,
) -> TrainResult:
    """Train until the budget is spent, then save; raises NonFiniteLoss on NaN/inf (after saving logs)."""
    device = device or pick_device()
    tc = config.train
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG_FILE, config.model_dump(mode="json"))
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed)
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)

    root = Path(dataset or config.data.dataset)
    train_split = load_split(root, config.canvas, "train", config.data.split())
    if len(train_split) == 0:
        raise WorldloopError(f"the train split of {root} has no canvases")
    canvases = torch.from_numpy(np.array(train_split.canvases))  # uint8, copied into RAM
    actions = torch.from_numpy(train_split.actions)

    model = build_model(config).to(device)
    ema = EMA(model, tc.ema_decay) if tc.ema_decay > 0 else None
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=tc.lr,
        betas=tc.betas,
        weight_decay=tc.weight_decay,
        fused=device.type == "cuda",
    )
    loss_fn = model.loss
    if tc.compile and device.type == "cuda":
        loss_fn = torch.compile(model.loss)  # the models train through `loss`, not `forward`
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    generator = torch.Generator().manual_seed(tc.seed)

    log_file = open(out / "train_log.csv", "w", newline="")  # noqa: SIM115 - closed in finally
    log = csv.writer(log_file)
    log.writerow(["step", "time_s", "samples", "loss", "lr", "samples_per_s"])
    step = samples = 0
    window_loss, window_steps, last_log, last_samples = 0.0, 0, 0.0, 0
    smoothed = float("nan")
    progress = _progress_bar(show_progress)
    task = progress.add_task("training", total=budget_s, loss=float("nan"), rate=0.0)
    start = time.perf_counter()
    try:
        with progress:
            while (elapsed := time.perf_counter() - start) < budget_s:
                lr = learning_rate(tc, step, elapsed / budget_s)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                index = torch.randint(len(canvases), (tc.batch_size,), generator=generator)
                batch = to_tensor(canvases[index], device)
                with autocast:
                    loss = loss_fn(batch, actions[index].to(device))
                value = loss.item()
                if not math.isfinite(value):
                    log.writerow([step, f"{elapsed:.3f}", samples, value, f"{lr:.3e}", ""])
                    raise NonFiniteLoss(f"loss became {value} at step {step} ({elapsed:.0f}s); lower the lr?")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if tc.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                optimizer.step()
                if ema:
                    ema.update(model)
                step += 1
                samples += tc.batch_size
                window_loss += value
                window_steps += 1
                smoothed = value if math.isnan(smoothed) else 0.98 * smoothed + 0.02 * value
                if elapsed - last_log >= tc.log_every_s:
                    rate = (samples - last_samples) / max(elapsed - last_log, 1e-9)
                    log.writerow(
                        [
                            step,
                            f"{elapsed:.3f}",
                            samples,
                            f"{window_loss / window_steps:.6f}",
                            f"{lr:.3e}",
                            f"{rate:.1f}",
                        ]
                    )
                    log_file.flush()
                    window_loss, window_steps, last_log, last_samples = 0.0, 0, elapsed, samples
                    progress.update(task, completed=elapsed, loss=smoothed, rate=rate)
            progress.update(task, completed=budget_s)
    finally:
        if window_steps:
            elapsed = time.perf_counter() - start
            log.writerow([step, f"{elapsed:.3f}", samples, f"{window_loss / window_steps:.6f}", "", ""])
        log_file.close()
    train_seconds = time.perf_counter() - start

    save_weights(model, out / WEIGHTS_FILE)
    if ema:
        save_weights(ema.model, out / EMA_FILE)
    judged = ema.model if ema else model
    val_loss = validation_loss(judged, root, config, device)
    result = TrainResult(step, samples, train_seconds, smoothed, val_loss)
    write_json(
        out / "metrics.json",
        {
            "steps": step,
            "samples": samples,
            "train_seconds": round(train_seconds, 3),
            "budget_seconds": budget_s,
            "samples_per_s": round(samples / max(train_seconds, 1e-9), 2),
            "final_loss": smoothed,
            "val_loss": val_loss,
            "parameters": model.num_parameters(),
            "model_kind": model.kind,
            "device": str(device),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    )
    return result


def smoke(config: ExperimentConfig, dataset: Path | None = None, device: torch.device | None = None) -> float:
    """One optimizer step on one batch, then one `predict` call: the harness's check before a real run.

    Catches what would crash in the first seconds of training or at evaluation (shape errors, a broken
    `predict`) in a few seconds, without writing anything. Returns the loss of the step.
    """
    device = device or pick_device()
    split = load_split(Path(dataset or config.data.dataset), config.canvas, "train", config.data.split())
    if len(split) == 0:
        raise WorldloopError("the train split has no canvases")
    rows = np.arange(min(config.train.batch_size, len(split)))
    batch = to_tensor(np.asarray(split.canvases[rows]), device)
    model = build_model(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr)
    loss = model.loss(batch, torch.from_numpy(split.actions[rows]).to(device))
    if not math.isfinite(loss.item()):
        raise NonFiniteLoss(f"the first loss is {loss.item()}")
    loss.backward()
    optimizer.step()
    model.eval()
    layout = config.canvas.layout
    with torch.inference_mode():
        context = batch[:1].clone()
        prediction = model.predict(context, torch.arange(NUM_ACTIONS, device=device)[None], seed=0)
    expected = (1, NUM_ACTIONS, 3, layout.height, config.canvas.frame_width)
    if tuple(prediction.shape) != expected:
        raise WorldloopError(f"predict returned shape {tuple(prediction.shape)}, expected {expected}")
    return loss.item()


@torch.no_grad()
def validation_loss(
    model: WorldModel, root: Path, config: ExperimentConfig, device: torch.device
) -> float | None:
    """Mean training loss on a fixed slice of val with fixed noise: a quick sanity number, not the judge."""
    val = load_split(root, config.canvas, "val", config.data.split())
    if len(val) == 0:
        return None
    index = np.linspace(0, len(val) - 1, min(VAL_LOSS_SAMPLES, len(val))).astype(int)
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    model.eval()
    losses = []
    for chunk in np.array_split(index, max(1, len(index) // 32)):
        batch = to_tensor(np.asarray(val.canvases[chunk]), device)
        losses.append(model.loss(batch, torch.from_numpy(val.actions[chunk]).to(device)).item() * len(chunk))
    torch.random.set_rng_state(state)
    return sum(losses) / len(index)


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[rate]:.0f} samples/s"),
        console=Console(stderr=True),
        disable=not enabled,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="experiment TOML")
    parser.add_argument("--budget", default="5m", help="wall-clock training time, e.g. 90s, 5m, 1h")
    parser.add_argument("--out", type=Path, default=None, help="run directory to write (required to train)")
    parser.add_argument("--dataset", type=Path, default=None, help="override the config's data.dataset")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--smoke", action="store_true", help="one step and one predict call, write nothing")
    args = parser.parse_args(argv)
    if args.out is None and not args.smoke:
        parser.error("--out is required (or --smoke)")
    err = Console(stderr=True)
    try:
        budget = parse_duration(args.budget)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        config = load_config(args.config)
        if args.smoke:
            loss = smoke(config, args.dataset, pick_device(args.device))
            err.print(f"smoke step ok: loss {loss:.4f}, predict shape ok", highlight=False)
            return
        result = train(config, budget, args.out, args.dataset, pick_device(args.device), not args.quiet)
    except NonFiniteLoss as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_NAN)
    except MissingCacheError:
        dataset = args.dataset or config.data.dataset
        err.print(
            f"[red]error:[/red] no canvas cache for {dataset} with this config's canvas; build it with "
            f"`harness data build {dataset} --config {args.config}`",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)
    except WorldloopError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    val = "n/a" if result.val_loss is None else f"{result.val_loss:.4f}"
    err.print(
        f"trained {result.steps} steps ({result.samples} samples) in {result.train_seconds:.0f}s; "
        f"loss {result.final_loss:.4f}, val loss {val} -> {args.out}",
        highlight=False,
        soft_wrap=True,
    )


if __name__ == "__main__":
    main()
