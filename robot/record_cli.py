"""`robot-record`: drive the arm (or the simulator) with random discrete actions and record a LeRobot v3.0
dataset with the same writer as `harness data synth`, so real recordings go straight into a night.

    robot-record --sim --episodes 50 --out data/sim50
    robot-record --port /dev/ttyACM0 --calibration so101.json --camera 0 --base-camera 1 \\
        --episodes 10 --out data/real
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.progress import Progress

from models.errors import WorldloopError, run_command
from models.lerobot import LeRobotWriter
from robot.camera import CAMERA_HELP, Camera, camera_source
from robot.record import FramePacer, episode_seed, record_actions, record_sim_dataset
from robot.sim import SimConfig

console = Console()
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

OUT_OPTION = typer.Option(..., "--out", help="dataset directory to write")
CALIBRATION_OPTION = typer.Option(None, "--calibration", help="LeRobot calibration JSON of the arm")


@app.command()
def record(
    out: Path = OUT_OPTION,
    sim: bool = typer.Option(False, "--sim", help="record the simulator"),
    port: str = typer.Option(None, help="serial port of the arm's bus, e.g. /dev/ttyACM0"),
    calibration: Path = CALIBRATION_OPTION,
    camera: str = typer.Option("0", help=f"wrist camera: {CAMERA_HELP}"),
    base_camera: str = typer.Option(None, "--base-camera", help=f"base camera (optional): {CAMERA_HELP}"),
    episodes: int = typer.Option(10, min=1),
    actions_per_episode: int = typer.Option(30, "--actions-per-episode", min=1),
    seed: int = typer.Option(0, help="chooses the actions (and, in sim, the scenes)"),
    fps: int = typer.Option(30, help="camera frames per second"),
    action_duration: float = typer.Option(0.5, "--action-duration", help="seconds each action is held"),
    frame_size: int = typer.Option(64, "--frame-size", help="frames are stored at this width and height"),
    pan_step: float = typer.Option(4.8, "--pan-step", help="normalized units one pan action moves"),
    pan_limit: float = typer.Option(63.6, "--pan-limit", help="+- normalized limit of the pan goal"),
    dry_run: bool = typer.Option(False, "--dry-run", help="real arm: log commands, move nothing"),
    overwrite: bool = typer.Option(False, help="replace an existing dataset at --out"),
) -> None:
    """Record random discrete actions as a LeRobot v3.0 dataset."""
    if sim:
        config = SimConfig(
            fps=fps,
            action_duration=action_duration,
            frame_width=frame_size,
            frame_height=frame_size,
            pan_step=pan_step,
            pan_limit=pan_limit,
        )
        with Progress(console=console) as progress:
            task = progress.add_task("recording", total=episodes)
            record_sim_dataset(
                out,
                episodes,
                actions_per_episode,
                seed,
                config,
                overwrite,
                progress=lambda done, _: progress.update(task, completed=done),
            )
    elif port:
        arm = ArmSetup(
            port,
            calibration,
            camera,
            base_camera,
            fps,
            action_duration,
            frame_size,
            pan_step,
            pan_limit,
            dry_run,
        )
        _record_arm(arm, out, episodes, actions_per_episode, seed, overwrite)
    else:
        raise WorldloopError("say what to record: --sim, or --port for the real arm")
    console.print(f"[green]recorded[/green] {episodes} episodes to {out}")


@dataclass
class ArmSetup:
    """How to reach the real arm and its cameras, and how to drive it."""

    port: str
    calibration: Path | None
    camera: str
    base_camera: str | None
    fps: int
    action_duration: float
    frame_size: int
    pan_step: float
    pan_limit: float
    dry_run: bool


def _record_arm(setup: ArmSetup, out: Path, episodes: int, actions: int, seed: int, overwrite: bool) -> None:
    from robot.so101 import SO101Arm

    if setup.calibration is None:
        raise WorldloopError(
            "the real arm needs --calibration (the LeRobot calibration JSON of the follower)"
        )
    frames_per_action = round(setup.action_duration * setup.fps)
    if frames_per_action < 1:
        raise WorldloopError("--action-duration x --fps must be at least one frame")
    given = {"wrist": setup.camera, "base": setup.base_camera}
    sources = {name: camera_source(text) for name, text in given.items() if text is not None}
    size = setup.frame_size
    with ExitStack() as stack:
        cameras = {
            name: stack.enter_context(Camera(src, size, size, setup.fps)) for name, src in sources.items()
        }
        arm = stack.enter_context(
            SO101Arm(
                setup.port,
                setup.calibration,
                dry_run=setup.dry_run,
                cameras=cameras,
                pan_step=setup.pan_step,
                pan_limit=setup.pan_limit,
            )
        )
        shapes = {name: (size, size) for name in cameras}
        writer = stack.enter_context(
            LeRobotWriter(
                Path(out), fps=setup.fps, cameras=shapes, overwrite=overwrite, measured_time_column=True
            )
        )
        pacer = FramePacer(setup.fps)
        with Progress(console=console) as progress:
            task = progress.add_task("recording", total=episodes)
            for index in range(episodes):
                rng = np.random.default_rng(episode_seed(seed, index))
                episode = record_actions(
                    arm,
                    pacer.start(arm),
                    actions,
                    rng,
                    frames_per_action,
                    setup.fps,
                    setup.pan_limit,
                    {"port": setup.port},
                    pacer,
                )
                writer.add_episode(episode)
                progress.update(task, completed=index + 1)


def main() -> None:
    run_command(lambda: app(prog_name="robot-record"))


if __name__ == "__main__":
    main()
