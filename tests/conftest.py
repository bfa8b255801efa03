"""Shared fixtures: one small real simulated dataset per session, copied where a test must damage it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from models.canvas import CanvasConfig
from models.data import build_cache
from robot.record import record_sim_dataset
from robot.sim import SimConfig
from tests.helpers import SMALL_CANVAS

# Tiny test models run fastest on one thread, and the suite must not fight a training run for two cores.
torch.set_num_threads(1)

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
    """The session dataset with the canvas cache of the tiny experiments (tests/tiny.py) built."""
    build_cache(sim_dataset, CanvasConfig(**SMALL_CANVAS))
    return sim_dataset
