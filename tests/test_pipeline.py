"""Round trip sim -> LeRobot writer -> reader -> canvas cache, with exact checks on what must be exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.canvas import CanvasConfig
from models.data import SPLITS, SplitConfig, build_cache, cache_dir, load_split, split_episodes, verify_cache
from models.errors import DatasetError
from models.lerobot import LeRobotReader
from robot.record import sim_episode
from robot.sim import SimConfig
from tests.conftest import ACTIONS, EPISODES

FPA = 15  # frames per action at 30 fps, 0.5 s


def recorded(index: int):
    """The episode exactly as the sim produced it before encoding (same seed derivation as the recorder)."""
    return sim_episode(SimConfig(), 7, index, ACTIONS)


def test_reader_returns_what_the_sim_recorded(sim_dataset: Path):
    reader = LeRobotReader(sim_dataset)
    assert reader.num_episodes == EPISODES
    assert reader.total_frames == EPISODES * ACTIONS * FPA
    assert reader.action_source == "column"
    for i in (0, EPISODES - 1):
        original, read = recorded(i), reader.read_episode(i)
        assert read.length == ACTIONS * FPA
        np.testing.assert_array_equal(read.discrete_action, original.discrete_action)
        np.testing.assert_array_equal(read.state, original.state)
        np.testing.assert_array_equal(read.action, original.action)
        for cam in ("wrist", "base"):
            error = np.abs(read.frames[cam].astype(int) - original.frames[cam].astype(int)).mean()
            assert error < 4, f"{cam}: mean abs error {error:.2f} after encoding"


def test_canvas_cache_matches_recorded_episodes(sim_dataset: Path):
    config = CanvasConfig()
    layout = config.layout
    build_cache(sim_dataset, config)
    splits = split_episodes(EPISODES)
    total = 0
    for name in SPLITS:
        data = load_split(sim_dataset, config, name)
        assert sorted(set(data.episode.tolist())) == splits[name].tolist()
        # every interval of every episode but the last gives a sample (its target frame is past the end)
        assert len(data) == len(splits[name]) * (ACTIONS - 1)
        total += len(data)
        for k in range(0, len(data), 5):
            episode = recorded(int(data.episode[k]))
            frames = data.frames[k]
            assert frames[1] - frames[0] == FPA and frames[0] % FPA == 0
            canvas = np.asarray(data.canvases[k])
            action = episode.discrete_action[frames[0]]
            assert data.actions[k, 0] == action
            assert (canvas[:, layout.separator_columns(0)] == layout.action_color(action)).all()
            for step, frame in enumerate(frames):
                grays = layout.position_gray(episode.state[frame])
                for j in range(len(config.joints)):
                    assert (
                        canvas[layout.strip_rows, layout.position_patch_columns(step, j)] == grays[j]
                    ).all()
                wrist = layout.frame(canvas, step, "wrist").astype(int)
                assert np.abs(wrist - episode.frames["wrist"][frame]).mean() < 4
            prev = episode.state[max(frames[0] - FPA, 0)]
            velocity = layout.velocity_gray(episode.state[frames[0]] - prev)
            assert (canvas[layout.strip_rows, layout.velocity_patch_columns(0, 0)] == velocity[0]).all()
    assert total == EPISODES * (ACTIONS - 1)


def test_cache_is_reused_and_rebuilt_only_on_change(dataset_copy: Path):
    config = CanvasConfig()
    first = build_cache(dataset_copy, config)
    stamp = (first / "train.npy").stat().st_mtime_ns
    assert build_cache(dataset_copy, config) == first
    assert (first / "train.npy").stat().st_mtime_ns == stamp
    assert verify_cache(first)["splits"]["train"]["count"] == len(load_split(dataset_copy, config, "train"))

    assert cache_dir(dataset_copy, CanvasConfig(history=2)) != first
    assert cache_dir(dataset_copy, config, SplitConfig(seed=1)) != first
    info = dataset_copy / "meta" / "info.json"
    meta = json.loads(info.read_text())
    meta["robot_type"] = "so101_follower"
    info.write_text(json.dumps(meta))
    assert cache_dir(dataset_copy, config) != first


def test_missing_and_damaged_cache_say_what_to_do(dataset_copy: Path):
    config = CanvasConfig()
    with pytest.raises(DatasetError, match="harness data build"):
        load_split(dataset_copy, config, "val")
    directory = build_cache(dataset_copy, config)
    with open(directory / "val.npy", "r+b") as f:
        f.seek(-10, 2)
        f.write(b"\xff" * 10)
    with pytest.raises(DatasetError, match="val.npy"):
        build_cache(dataset_copy, config)


def test_history_two_chains_consecutive_actions(sim_dataset: Path):
    config = CanvasConfig(history=2, frame_width=32, frame_height=32)
    build_cache(sim_dataset, config)
    data = load_split(sim_dataset, config, "train")
    assert data.canvases.shape[1:] == (2 * 32 + 8, 3 * 32 + 2 * 8, 3)
    assert len(data) == len(split_episodes(EPISODES)["train"]) * (ACTIONS - 2)
    decoded = config.layout.decode_actions(np.asarray(data.canvases[:20]))
    np.testing.assert_array_equal(decoded, data.actions[:20])


def test_actions_derived_from_sim_commands_equal_the_logged_ones(tmp_path: Path):
    """A recording without the discrete_action column (like plain LeRobot data) gets the same actions back."""
    from models.lerobot import LeRobotWriter

    originals = [recorded(i) for i in range(2)]
    with LeRobotWriter(
        tmp_path / "plain",
        fps=30,
        cameras={"wrist": (64, 64), "base": (64, 64)},
        discrete_action_column=False,
    ) as writer:
        for episode in originals:
            writer.add_episode(episode)
    reader = LeRobotReader(tmp_path / "plain")
    assert reader.action_source == "derived"
    for i, original in enumerate(originals):
        np.testing.assert_array_equal(reader.read_tabular(i).discrete_action, original.discrete_action)
