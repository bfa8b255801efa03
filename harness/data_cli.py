"""`harness data ...`: make simulated recordings, build canvas caches, look at canvases, describe datasets."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from models.canvas import CanvasConfig
from models.data import (
    SPLITS,
    SplitConfig,
    build_cache,
    cache_dir,
    episode_samples,
    load_split,
    read_index,
    split_episodes,
)
from models.lerobot import LeRobotReader
from models.vocab import ACTION_NAMES, BUFFER

app = typer.Typer(help="Datasets: simulate, cache canvases, show, describe.", no_args_is_help=True)
console = Console(soft_wrap=True)

DatasetDir = Annotated[Path, typer.Argument(help="A LeRobot v3.0 dataset directory.")]
Cameras = Annotated[str, typer.Option(help="Comma-separated cameras stacked on the canvas, top first.")]
FrameSize = Annotated[int, typer.Option(help="Canvas frame width and height in pixels.")]
History = Annotated[int, typer.Option(help="Context steps before the target step.")]
SplitSeed = Annotated[int, typer.Option(help="Seed of the episode-level train/val/test split.")]


@contextmanager
def _progress(description: str, total: int) -> Iterator:
    """A rich progress bar; yields a callback taking (done, total)."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda done, n: progress.update(task, completed=done, total=n)


ExperimentFile = Annotated[
    Path | None,
    typer.Option(
        "--config", help="Take the canvas and split from this experiment TOML instead of the flags."
    ),
]


def _canvas_config(cameras: str, frame_size: int, history: int) -> CanvasConfig:
    return CanvasConfig(
        cameras=tuple(c.strip() for c in cameras.split(",") if c.strip()),
        frame_width=frame_size,
        frame_height=frame_size,
        history=history,
    )


@app.command()
def synth(
    episodes: Annotated[int, typer.Option(min=1, help="Episodes to record.")] = 200,
    out: Annotated[Path, typer.Option(help="Dataset directory to write.")] = Path("data/sim"),
    actions_per_episode: Annotated[int, typer.Option(min=1, help="Discrete actions per episode.")] = 30,
    frame_size: Annotated[int, typer.Option(min=16, help="Camera frame width and height.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the scenes and the random actions.")] = 0,
    workers: Annotated[int, typer.Option(min=1, help="Processes rendering episodes.")] = 2,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset at --out.")] = False,
) -> None:
    """Record simulated SO-101 episodes with random pan actions as a LeRobot v3.0 dataset."""
    from robot.record import record_sim_dataset
    from robot.sim import SimConfig

    config = SimConfig(frame_width=frame_size, frame_height=frame_size)
    with _progress("simulating", episodes) as progress:
        record_sim_dataset(out, episodes, actions_per_episode, seed, config, overwrite, workers, progress)
    reader = LeRobotReader(out)
    console.print(
        f"wrote [bold]{out}[/bold]: {reader.num_episodes} episodes, {reader.total_frames} frames, "
        f"cameras {', '.join(reader.cameras)} ({_size_mb(out):.1f} MB)"
    )


@app.command()
def build(
    dataset: DatasetDir,
    cameras: Cameras = "wrist,base",
    frame_size: FrameSize = 64,
    history: History = 1,
    split_seed: SplitSeed = 0,
    experiment: ExperimentFile = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if a valid cache exists.")] = False,
) -> None:
    """Build the canvas cache of a dataset (each split's canvases in one checksummed file)."""
    if experiment is not None:
        from models.config import load_config

        loaded = load_config(experiment)
        config, split = loaded.canvas, loaded.data.split()
    else:
        config, split = _canvas_config(cameras, frame_size, history), SplitConfig(seed=split_seed)
    directory = _ensure_cache(dataset, config, split, force)
    counts = {name: entry["count"] for name, entry in read_index(directory)["splits"].items()}
    console.print(
        f"canvas cache [bold]{directory}[/bold]: "
        + ", ".join(f"{name} {n}" for name, n in counts.items())
        + f" canvases of {config.layout.width}x{config.layout.height}"
    )


def _ensure_cache(dataset: Path, config: CanvasConfig, split: SplitConfig, force: bool = False) -> Path:
    """The cache directory; a progress bar only when there is something to build."""
    if not force and (cache_dir(dataset, config, split) / "index.json").exists():
        return build_cache(dataset, config, split)  # verifies checksums, builds nothing
    with _progress("building canvases", LeRobotReader(dataset).num_episodes) as progress:
        return build_cache(dataset, config, split, progress=progress, force=force)


@app.command()
def show(
    dataset: DatasetDir,
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("canvases.png"),
    split: Annotated[str, typer.Option(help="Split to draw from: train, val or test.")] = "train",
    count: Annotated[int, typer.Option(min=1, max=64, help="Canvases in the grid.")] = 12,
    seed: Annotated[int, typer.Option(help="Seed of the sample choice.")] = 0,
    cameras: Cameras = "wrist,base",
    frame_size: FrameSize = 64,
    history: History = 1,
    split_seed: SplitSeed = 0,
) -> None:
    """Draw a grid of canvases a person can look at (builds the cache first if needed)."""
    from harness.plots import canvas_grid

    if split not in SPLITS:
        raise typer.BadParameter(f"{split!r} is not one of {', '.join(SPLITS)}", param_hint="--split")
    config = _canvas_config(cameras, frame_size, history)
    _ensure_cache(dataset, config, SplitConfig(seed=split_seed))
    data = load_split(dataset, config, split, SplitConfig(seed=split_seed))
    if len(data) == 0:
        console.print(f"[yellow]the {split} split has no canvases[/yellow]")
        raise typer.Exit(1)
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(len(data), size=min(count, len(data)), replace=False))
    titles = [
        f"ep {data.episode[i]} · frames {' → '.join(map(str, data.frames[i]))}\n"
        + " → ".join(ACTION_NAMES[a] for a in data.actions[i])
        for i in picks
    ]
    canvas_grid(np.asarray(data.canvases[picks]), titles, config, out)
    console.print(f"wrote [bold]{out}[/bold] ({len(picks)} {split} canvases)")


@app.command()
def info(dataset: DatasetDir, history: History = 1, split_seed: SplitSeed = 0) -> None:
    """Episodes, frames, cameras, action counts and split sizes of a dataset."""
    reader = LeRobotReader(dataset)
    config = CanvasConfig(history=history)  # which samples exist depends on history and timing only
    splits = split_episodes(reader.num_episodes, SplitConfig(seed=split_seed))

    frame_counts = np.zeros(len(ACTION_NAMES) + 1, dtype=np.int64)
    samples_per_episode = np.zeros(reader.num_episodes, dtype=np.int64)
    interval_counts = np.zeros(len(ACTION_NAMES), dtype=np.int64)
    for i in range(reader.num_episodes):
        episode = reader.read_tabular(i)
        actions = episode.discrete_action
        frame_counts[:-1] += np.bincount(actions[actions != BUFFER], minlength=len(ACTION_NAMES))
        frame_counts[-1] += int((actions == BUFFER).sum())
        samples = episode_samples(i, episode, config)
        samples_per_episode[i] = len(samples.frames)
        interval_counts += np.bincount(samples.actions[:, -1], minlength=len(ACTION_NAMES))

    table = Table(title=str(dataset), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row(
        "format", f"LeRobot {reader.info.get('codebase_version')}, robot {reader.info.get('robot_type')}"
    )
    table.add_row("episodes", f"{reader.num_episodes} ({reader.total_frames} frames at {reader.fps} fps)")
    lengths = reader.episode_lengths
    table.add_row("episode length", f"{lengths.min()}–{lengths.max()} frames (mean {lengths.mean():.0f})")
    table.add_row("cameras", ", ".join(f"{cam} {_camera_size(reader, cam)}" for cam in reader.cameras))
    table.add_row("joints", ", ".join(reader.joint_names))
    table.add_row("actions from", reader.action_source)
    table.add_row(
        "action frames",
        ", ".join(f"{name} {n}" for name, n in zip(ACTION_NAMES, frame_counts[:-1], strict=True))
        + (f", buffer {frame_counts[-1]}" if frame_counts[-1] else ""),
    )
    table.add_row(
        "canvas samples",
        f"{samples_per_episode.sum()} (history {history}; target action "
        + ", ".join(f"{name} {n}" for name, n in zip(ACTION_NAMES, interval_counts, strict=True))
        + ")",
    )
    for name in SPLITS:
        ids = splits[name]
        table.add_row(f"{name} split", f"{len(ids)} episodes, {samples_per_episode[ids].sum()} canvases")
    table.add_row("size on disk", f"{_size_mb(dataset):.1f} MB")
    console.print(table)


def _camera_size(reader: LeRobotReader, camera: str) -> str:
    shape = reader.info["features"][f"observation.images.{camera}"]["shape"]
    return f"{shape[1]}x{shape[0]}"


def _size_mb(root: Path) -> float:
    return (
        sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file() and ".cache" not in p.parts) / 1e6
    )
