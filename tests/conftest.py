"""Shared fixtures: one small real simulated dataset per session, copied where a test must damage it, and one
real night of the loop (tests/night_project.py) that the loop, promotion and report tests all read."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from harness.agents.replay import ReplayAgent, write_replay
from harness.executor import split_cores
from harness.loop import Night
from harness.paths import NightPaths
from models.canvas import CanvasConfig
from models.data import build_cache
from robot.record import record_sim_dataset
from robot.sim import SimConfig
from tests.helpers import SMALL_CANVAS
from tests.night_project import EXPECTED, PROPOSALS, make_project, tiny_night

# Tiny test models run fastest on one thread, and the suite must not fight a training run for two cores.
torch.set_num_threads(1)


def _pin_xdist_worker() -> None:
    """Under xdist with no more workers than cores, each worker, and every subprocess it starts, runs on
    cores of its own (`split_cores`, as runs of a night side by side). `make test` runs more workers than
    cores (3 on 2): much of the suite waits (on timeouts, kills, servers starting), and a third worker fills
    those waits; the workers are then left to the kernel to balance (every training uses one thread anyway,
    models/openmp.py). On this machine, one after another: 210 s with 3 workers taking the cores in turn,
    202 s with 3 unpinned; 2 pinned workers took 242 s before two nights of the parallel tests were merged."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if worker.startswith("gw") and 1 < count <= len(cores):
        os.sched_setaffinity(0, split_cores(cores, count)[int(worker[2:]) % count])


_pin_xdist_worker()


NIGHT_FILES = ("tests/test_loop.py", "tests/test_reports.py")
"""The test files that read the session's `loop_night`: one xdist worker runs them all, building it once."""
LONG_FIRST = (
    *NIGHT_FILES,
    "tests/test_night_process.py",
    "tests/test_ray.py",
    "tests/test_parallel.py",
    "tests/test_nights.py",
    "tests/test_center.py",
    "tests/test_train.py",
    "tests/test_budget.py",
    "tests/test_judge_isolation.py",
    "tests/test_feetech.py",
    "tests/test_so101.py",
    "tests/test_cli.py",
    "tests/test_dit.py",
    "tests/test_forkserver.py",
)
"""The files that take longest (nights of the loop first, then those that train and judge, then the servo
buses' damaged lines), longest first: xdist hands the files out in this order, and the short files left last
fill the gaps, so neither worker ends on a long one while the other idles (it did: 13 s at the end)."""


def file_of(nodeid: str) -> str:
    return nodeid.split("::")[0]


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """`make test`'s workers take whole test files (module fixtures are built once, on one worker), and the
    files that share the session's night together (xdist's own `loadgroup` marks do not group under pytest 9,
    whose node ids ignore them)."""
    from xdist.scheduler import LoadScopeScheduling

    class ByFileAndNight(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "night" if file_of(nodeid) in NIGHT_FILES else file_of(nodeid)

    config.option.loadscopereorder = False  # xdist would order the files by their number of tests instead
    return ByFileAndNight(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long files first (LONG_FIRST): xdist hands the files out in collection order."""

    def rank(item: pytest.Item) -> int:
        file = file_of(item.nodeid)
        return LONG_FIRST.index(file) if file in LONG_FIRST else len(LONG_FIRST)

    items.sort(key=rank)  # stable: each file keeps its order


EPISODES = 6
ACTIONS = 8


@pytest.fixture(scope="session")
def sim_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 simulated episodes of 8 actions (120 frames each), 2 cameras at 64x64. Do not modify it."""
    root = tmp_path_factory.mktemp("datasets") / "sim"
    record_sim_dataset(
        root, episodes=EPISODES, actions_per_episode=ACTIONS, seed=7, config=SimConfig(), workers=1
    )
    return root


@pytest.fixture
def dataset_copy(sim_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the session dataset that a test may damage."""
    copy = tmp_path / "sim"
    shutil.copytree(sim_dataset, copy, ignore=shutil.ignore_patterns(".cache"))
    return copy


@pytest.fixture(scope="session")
def small_cache(sim_dataset: Path) -> Path:
    """The session dataset with the canvas cache of the tiny experiments (tests/helpers.py) built."""
    build_cache(sim_dataset, CanvasConfig(**SMALL_CANVAS))
    return sim_dataset


@pytest.fixture(scope="session")
def loop_night(small_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> NightPaths:
    """A real night of the loop, tag `t`, whose every proposal has a certain fate (tests/night_project.py):
    keep, unconfirmed twice, a confirmed keep with a code change, discard, rejected three ways, crash,
    timeout. Read-only for its users, except promotion (checkpoints/) and re-rendered reports."""
    root = make_project(tmp_path_factory.mktemp("night"))
    replay = write_replay(root.parent / "proposals.jsonl", PROPOSALS)
    settings = tiny_night(
        root, "t", small_cache, eval_samples=48, max_runs=len(EXPECTED), baseline_seeds=2, plateau_after=5
    )
    info = Night(settings, ReplayAgent(replay)).run()
    assert info.end_reason == f"--max-runs {len(EXPECTED)} reached"
    return NightPaths(root, "t")
