"""`robot-center`: center the wrist camera on an object with a promoted world model, in sim or on the arm.

    robot-center --checkpoint best --sim --seed 3
    robot-center --checkpoint best --sim --hard --seed 1003      # one episode of the hard benchmark
    robot-center --checkpoint best --port /dev/ttyACM0 --camera 0 --base-camera 1 \\
        --calibration so101.json --target red [--dry-run]
    robot-center --checkpoint best --benchmark --episodes 50
"""

from __future__ import annotations

from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from models.errors import WorldloopError, run_command
from models.promoted import load_checkpoint
from robot.camera import CAMERA_HELP, camera_source
from robot.sim import PALETTE, SimArm, SimConfig

if TYPE_CHECKING:
    from robot.center import EpisodeResult

# The planner, the policy and the report import torch and matplotlib (2 s): each function imports what it
# runs, after the options are checked, so a mistyped option is answered at once.

console = Console()
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

CALIBRATION_OPTION = typer.Option(None, "--calibration", help="LeRobot calibration JSON of the arm")
OUT_OPTION = typer.Option(Path("reports/center"), "--out", help="where reports go")
ROOT_OPTION = typer.Option(Path("."), "--root", help="the project holding checkpoints/")


def _sim_episode(promoted, seed, target, settings, planner) -> tuple[EpisodeResult, str]:
    from robot.center import WorldModelPolicy, benchmark_start, run_episode
    from robot.planner import WRIST, largest_object

    sim = SimConfig()
    settings.frames_per_action = round(sim.action_duration * sim.fps)
    arm = SimArm(sim, seed=seed)
    if target is None:
        start = benchmark_start(arm, seed)
        if start is None:
            observation = arm.reset(seed)
            target = largest_object(observation.frames[WRIST])
            if target is None:
                raise WorldloopError(f"seed {seed}: no object in the wrist camera's view; try another --seed")
        else:
            observation, target = start
    else:
        observation = arm.reset(seed)
        if target not in [o["color"] for o in arm.object_offsets()]:
            colors = ", ".join(o["color"] for o in arm.object_offsets())
            raise WorldloopError(f"seed {seed}: the scene has no {target} object; it has {colors}")
    result = run_episode(
        arm, WorldModelPolicy(promoted, planner), target, observation, settings, keep_frames=True
    )
    return result, f"sim seed {seed}"


def _hard_sim_episode(promoted, seed, settings, planner) -> tuple[EpisodeResult, str]:
    """The hard benchmark's start for `seed` (robot/center_episodes.py), to look at one of its episodes."""
    from robot.center import WorldModelPolicy, run_start
    from robot.center_episodes import make_start

    sim = SimConfig()
    settings.frames_per_action = round(sim.action_duration * sim.fps)
    arm = SimArm(sim, seed=seed)
    start = make_start(arm, seed)
    policy = WorldModelPolicy(promoted, planner)
    result = run_start(arm, policy, start, settings, keep_frames=True)
    return result, f"sim seed {seed}, hard start ({start.kind}, decoy {start.decoy})"


def _real_episode(promoted, port, camera, base_camera, calibration, target, dry_run, settings, planner):
    from robot.camera import Camera
    from robot.center import WorldModelPolicy, run_episode
    from robot.planner import WRIST, largest_object
    from robot.so101 import SO101Arm

    if calibration is None:
        raise WorldloopError(
            "the real arm needs --calibration (the LeRobot calibration JSON of the follower)"
        )
    needed = list(promoted.config.canvas.cameras)
    given = {WRIST: camera, "base": base_camera}
    sources = {name: camera_source(text) for name, text in given.items() if text is not None}
    missing = [c for c in needed if c not in sources]
    if missing:
        raise WorldloopError(f"the model's canvas needs cameras {needed}: give --{missing[0]}-camera")
    canvas = promoted.config.canvas
    with ExitStack() as stack:
        cameras = {
            name: stack.enter_context(Camera(sources[name], canvas.frame_width, canvas.frame_height))
            for name in needed
        }
        arm = stack.enter_context(SO101Arm(port, calibration, dry_run=dry_run, cameras=cameras))
        observation = arm.observe()
        target = target or largest_object(observation.frames[WRIST])
        if target is None:
            raise WorldloopError("no object in the wrist camera's view: name one with --target")
        policy = WorldModelPolicy(promoted, planner)
        result = run_episode(arm, policy, target, observation, settings, keep_frames=True)
    return result, f"SO-101 on {port}" + (" (dry run)" if dry_run else "")


@app.command()
def center(
    checkpoint: str = typer.Option("best", help="promoted alias or run id, a checkpoint or run directory"),
    sim: bool = typer.Option(False, "--sim", help="run in the simulator"),
    seed: int = typer.Option(0, help="simulator scene"),
    port: str = typer.Option(None, help="serial port of the arm's bus, e.g. /dev/ttyACM0"),
    camera: str = typer.Option("0", help=f"wrist camera: {CAMERA_HELP}"),
    base_camera: str = typer.Option(
        None, "--base-camera", help=f"base camera, when the model's canvas has one: {CAMERA_HELP}"
    ),
    calibration: Path = CALIBRATION_OPTION,
    target: str = typer.Option(
        None, help=f"object color: {', '.join(PALETTE)} (default: the largest in view)"
    ),
    max_steps: int = typer.Option(None, "--max-steps", help="actions at most [20; benchmark: 16]"),
    horizon: int = typer.Option(2, help="actions planned ahead (3^H sequences per step)"),
    tolerance: float = typer.Option(None, help="centered within this many half-widths [0.15]"),
    hold: int = typer.Option(None, help="centered steps in a row that count as done [2; benchmark: 3]"),
    dry_run: bool = typer.Option(False, "--dry-run", help="real arm: log commands, move nothing"),
    benchmark: bool = typer.Option(
        False, "--benchmark", help="sim success rate on the hard starts: planner vs random vs oracle"
    ),
    episodes: int = typer.Option(50, help="benchmark episodes (one seeded start each)"),
    hard: bool = typer.Option(
        False, "--hard", help="with --sim: the hard benchmark's start for --seed, and its success rule"
    ),
    out: Path = OUT_OPTION,
    root: Path = ROOT_OPTION,
) -> None:
    """Center the wrist camera's view on an object with a world model."""
    if target is not None and target not in PALETTE:
        raise WorldloopError(f"unknown target {target!r}; colors: {', '.join(PALETTE)}")
    if hard and target is not None:
        raise WorldloopError("--hard starts choose their own target; leave out --target")
    if not (benchmark or sim or port):
        raise WorldloopError("say where to run: --sim, or --port for the real arm (or --benchmark)")
    promoted = load_checkpoint(checkpoint, root)
    from robot.center import CenterSettings, hard_settings
    from robot.center_benchmark import print_stats, run_benchmark
    from robot.center_report import write_report
    from robot.planner import PlannerConfig

    settings = hard_settings() if benchmark or hard else CenterSettings()
    given = {"max_steps": max_steps, "tolerance": tolerance, "hold": hold}
    for name, value in given.items():
        if value is not None:
            setattr(settings, name, value)
    planner = PlannerConfig(horizon=horizon, tolerance=settings.tolerance)
    source = f"{promoted.run_id} ({promoted.path})"
    if benchmark:
        stats = run_benchmark([(promoted.run_id, promoted)], episodes, settings, (horizon,))
        print_stats(stats, f"centering in simulation, {episodes} hard starts, model {promoted.run_id}")
        return
    if sim and hard:
        result, where = _hard_sim_episode(promoted, seed, settings, planner)
    elif sim:
        result, where = _sim_episode(promoted, seed, target, settings, planner)
    else:
        result, where = _real_episode(
            promoted, port, camera, base_camera, calibration, target, dry_run, settings, planner
        )
    name = f"center-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    report = write_report(
        result, settings, out / name, f"Centering on the {result.target} object: {where}", source
    )
    word = "centered" if result.success else "not centered"
    console.print(
        f"[{'green' if result.success else 'yellow'}]{word}[/] the {result.target} object"
        + (f" in {result.steps_to_center} steps" if result.success else f" after {settings.max_steps} steps")
        + f" (final offset {result.final_offset:+.3f}); report: {report}"
    )


def main() -> None:
    run_command(lambda: app(prog_name="robot-center"))


if __name__ == "__main__":
    main()
