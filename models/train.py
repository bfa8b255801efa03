"""Train a world model for a fixed compute budget.

    python -m models.train --config experiments/dit.toml --budget 5m --out runs/dit-baseline

Every run gets the same budget of compute, so runs compare by what they learn with it, not by how busy the
machine was (like autoresearch, but fair under load). On CPU the budget is the training loop's own CPU time,
all threads together: `--budget 5m` means 5 minutes on each of its threads, i.e. 300 CPU-seconds with the
default single thread (DEFAULT_THREADS says why one; OMP_NUM_THREADS=2 makes it 600). A run alone takes
about 5 minutes of wall time; other programs make it take longer for the same compute, so it trains as
much. On CUDA the budget is the loop's wall time (a dedicated GPU does not slow down when the CPU is busy).
The first step (lazy initialisation, allocator warm-up), startup, saving and the val loss are outside the
budget.

The learning rate warms up over `warmup_steps` and then follows a cosine over the budget's clock, so a run
always ends at the low learning rate whatever its speed. CPU runs use float32 on DEFAULT_THREADS threads;
CUDA runs use bf16 autocast, SDPA and optionally torch.compile.

Writes to --out: config.json, model.safetensors, ema.safetensors (when EMA is on), train_log.csv
(step, time_s on the budget's clock, wall_s, cpu_s, samples, loss, lr, samples_per_s) and metrics.json (the
compute used, the threads and the machine's load beside the results). A NaN or infinite loss stops the run
with exit code 3.
"""
# ruff: noqa: E402 - the OpenMP default below must precede `import torch`

from __future__ import annotations

import os

from models.openmp import DEFAULT_THREADS, apply_wait_policy

# libgomp reads its wait policy once, when torch is first imported: set it before (models/openmp.py says why).
# It takes effect where this module imports torch first (`python -m models.train`, not a test that imported
# torch before); the harness sets it in the training's environment anyway.
apply_wait_policy()

import argparse
import copy
import csv
import math
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
from models.config import ExperimentConfig, load_config, parse_duration
from models.data import load_split
from models.errors import EXIT_NAN, MissingCacheError, WorldloopError
from models.optim import build_optimizer
from models.strategies import (
    HOLDOUT_BATCH,
    Divergence,
    HighErrorSampler,
    LRRangeTest,
    PlateauCuts,
    held_out_loss,
    learning_rate,
    subset_size,
)
from models.vocab import NUM_ACTIONS
from models.world_model import WorldModel, to_tensor

VAL_LOSS_SAMPLES = 256


CLOCKS = ("auto", "cpu", "wall")


@dataclass
class TrainResult:
    steps: int
    samples: int
    train_seconds: float  # wall time of the whole loop, the warm-up step included
    final_loss: float
    val_loss: float | None
    clock: str = "cpu"
    cpu_seconds: float = 0.0  # CPU time of the budgeted loop (all threads)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def flush_subnormals() -> None:
    """Treat subnormal floats (below 1.2e-38 in float32) as zero, for the whole process. They appear as a
    model trains, and a CPU computes with them many times slower than with normal floats: a step of the
    DiT trained for 10 minutes took 136 ms, 102 ms with them flushed (the same weights and batches; the
    model at its start is not slowed). Zero is what they are, to the precision that training has."""
    torch.set_flush_denormal(True)


def cpu_threads() -> int:
    """A positive OMP_NUM_THREADS (the harness sets it), else DEFAULT_THREADS, capped by the cores this
    process may run on (its CPU affinity). Never os.cpu_count(): a run pinned to one core of a 2-core machine
    that starts 2 threads makes them take turns on that core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        wanted = int(os.environ.get("OMP_NUM_THREADS", "").split(",")[0])
    except ValueError:
        wanted = DEFAULT_THREADS
    return min(cores, wanted if wanted > 0 else DEFAULT_THREADS)


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores of the machine have been busy since boot (user, nice, system, irq, softirq of
    /proc/stat; idle, iowait and time stolen by a hypervisor are not busy), or None without /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Usage:
    """The clocks at one moment: wall, this process's CPU time (all threads), the machine's busy time and its
    1-minute load average. Two of them tell what the run got and what everyone else used meanwhile."""

    wall: float
    cpu: float
    machine_busy: float | None
    load: float | None

    @classmethod
    def now(cls) -> Usage:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return cls(time.perf_counter(), time.process_time(), machine_busy_seconds(), load)

    def others_cores(self, end: Usage) -> float | None:
        """Cores busy with other processes between this moment and `end`, on average."""
        wall = end.wall - self.wall
        if self.machine_busy is None or end.machine_busy is None or wall <= 0:
            return None
        others = (end.machine_busy - self.machine_busy) - (end.cpu - self.cpu)
        return max(0.0, others) / wall  # /proc/stat counts in ticks: clamp the rounding below zero


class BudgetClock:
    """The budget's clock: the process's CPU time (all threads) on the CPU clock, wall time on the wall clock.

    `budget_s` is in seconds of the run's cores, so on the CPU clock the budget is budget_s x threads
    CPU-seconds: CPU time counts what the run computed, not what it waited for while other programs ran. The
    clock starts at `start()` (after the warm-up step); before that nothing is used.
    """

    def __init__(self, kind: str, budget_s: float, threads: int) -> None:
        self.kind = kind
        self.budget_s = budget_s
        self.threads = threads if kind == "cpu" else 1  # clock seconds per second of budget
        self.begin: Usage | None = None

    @property
    def budget(self) -> float:
        """The budget in this clock's seconds (CPU-seconds on the CPU clock)."""
        return self.budget_s * self.threads

    def start(self) -> None:
        self.begin = Usage.now()

    def _now(self) -> float:
        return time.process_time() if self.kind == "cpu" else time.perf_counter()

    @property
    def used(self) -> float:
        """Clock seconds used since `start()`."""
        if self.begin is None:
            return 0.0
        return self._now() - (self.begin.cpu if self.kind == "cpu" else self.begin.wall)

    @property
    def elapsed(self) -> float:
        """Seconds of budget used, 0 to budget_s: what train_log.csv's time_s and the progress bar show."""
        return self.used / self.threads

    @property
    def spent(self) -> bool:
        return self.begin is not None and self.used >= self.budget

    @property
    def progress(self) -> float:
        return self.used / self.budget if self.budget > 0 else 1.0


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
    clock: str = "auto",
) -> TrainResult:
    """Train until the budget is spent, then save; raises NonFiniteLoss on NaN/inf (after saving logs).

    `clock` is "cpu" (the process's CPU time against budget_s x threads), "wall" (wall time against
    budget_s) or "auto": cpu on a CPU, wall on a GPU.
    """
    device = device or pick_device()
    tc = config.train
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG_FILE, config.model_dump(mode="json"))
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed)
    torch.set_num_threads(cpu_threads())
    flush_subnormals()
    threads = torch.get_num_threads()
    if clock == "auto":
        clock = "cpu" if device.type == "cpu" else "wall"
    budget = BudgetClock(clock, budget_s, threads)

    root = Path(dataset or config.data.dataset)
    train_split = load_split(root, config.canvas, "train", config.data.split())
    if len(train_split) == 0:
        raise WorldloopError(f"the train split of {root} has no canvases")
    canvases = torch.from_numpy(np.array(train_split.canvases))  # uint8, copied into RAM
    actions = torch.from_numpy(train_split.actions)

    model = build_model(config).to(device)
    ema = EMA(model, tc.ema_decay) if tc.ema_decay > 0 else None
    optimizer = build_optimizer(model, tc, device)
    loss_fn = model.loss
    if tc.compile and device.type == "cuda":
        loss_fn = torch.compile(model.loss)  # the models train through `loss`, not `forward`
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    generator = torch.Generator().manual_seed(tc.seed)
    plateau = PlateauCuts(tc.plateau_patience)
    divergence = Divergence(tc.divergence_patience) if tc.stop_on_divergence else None
    candidates = torch.arange(len(canvases))  # the canvases a step draws from: all, unless some are held out
    held = None
    if divergence is not None:
        shuffled = torch.randperm(len(canvases), generator=torch.Generator().manual_seed(tc.seed + 1))
        cut = max(1, int(len(canvases) * tc.holdout_share))
        held, candidates = shuffled[:cut][:HOLDOUT_BATCH], shuffled[cut:]
    # A growing subset is a prefix of one random order of the candidates.
    if tc.subset_start < 1:
        candidates = candidates[torch.randperm(len(candidates), generator=generator)]
    sampler = (
        HighErrorSampler(len(canvases), tc.high_error_share, generator)
        if tc.sampling == "high_error"
        else None
    )
    range_test = LRRangeTest(tc.lr_range_steps) if tc.lr_range_test else None
    initial = copy.deepcopy(model.state_dict()) if range_test else None
    schedule, schedule_start = tc, 0  # the lr schedule's settings and first step (after a range test)
    stopped_at = None

    log_file = open(out / "train_log.csv", "w", newline="")  # noqa: SIM115 - closed in finally
    log = csv.writer(log_file)
    log.writerow(["step", "time_s", "wall_s", "cpu_s", "samples", "loss", "lr", "samples_per_s"])
    step = samples = 0
    smoothed = float("nan")
    progress = _progress_bar(show_progress)
    task = progress.add_task("training", total=budget_s, loss=float("nan"), rate=0.0)
    begin = Usage.now()
    warmup_seconds = 0.0
    window_loss, window_steps = 0.0, 0
    last_log, last_wall, last_samples = 0.0, begin.wall, 0

    def log_row(loss: object, lr: object, rate: object) -> None:
        wall, cpu = time.perf_counter() - begin.wall, time.process_time() - begin.cpu
        times = [f"{budget.elapsed:.3f}", f"{wall:.3f}", f"{cpu:.3f}"]
        log.writerow([step, *times, samples, loss, lr, rate])

    try:
        with progress:
            while not budget.spent:
                testing = range_test is not None and range_test.running  # the lr range test's steps
                if testing:
                    lr = range_test.lr
                else:
                    lr = learning_rate(schedule, step - schedule_start, budget.progress, plateau.cuts)
                optimizer.set_lr(lr)
                active = candidates[: subset_size(tc, len(candidates), budget.progress)]  # all, or a subset
                if sampler is not None:
                    index = sampler.draw(active, tc.batch_size)
                else:
                    index = active[torch.randint(len(active), (tc.batch_size,), generator=generator)]
                batch = to_tensor(canvases[index], device)
                with autocast:
                    losses = loss_fn(batch, actions[index].to(device))  # per canvas (B,), or a scalar
                loss = losses.mean()
                value = loss.item()
                if testing and range_test.record(lr, value):
                    # the test is over: back to the initial weights, to train at the lr it found
                    model.load_state_dict(initial)
                    optimizer.reset()
                    schedule, schedule_start = tc.model_copy(update={"lr": range_test.found}), step
                    plateau = PlateauCuts(tc.plateau_patience)
                    if divergence is not None:
                        divergence = Divergence(tc.divergence_patience)
                    continue  # this step's loss belongs to the weights just replaced
                if not math.isfinite(value):
                    log_row(value, f"{lr:.3e}", "")
                    raise NonFiniteLoss(
                        f"loss became {value} at step {step} ({budget.elapsed:.0f}s of budget); lower the lr?"
                    )
                if sampler is not None:
                    if losses.dim() != 1:
                        raise WorldloopError(
                            "train.sampling = high_error needs the model's loss per canvas, shape (B,); "
                            f"it returned shape {tuple(losses.shape)}"
                        )
                    sampler.record(index, losses)
                optimizer.zero_grad()
                loss.backward()
                if tc.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                optimizer.step()
                if ema and not testing:
                    ema.update(model)
                step += 1
                samples += tc.batch_size
                if step == 1:  # the warm-up step (lazy init, allocator) trains but is outside the budget
                    warmup_seconds = time.perf_counter() - begin.wall
                    budget.start()
                window_loss += value
                window_steps += 1
                smoothed = value if math.isnan(smoothed) else 0.98 * smoothed + 0.02 * value
                if (elapsed := budget.elapsed) - last_log >= tc.log_every_s:
                    wall = time.perf_counter()
                    rate = (samples - last_samples) / max(wall - last_wall, 1e-9)
                    mean = window_loss / window_steps
                    log_row(f"{mean:.6f}", f"{lr:.3e}", f"{rate:.1f}")
                    log_file.flush()
                    window_loss, window_steps = 0.0, 0
                    last_log, last_wall, last_samples = elapsed, wall, samples
                    progress.update(task, completed=elapsed, loss=smoothed, rate=rate)
                    plateau.window(mean)
                    if divergence is not None and held is not None:
                        models = [model, ema.model] if ema else [model]
                        held_loss = held_out_loss(models[-1], canvases[held], actions[held], device)
                        if divergence.check(held_loss, mean, models):
                            divergence.restore(models)  # the weights of the best held-out check
                            stopped_at = step
                            break
            progress.update(task, completed=budget_s)
    finally:
        if window_steps:
            log_row(f"{window_loss / window_steps:.6f}", "", "")
        log_file.close()
    end = Usage.now()
    loop = budget.begin or end  # where the budget's clock started (after the warm-up step)
    train_seconds = end.wall - begin.wall
    cpu_seconds = end.cpu - loop.cpu
    others = loop.others_cores(end)

    save_weights(model, out / WEIGHTS_FILE)
    if ema:
        save_weights(ema.model, out / EMA_FILE)
    judged = ema.model if ema else model
    val_loss = validation_loss(judged, root, config, device)
    result = TrainResult(step, samples, train_seconds, smoothed, val_loss, clock, cpu_seconds)
    budgeted_samples = samples - tc.batch_size  # the warm-up step's samples were not on the clock
    write_json(
        out / "metrics.json",
        {
            "steps": step,
            "samples": samples,
            "clock": clock,
            "budget_seconds": budget_s,
            "budget_cpu_seconds": budget.budget if clock == "cpu" else None,
            "cpu_seconds": round(cpu_seconds, 3),
            "wall_seconds": round(end.wall - loop.wall, 3),
            "warmup_seconds": round(warmup_seconds, 3),
            "train_seconds": round(train_seconds, 3),
            "samples_per_s": round(samples / max(train_seconds, 1e-9), 2),
            "samples_per_cpu_s": round(budgeted_samples / cpu_seconds, 3) if cpu_seconds > 0 else None,
            "threads": threads,
            "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
            "load_start": None if loop.load is None else round(loop.load, 2),
            "load_end": None if end.load is None else round(end.load, 2),
            "others_cores": None if others is None else round(others, 3),
            "seed": tc.seed,
            "stopped_at_step": stopped_at,  # stop_on_divergence: where it stopped (None: the budget ended)
            "held_out_loss": divergence.best if divergence is not None and divergence.weights else None,
            "lr_found": range_test.found
            if range_test is not None
            else None,  # lr_range_test: the lr it chose
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
    optimizer = build_optimizer(model, config.train, device)
    loss = model.loss(batch, torch.from_numpy(split.actions[rows]).to(device)).mean()
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
        loss = model.loss(batch, torch.from_numpy(val.actions[chunk]).to(device)).mean()
        losses.append(loss.item() * len(chunk))
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
    parser.add_argument(
        "--budget",
        default="5m",
        help="training time on each of its threads, e.g. 90s, 5m, 1h (CPU time on CPU, wall on a GPU)",
    )
    parser.add_argument("--seed", type=int, default=None, help="override the config's [train] seed")
    parser.add_argument(
        "--clock",
        choices=CLOCKS,
        default="auto",
        help="what the budget counts: cpu (this process's CPU time), wall, or auto (cpu on CPU, wall on GPU)",
    )
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
        if args.seed is not None:
            config = config.model_copy(update={"train": config.train.model_copy(update={"seed": args.seed})})
        if args.smoke:
            loss = smoke(config, args.dataset, pick_device(args.device))
            err.print(f"smoke step ok: loss {loss:.4f}, predict shape ok", highlight=False)
            return
        device = pick_device(args.device)
        result = train(config, budget, args.out, args.dataset, device, not args.quiet, args.clock)
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
        f"trained {result.steps} steps ({result.samples} samples) in {result.train_seconds:.0f}s "
        f"({result.cpu_seconds:.0f} CPU-s on the {result.clock} clock); "
        f"loss {result.final_loss:.4f}, val loss {val} -> {args.out}",
        highlight=False,
        soft_wrap=True,
    )


if __name__ == "__main__":
    main()
