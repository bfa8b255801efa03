"""`robot-center`: center the wrist camera on an object with a promoted world model, in sim or on the arm.

    robot-center --checkpoint best --sim --seed 3
    robot-center --checkpoint best --port /dev/ttyACM0 --camera 0 --base-camera 1 \\
        --calibration so101.json --target red [--dry-run]
    robot-center --checkpoint best --benchmark --episodes 50
"""

from __future__ import annotations

import statistics
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from models.errors import WorldloopError, run_command
from models.promoted import PromotedModel, load_checkpoint
from robot.camera import CAMERA_HELP, camera_source
from robot.center import (
    CenterSettings,
    EpisodeResult,
    OraclePolicy,
    Policy,
    RandomPolicy,
    WorldModelPolicy,
    benchmark_start,
    benchmark_starts,
    run_episode,
)
from robot.center_report import write_report
from robot.planner import WRIST, PlannerConfig, largest_object
from robot.sim import PALETTE, SimArm, SimConfig

console = Console()
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

CALIBRATION_OPTION = typer.Option(None, "--calibration", help="LeRobot calibration JSON of the arm")
OUT_OPTION = typer.Option(Path("reports/center"), "--out", help="where reports go")
ROOT_OPTION = typer.Option(Path("."), "--root", help="the project holding checkpoints/")


@dataclass
class PolicyStats:
    name: str
    episodes: int
    success: float
    median_steps: float | None
    plan_ms_median: float | None
    plan_ms_p95: float | None


def run_benchmark(
    promoted: PromotedModel, episodes: int, settings: CenterSettings, planner: PlannerConfig, seed: int = 1000
) -> list[PolicyStats]:
    """The same seeded starts for the world-model planner, a random policy and the ground-truth oracle."""
    sim = SimConfig()
    settings.frames_per_action = round(sim.action_duration * sim.fps)
    arm = SimArm(sim, seed=seed)
    starts = benchmark_starts(arm, episodes, seed)
    policies: list[Policy] = [
        WorldModelPolicy(promoted, planner),
        RandomPolicy(seed),
        OraclePolicy(arm, settings.tolerance),
    ]
    stats = []
    for policy in policies:
        results: list[EpisodeResult] = []
        for episode_seed, target in starts:
            observation = arm.reset(episode_seed)
            results.append(run_episode(arm, policy, target, observation, settings))
        steps = [r.steps_to_center for r in results if r.success]
        ms = sorted(m for r in results for m in r.plan_ms)
        stats.append(
            PolicyStats(
                name=policy.name,
                episodes=len(results),
                success=sum(r.success for r in results) / len(results),
                median_steps=statistics.median(steps) if steps else None,
                plan_ms_median=statistics.median(ms) if ms else None,
                plan_ms_p95=ms[int(0.95 * (len(ms) - 1))] if ms else None,
            )
        )
    return stats


def print_stats(stats: list[PolicyStats], title: str) -> None:
    table = Table(title=title)
    for column in ("policy", "episodes", "success", "median steps", "plan ms (median)", "plan ms (p95)"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for s in stats:
        table.add_row(
            s.name,
            str(s.episodes),
            f"{s.success:.0%}",
            "-" if s.median_steps is None else f"{s.median_steps:g}",
            "-" if s.plan_ms_median is None else f"{s.plan_ms_median:.0f}",
            "-" if s.plan_ms_p95 is None else f"{s.plan_ms_p95:.0f}",
        )
    console.print(table)


def _sim_episode(promoted, seed, target, settings, planner) -> tuple[EpisodeResult, str]:
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


def _real_episode(promoted, port, camera, base_camera, calibration, target, dry_run, settings, planner):
    from robot.camera import Camera
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
    max_steps: int = typer.Option(20, "--max-steps"),
    horizon: int = typer.Option(2, help="actions planned ahead (3^H sequences per step)"),
    tolerance: float = typer.Option(0.15, help="centered within this many half-widths"),
    hold: int = typer.Option(2, help="centered steps in a row that count as done"),
    dry_run: bool = typer.Option(False, "--dry-run", help="real arm: log commands, move nothing"),
    benchmark: bool = typer.Option(
        False, "--benchmark", help="sim success rate: planner vs random vs oracle"
    ),
    episodes: int = typer.Option(50, help="benchmark episodes"),
    out: Path = OUT_OPTION,
    root: Path = ROOT_OPTION,
) -> None:
    """Center the wrist camera's view on an object with a world model."""
    if target is not None and target not in PALETTE:
        raise WorldloopError(f"unknown target {target!r}; colors: {', '.join(PALETTE)}")
    promoted = load_checkpoint(checkpoint, root)
    settings = CenterSettings(max_steps=max_steps, tolerance=tolerance, hold=hold)
    planner = PlannerConfig(horizon=horizon, tolerance=tolerance)
    source = f"{promoted.run_id} ({promoted.path})"
    if benchmark:
        stats = run_benchmark(promoted, episodes, settings, planner)
        print_stats(stats, f"centering in simulation, {episodes} seeded episodes, model {promoted.run_id}")
        return
    if sim:
        result, where = _sim_episode(promoted, seed, target, settings, planner)
    elif port:
        result, where = _real_episode(
            promoted, port, camera, base_camera, calibration, target, dry_run, settings, planner
        )
    else:
        raise WorldloopError("say where to run: --sim, or --port for the real arm (or --benchmark)")
    name = f"center-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    report = write_report(
        result, settings, out / name, f"Centering on the {result.target} object: {where}", source
    )
    word = "centered" if result.success else "not centered"
    console.print(
        f"[{'green' if result.success else 'yellow'}]{word}[/] the {result.target} object"
        + (f" in {result.steps_to_center} steps" if result.success else f" after {max_steps} steps")
        + f" (final offset {result.final_offset:+.3f}); report: {report}"
    )


def main() -> None:
    run_command(lambda: app(prog_name="robot-center"))


if __name__ == "__main__":
    main()
