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
from robot.sim import SimArm, SimConfig, record_episode

Progress = Callable[[int, int], None]
"""Called with (episodes written, episodes total)."""


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
