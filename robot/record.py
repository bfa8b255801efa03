"""Record LeRobot v3 datasets by driving an arm with random discrete actions.

`harness data synth` and `robot-record --sim` both land here, so simulated recordings and real ones share
one writer and one layout. Simulated episodes are independent and seeded per episode, so they render in
worker processes while the main process encodes them in order: the result does not depend on the number
of workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from models.episode import Episode
from models.lerobot import LeRobotWriter
from models.vocab import JOINT_NAMES, NUM_ACTIONS, PAN_MINUS, PAN_PLUS
from robot.sim import Observation, SimArm, SimConfig

Progress = Callable[[int, int], None]
"""Called with (episodes written, episodes total)."""


def random_action(rng: np.random.Generator, goal: float, limit: float) -> int:
    """Uniform over the actions, except that a move into a limit the goal already sits at turns around.

    Without this a random walk spends long stretches pressed against a limit, where `pan+`/`pan-` would look
    exactly like `stay`.
    """
    action = int(rng.integers(NUM_ACTIONS))
    if action == PAN_PLUS and goal >= limit - 1e-3:
        return PAN_MINUS
    if action == PAN_MINUS and goal <= -limit + 1e-3:
        return PAN_PLUS
    return action


def record_actions(
    arm,
    observation: Observation,
    num_actions: int,
    rng: np.random.Generator,
    frames_per_action: int,
    fps: float,
    pan_limit: float,
    meta: dict | None = None,
) -> Episode:
    """Drive any arm (SimArm, SO101Arm) with `num_actions` random discrete actions from `observation`.

    Frame t holds the observation, the goal right after the action was given, and the action held from t to
    t + 1: each action is given, then `frames_per_action` observations are taken while it holds.
    """
    total = num_actions * frames_per_action
    frames = {name: np.empty((total, *f.shape), np.uint8) for name, f in observation.frames.items()}
    state = np.empty((total, len(JOINT_NAMES)), np.float32)
    commanded = np.empty_like(state)
    actions = np.empty(num_actions, np.int64)
    for k in range(num_actions):
        actions[k] = random_action(rng, float(arm.commanded[0]), pan_limit)
        arm.act(int(actions[k]))
        for t in range(k * frames_per_action, (k + 1) * frames_per_action):
            for name, frame in observation.frames.items():
                frames[name][t] = frame
            state[t] = observation.state
            commanded[t] = arm.commanded
            observation = arm.observe()
    return Episode(
        frames=frames,
        state=state,
        action=commanded,
        discrete_action=np.repeat(actions, frames_per_action),
        fps=fps,
        meta={**(meta or {}), "actions": actions.tolist()},
    )


def record_episode(arm: SimArm, num_actions: int, rng: np.random.Generator, seed: int) -> Episode:
    """Reset the simulated `arm` with `seed` and record `num_actions` random actions.

    `rng` chooses the actions and `seed` the scene, so the same pair gives a bit-identical episode.
    """
    observation = arm.reset(seed)
    cfg = arm.config
    return record_actions(
        arm, observation, num_actions, rng, arm.frames_per_action, cfg.fps, cfg.pan_limit, {"sim": arm.scene}
    )


def episode_seed(seed: int, index: int) -> int:
    """A per-episode seed that does not collide across datasets made with neighbouring seeds."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def sim_episode(config: SimConfig, seed: int, index: int, num_actions: int) -> Episode:
    """Episode `index` of a simulated dataset recorded with `seed`, as `record_sim_dataset` makes it."""
    s = episode_seed(seed, index)
    return record_episode(SimArm(config, seed=s), num_actions, np.random.default_rng(s), seed=s)


def _sim_episodes(
    config: SimConfig, episodes: int, actions: int, seed: int, workers: int
) -> Iterator[Episode]:
    if workers <= 1 or episodes < 4:
        yield from (sim_episode(config, seed, i, actions) for i in range(episodes))
        return
    n = episodes
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(sim_episode, [config] * n, [seed] * n, range(n), [actions] * n, chunksize=2)


def record_sim_dataset(
    out: Path,
    episodes: int,
    actions_per_episode: int = 30,
    seed: int = 0,
    config: SimConfig | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write `episodes` simulated episodes of random actions to a LeRobot v3 dataset at `out`."""
    config = config or SimConfig()
    if episodes < 1 or actions_per_episode < 1:
        raise ValueError("need at least one episode of at least one action")
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    cameras = {cam: (config.frame_height, config.frame_width) for cam in config.cameras}
    with LeRobotWriter(Path(out), fps=config.fps, cameras=cameras, overwrite=overwrite) as writer:
        for done, episode in enumerate(
            _sim_episodes(config, episodes, actions_per_episode, seed, workers), 1
        ):
            writer.add_episode(episode)
            if progress:
                progress(done, episodes)
    return Path(out)
