"""Record LeRobot v3 datasets by driving an arm with random discrete actions.

`harness data synth` and `robot-record --sim` both land here, so simulated recordings and real ones share
one writer and one layout. Simulated episodes are independent and seeded per episode, so they render in
worker processes while the main process encodes them in order: the result does not depend on the number
of workers.

A real arm is paced (`FramePacer`): frame t is taken at t / fps of real time, so each action is held for its
duration and the dataset's timestamps (k / fps) describe when the frames were taken.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np

from models.episode import Episode
from models.lerobot import LeRobotWriter
from models.vocab import JOINT_NAMES, NUM_ACTIONS, PAN_MINUS, PAN_PLUS
from robot.sim import Observation, SimArm, SimConfig

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called with (episodes written, episodes total)."""

SPIN_S = 0.002
"""The last part of a wait that `WallClock.sleep` busy-waits instead of sleeping."""


class Clock(Protocol):
    """Where the recording loop reads the time and waits: the wall clock, or a fake one in tests."""

    def now(self) -> float:
        """Seconds from an arbitrary origin; only differences matter."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait `seconds` (nothing when <= 0)."""
        ...


class WallClock:
    """time.perf_counter, and a sleep that is precise to well under a millisecond.

    time.sleep alone can overshoot by a scheduler tick or more on a busy machine, a noticeable part of a
    33 ms frame, so the last `SPIN_S` of each wait spins on the clock instead (as LeRobot's precise_sleep).
    """

    def now(self) -> float:
        return time.perf_counter()

    def sleep(self, seconds: float) -> None:
        end = time.perf_counter() + seconds
        if seconds > SPIN_S:
            time.sleep(seconds - SPIN_S)
        while time.perf_counter() < end:
            pass


class Arm(Protocol):
    """What recording needs of an arm: SimArm and SO101Arm both have it."""

    @property
    def commanded(self) -> np.ndarray: ...

    def act(self, action: int) -> None: ...

    def observe(self) -> Observation: ...


class FramePacer:
    """Takes an episode's frames on a fixed schedule: frame t is asked for at t / fps after frame 0.

    A real arm moves in real time while nothing in the loop waits on its own (file cameras return at once, a
    30 fps camera returns at 30 fps whatever --fps says), so without pacing an action's frames cover the wrong
    stretch of motion and the k / fps timestamps are wrong. The deadlines are absolute rather than LeRobot's
    "sleep what is left of 1/fps after each frame": the same while the loop keeps up, but one late frame does
    not delay every later one, so actions are still held for their duration and the timestamps stay on time.

    `times` are the measured request times of the frames since frame 0. A frame later than `tolerance_s`
    (default half a frame: it is then nearer the next frame's timestamp than its own) counts as late.
    """

    def __init__(self, fps: float, clock: Clock | None = None, tolerance_s: float | None = None):
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = fps
        self.period = 1.0 / fps
        self.clock: Clock = clock or WallClock()
        self.tolerance_s = 0.5 * self.period if tolerance_s is None else tolerance_s
        self.times: list[float] = []
        self._start = 0.0

    def start(self, arm: Arm) -> Observation:
        """Frame 0 of a new episode, now: the episode's time starts here."""
        self._start = self.clock.now()
        self.times = [0.0]
        return arm.observe()

    def observe(self, arm: Arm) -> Observation:
        """The next frame: wait for its slot (unless already late), note the time, observe.

        The first call of a pacer that was never started starts the episode, as `start` does."""
        if not self.times:
            return self.start(arm)
        deadline = self._start + len(self.times) * self.period
        self.clock.sleep(deadline - self.clock.now())
        self.times.append(self.clock.now() - self._start)
        return arm.observe()

    def lateness(self, frames: int) -> np.ndarray:
        """(frames,) seconds each of the first `frames` frames was asked for after its slot."""
        return np.asarray(self.times[:frames]) - np.arange(frames) * self.period

    def late_frames(self, frames: int) -> int:
        """How many of the first `frames` frames were later than the tolerance."""
        return int((self.lateness(frames) > self.tolerance_s).sum())

    def late_summary(self, frames: int) -> str | None:
        """One line on the frames later than the tolerance, or None when the loop kept up."""
        late = self.late_frames(frames)
        if not late:
            return None
        worst = float(self.lateness(frames).max())
        return (
            f"{late} of {frames} frames were late by more than {_ms(self.tolerance_s)} "
            f"(worst {_ms(worst)}): the recording loop cannot keep up with "
            f"{self.fps:g} fps; try a lower fps or fewer cameras"
        )


def _ms(seconds: float) -> str:
    """Milliseconds for a message: whole ones, or one decimal below 10 ms (half a frame at 100+ fps)."""
    ms = 1000 * seconds
    return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"


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
    arm: Arm,
    observation: Observation,
    num_actions: int,
    rng: np.random.Generator,
    frames_per_action: int,
    fps: float,
    pan_limit: float,
    meta: dict | None = None,
    pacer: FramePacer | None = None,
) -> Episode:
    """Drive any arm (SimArm, SO101Arm) with `num_actions` random discrete actions from `observation`.

    Frame t holds the observation, the goal right after the action was given, and the action held from t to
    t + 1: each action is given, then `frames_per_action` observations are taken while it holds.

    A real arm needs a `pacer`, whose `start` gave `observation`: each later observation waits for its
    frame's slot, the measured frame times go to the episode's `frame_times` (a dataset column), and frames
    the loop could not take on time are warned about once, at the end. The simulator needs none: its
    observe() advances exactly 1/fps.
    """
    if pacer is not None and pacer.fps != fps:
        raise ValueError(f"the pacer runs at {pacer.fps:g} fps, the episode at {fps:g}")
    observe = arm.observe if pacer is None else partial(pacer.observe, arm)
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
            observation = observe()
    meta = {**(meta or {}), "actions": actions.tolist()}
    if pacer is not None:
        meta["late_frames"] = _check_pace(pacer, total)
    return Episode(
        frames=frames,
        state=state,
        action=commanded,
        discrete_action=np.repeat(actions, frames_per_action),
        fps=fps,
        meta=meta,
        frame_times=None if pacer is None else np.asarray(pacer.times[:total]),
    )


def _check_pace(pacer: FramePacer, frames: int) -> int:
    """How many frames were late, warning (one line) when any were."""
    summary = pacer.late_summary(frames)
    if summary:
        log.warning(summary)
    return pacer.late_frames(frames)


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
