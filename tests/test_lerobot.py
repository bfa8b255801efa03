"""LeRobot v3.0 writer and reader: exact round trips, the on-disk schema, file roll-over, the three sources of
discrete actions, atomic writes, and one-line DatasetErrors for every kind of bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models import vocab
from models.episode import Episode
from models.errors import DatasetError
from models.lerobot import CODEBASE_VERSION, LeRobotReader, LeRobotWriter

FPS = 30
CAMERAS = {"wrist": (64, 64), "base": (48, 64)}
LENGTHS = (20, 33, 40, 27)
HOLD = 15  # frames an action is held: round(0.5 s * 30 fps), what the reader derives with
PAN_STEP = 5.0
TO_PUBLISHED = {vocab.BUFFER: 0, vocab.PAN_PLUS: 1, vocab.PAN_MINUS: 2, vocab.STAY: 3}
DATA_FILE = "data/chunk-000/file-000.parquet"
WRIST_MP4 = "videos/observation.images.wrist/chunk-000/file-000.mp4"


# ------------------------------------------------------------------------------------------- synthetic data


def _frames(length: int, height: int, width: int, seed: int) -> np.ndarray:
    """Smooth color gradients that drift over time: realistic for a video codec, different per episode."""
    t = np.arange(length)[:, None, None] / length
    y = np.arange(height)[None, :, None] / height
    x = np.arange(width)[None, None, :] / width
    red = 128 + 60 * np.sin(2 * np.pi * (x + t + seed / 7))
    green = 128 + 60 * np.cos(2 * np.pi * (y - t / 2))
    blue = 128 + 40 * np.sin(2 * np.pi * ((x + y) / 2 + seed / 3)) + 0 * t
    return np.stack(np.broadcast_arrays(red, green, blue), axis=-1).round().astype(np.uint8)


def _make_episode(seed: int, length: int, task: str = "pan the arm with discrete actions") -> Episode:
    """Random float32 joints; each action held HOLD frames; the pan goal jumps by PAN_STEP as it starts."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, vocab.NUM_ACTIONS, size=-(-length // HOLD))
    blocks[1] = vocab.PAN_PLUS  # every episode moves at least once
    discrete = np.repeat(blocks, HOLD)[:length]
    discrete[:2] = vocab.BUFFER
    step = np.select([blocks == vocab.PAN_PLUS, blocks == vocab.PAN_MINUS], [PAN_STEP, -PAN_STEP], 0.0)
    goal = np.repeat(np.cumsum(step), HOLD)[:length]
    action = (rng.standard_normal((length, 6)) * 20).astype(np.float32)
    action[:, 0] = goal
    state = (rng.standard_normal((length, 6)) * 20).astype(np.float32)
    frames = {cam: _frames(length, h, w, seed * 10 + i) for i, (cam, (h, w)) in enumerate(CAMERAS.items())}
    return Episode(frames=frames, state=state, action=action, discrete_action=discrete, fps=FPS, task=task)


def _write(root: Path, episodes: list[Episode], **kwargs) -> Path:
    with LeRobotWriter(root, FPS, CAMERAS, **kwargs) as writer:
        for episode in episodes:
            writer.add_episode(episode)
    return root


@pytest.fixture(scope="module")
def episodes() -> list[Episode]:
    tasks = ["pan the arm with discrete actions", "look around"]
    return [_make_episode(i, n, tasks[i % 2]) for i, n in enumerate(LENGTHS)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, episodes: list[Episode]) -> Path:
    return _write(tmp_path_factory.mktemp("lerobot") / "ds", episodes)


@pytest.fixture
def copy(dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the dataset that a test may damage."""
    return Path(shutil.copytree(dataset, tmp_path / "ds"))


def _mean_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _assert_tabular_equal(read: Episode, original: Episode) -> None:
    assert read.length == original.length
    assert read.state.dtype == np.float32 and read.action.dtype == np.float32
    np.testing.assert_array_equal(read.state, original.state)
    np.testing.assert_array_equal(read.action, original.action)
    np.testing.assert_array_equal(read.discrete_action, original.discrete_action)
    assert read.task == original.task
    assert read.joint_names == vocab.JOINT_NAMES


def _assert_frames_close(read: Episode, original: Episode, cameras=tuple(CAMERAS)) -> None:
    assert tuple(read.frames) == tuple(cameras)
    for cam in cameras:
        assert read.frames[cam].shape == original.frames[cam].shape
        assert _mean_abs_error(read.frames[cam], original.frames[cam]) < 3.0


# --------------------------------------------------------------------------------------------- round trips


def test_reader_summary(dataset: Path) -> None:
    reader = LeRobotReader(dataset)
    assert reader.fps == FPS
    assert reader.cameras == ("wrist", "base")
    assert reader.joint_names == vocab.JOINT_NAMES
    assert reader.num_episodes == len(LENGTHS)
    assert reader.total_frames == sum(LENGTHS)
    np.testing.assert_array_equal(reader.episode_lengths, LENGTHS)
    assert reader.action_source == "column"
    assert reader.info["codebase_version"] == CODEBASE_VERSION


def test_read_tabular_is_exact(dataset: Path, episodes: list[Episode]) -> None:
    reader = LeRobotReader(dataset)
    for index, original in enumerate(episodes):
        read = reader.read_tabular(index)
        assert read.frames == {}
        _assert_tabular_equal(read, original)
        expected = (np.arange(original.length) / FPS).astype(np.float32)
        np.testing.assert_array_equal(read.meta["timestamp"], expected)
        assert read.meta["episode_index"] == index


def test_read_episode_frames(dataset: Path, episodes: list[Episode]) -> None:
    reader = LeRobotReader(dataset)
    for index in (3, 0, 2):  # out of order: fresh decoders, a seek past the 2 s read-through window
        read = reader.read_episode(index)
        _assert_tabular_equal(read, episodes[index])
        _assert_frames_close(read, episodes[index])
    only_base = reader.read_episode(1, cameras=["base"])
    _assert_frames_close(only_base, episodes[1], cameras=("base",))


def test_iter_episodes_equals_read_episode(dataset: Path) -> None:
    reader = LeRobotReader(dataset)
    streamed = list(reader.iter_episodes())
    assert [index for index, _ in streamed] == list(range(len(LENGTHS)))
    for index, episode in streamed:
        single = reader.read_episode(index)
        for cam in CAMERAS:
            np.testing.assert_array_equal(episode.frames[cam], single.frames[cam])
        np.testing.assert_array_equal(episode.state, single.state)
    subset = [index for index, _ in reader.iter_episodes([3, 1], cameras=["wrist"])]
    assert subset == [1, 3]  # file order


def test_reads_lerobot_style_files(copy: Path, episodes: list[Episode]) -> None:
    """What LeRobot itself may write: variable-size list columns, AV1 video without keyframes at episodes."""
    path = copy / DATA_FILE
    table = pq.read_table(path)
    for key in ("observation.state", "action"):
        position = table.schema.get_field_index(key)
        table = table.set_column(position, key, table.column(key).cast(pa.list_(pa.float32())))
    pq.write_table(table, path)
    _reencode(copy / WRIST_MP4, codec="libsvtav1")
    reader = LeRobotReader(copy)
    for index in (3, 1):  # episode 3 seeks to a keyframe before it and decodes forward
        read = reader.read_episode(index)
        _assert_tabular_equal(read, episodes[index])
        _assert_frames_close(read, episodes[index])


# ----------------------------------------------------------------------------------------------- on disk


def test_info_json_schema(dataset: Path) -> None:
    info = json.loads((dataset / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["robot_type"] == "so101"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (4, sum(LENGTHS), 2)
    assert info["fps"] == FPS and info["chunks_size"] == 1000
    assert info["data_files_size_in_mb"] == 100 and info["video_files_size_in_mb"] == 200
    assert info["splits"] == {"train": "0:4"}
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    features = info["features"]
    names = [f"{joint}.pos" for joint in vocab.JOINT_NAMES]
    for key in ("observation.state", "action"):
        assert features[key] == {"dtype": "float32", "shape": [6], "names": names}
    assert features["discrete_action"] == {"dtype": "int64", "shape": [1], "names": None}
    assert features["timestamp"] == {"dtype": "float32", "shape": [1], "names": None}
    for key in ("frame_index", "episode_index", "index", "task_index"):
        assert features[key] == {"dtype": "int64", "shape": [1], "names": None}
    base = features["observation.images.base"]
    assert base["dtype"] == "video" and base["shape"] == [48, 64, 3]
    assert base["names"] == ["height", "width", "channels"]
    assert base["info"] == {
        "video.height": 48,
        "video.width": 64,
        "video.codec": "h264",
        "video.pix_fmt": "yuv420p",
        "video.is_depth_map": False,
        "video.fps": FPS,
        "video.channels": 3,
        "has_audio": False,
    }


def test_episodes_meta_and_data_columns(dataset: Path) -> None:
    meta = pq.read_table(dataset / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    ends = np.cumsum(LENGTHS)
    starts = ends - LENGTHS
    for row, start, end, length in zip(meta, starts, ends, LENGTHS, strict=True):
        assert row["length"] == length
        assert (row["dataset_from_index"], row["dataset_to_index"]) == (start, end)
        assert (row["data/chunk_index"], row["data/file_index"]) == (0, 0)
        for cam in CAMERAS:
            prefix = f"videos/observation.images.{cam}/"
            assert (row[prefix + "chunk_index"], row[prefix + "file_index"]) == (0, 0)
            assert row[prefix + "from_timestamp"] == pytest.approx(start / FPS)
            assert row[prefix + "to_timestamp"] == pytest.approx(end / FPS)
        assert row["stats/observation.state/count"] == [length]
        assert np.array(row["stats/observation.images.wrist/mean"]).shape == (3, 1, 1)
    assert [row["tasks"] for row in meta] == [["pan the arm with discrete actions"], ["look around"]] * 2

    data = pq.read_table(dataset / DATA_FILE)
    assert data.column_names == [
        "action", "observation.state", "timestamp", "frame_index", "episode_index", "index", "task_index",
        "discrete_action",
    ]  # fmt: skip
    assert data.schema.field("observation.state").type == pa.list_(pa.float32(), 6)
    np.testing.assert_array_equal(data.column("index").to_numpy(), np.arange(sum(LENGTHS)))
    np.testing.assert_array_equal(data.column("task_index").to_numpy(), np.repeat([0, 1, 0, 1], LENGTHS))

    tasks = pq.read_table(dataset / "meta/tasks.parquet")
    assert tasks.to_pydict() == {
        "task_index": [0, 1],
        "task": ["pan the arm with discrete actions", "look around"],
    }
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]


def test_stats_json(dataset: Path, episodes: list[Episode]) -> None:
    stats = json.loads((dataset / "meta/stats.json").read_text())
    state = np.concatenate([e.state for e in episodes]).astype(np.float64)
    np.testing.assert_allclose(stats["observation.state"]["mean"], state.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(stats["observation.state"]["std"], state.std(axis=0), rtol=1e-9)
    np.testing.assert_array_equal(stats["observation.state"]["min"], state.min(axis=0))
    assert stats["observation.state"]["count"] == [sum(LENGTHS)]
    assert stats["timestamp"]["max"] == [pytest.approx((max(LENGTHS) - 1) / FPS)]
    for cam in CAMERAS:
        image = stats[f"observation.images.{cam}"]
        frames = np.concatenate([e.frames[cam] for e in episodes]) / 255.0
        for name in ("min", "max", "mean", "std"):
            assert np.array(image[name]).shape == (3, 1, 1)
        np.testing.assert_allclose(np.ravel(image["mean"]), frames.mean(axis=(0, 1, 2)), rtol=1e-9)
        np.testing.assert_allclose(np.ravel(image["std"]), frames.std(axis=(0, 1, 2)), rtol=1e-9)


def test_roll_over_to_new_files_and_chunks(tmp_path: Path, episodes: list[Episode]) -> None:
    root = _write(tmp_path / "ds", episodes, data_file_mb=1e-6, video_file_mb=1e-6, chunks_size=2)
    data_files = sorted(p.relative_to(root).as_posix() for p in root.glob("data/*/*.parquet"))
    assert data_files == [
        "data/chunk-000/file-000.parquet", "data/chunk-000/file-001.parquet",
        "data/chunk-001/file-000.parquet", "data/chunk-001/file-001.parquet",
    ]  # fmt: skip
    for cam in CAMERAS:  # the encoder's lookahead delays sizes, so only "several files" is certain
        assert len(list(root.glob(f"videos/observation.images.{cam}/*/*.mp4"))) >= 2
    reader = LeRobotReader(root)
    for index, read in reader.iter_episodes():
        _assert_tabular_equal(read, episodes[index])
        _assert_frames_close(read, episodes[index])
    _assert_frames_close(reader.read_episode(2), episodes[2])


# -------------------------------------------------------------------------------------- discrete actions


def _drop_discrete_action_column(root: Path) -> None:
    """Make the dataset look like one recorded with plain LeRobot: no discrete_action anywhere."""
    path = root / DATA_FILE
    pq.write_table(pq.read_table(path).drop_columns(["discrete_action"]), path)
    info_path = root / "meta/info.json"
    info = json.loads(info_path.read_text())
    del info["features"]["discrete_action"]
    info_path.write_text(json.dumps(info))


def _write_sidecar(path: Path, frames: np.ndarray, actions: np.ndarray) -> None:
    lines = [json.dumps({"episode_index": 0, "fps": FPS, "coding": "0 buffer, 1 move+, 2 move-, 3 stay"})]
    lines += [
        json.dumps({"frame_index": int(f), "discrete_action": TO_PUBLISHED[int(a)]})
        for f, a in zip(frames, actions, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")


def test_sidecar_logs_dense_and_sparse(copy: Path, episodes: list[Episode]) -> None:
    _drop_discrete_action_column(copy)
    logs = copy / "meta/discrete_action_logs"
    logs.mkdir()
    names = ["episode_000000.jsonl", "episode_000001.jsonl", "episode_2.jsonl", "episode_0003.jsonl"]
    expected = []
    for index, (episode, name) in enumerate(zip(episodes, names, strict=True)):
        truth = episode.discrete_action
        if index % 2 == 0:  # dense: every frame, buffer frames logged with code 0
            frames = np.arange(episode.length)
        else:  # sparse: only where the action changes, and nothing before frame 3
            changes = np.flatnonzero(np.diff(truth, prepend=-99))
            frames = changes[changes >= 3]
        _write_sidecar(logs / name, frames, truth[frames])
        want = truth.copy()
        if index % 2:
            want[: frames[0]] = vocab.BUFFER
        expected.append(want)
    reader = LeRobotReader(copy)
    assert reader.action_source == "sidecar"
    for index, want in enumerate(expected):
        np.testing.assert_array_equal(reader.read_tabular(index).discrete_action, want)
    assert np.all(reader.read_tabular(1).discrete_action[:3] == vocab.BUFFER)


def test_derived_from_commanded_pan(copy: Path, episodes: list[Episode]) -> None:
    _drop_discrete_action_column(copy)
    reader = LeRobotReader(copy)
    assert reader.action_source == "derived"
    for index, original in enumerate(episodes):
        derived = reader.read_tabular(index).discrete_action
        want = vocab.derive_from_commands(
            original.action[:, 0], frames_per_action=HOLD, deadband=1.0, measured=original.state[:, 0]
        )
        np.testing.assert_array_equal(derived, want)
        starts = np.arange(HOLD, original.length, HOLD)  # where an action starts, derivation is exact
        np.testing.assert_array_equal(derived[starts], original.discrete_action[starts])


# ------------------------------------------------------------------------------------------- bad input


def _raises(match: str):
    return pytest.raises(DatasetError, match=match)


def _edit_info(root: Path, **changes) -> None:
    path = root / "meta/info.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_missing_root_and_info(tmp_path: Path, copy: Path) -> None:
    with _raises("nowhere"):
        LeRobotReader(tmp_path / "nowhere")
    (copy / "meta/info.json").unlink()
    with _raises("info.json"):
        LeRobotReader(copy)


def test_info_not_json(copy: Path) -> None:
    (copy / "meta/info.json").write_text("{codebase_version: v3.0")
    with _raises("info.json.*not valid JSON"):
        LeRobotReader(copy)


def test_other_codebase_version(copy: Path) -> None:
    _edit_info(copy, codebase_version="v2.1")
    with _raises("'v2.1'.*v3.0 is required") as error:
        LeRobotReader(copy)
    assert "\n" not in str(error.value)


def test_missing_required_feature(copy: Path) -> None:
    info = json.loads((copy / "meta/info.json").read_text())
    del info["features"]["observation.state"]
    _edit_info(copy, features=info["features"])
    with _raises("observation.state"):
        LeRobotReader(copy)


def test_missing_episodes_meta(copy: Path) -> None:
    shutil.rmtree(copy / "meta/episodes")
    with _raises("meta/episodes"):
        LeRobotReader(copy)


def test_missing_data_parquet(copy: Path) -> None:
    (copy / DATA_FILE).unlink()
    reader = LeRobotReader(copy)
    with _raises("data/chunk-000/file-000.parquet is missing"):
        reader.read_tabular(0)


def test_truncated_parquet(copy: Path) -> None:
    path = copy / DATA_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with _raises("file-000.parquet: unreadable parquet"):
        LeRobotReader(copy).read_tabular(1)
    episodes_meta = copy / "meta/episodes/chunk-000/file-000.parquet"
    episodes_meta.write_bytes(b"PAR1 garbage")
    with _raises("meta/episodes/chunk-000/file-000.parquet"):
        LeRobotReader(copy)


def test_missing_and_garbage_mp4(copy: Path) -> None:
    reader = LeRobotReader(copy)
    (copy / WRIST_MP4).write_bytes(b"\x00not an mp4 file" * 64)
    with _raises("observation.images.wrist/chunk-000/file-000.mp4: cannot decode video"):
        reader.read_episode(0)
    reader.read_episode(0, cameras=["base"])  # the other camera still reads
    (copy / WRIST_MP4).unlink()
    with _raises("file-000.mp4: video file is missing"):
        list(reader.iter_episodes())


def _reencode(path: Path, codec: str = "libx264", drop_last: int = 0) -> None:
    """Re-encode an mp4 as one plain stream: default GOP, so episodes no longer start on keyframes."""
    with av.open(str(path)) as source:
        frames = [f.to_ndarray(format="rgb24") for f in source.decode(video=0)]
    with av.open(str(path), mode="w") as target:
        stream = target.add_stream(codec, rate=FPS)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for pts, rgb in enumerate(frames[: len(frames) - drop_last]):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = pts
            target.mux(stream.encode(frame))
        target.mux(stream.encode(None))


def test_video_shorter_than_episode_table(copy: Path) -> None:
    _reencode(copy / WRIST_MP4, drop_last=5)
    reader = LeRobotReader(copy)
    reader.read_episode(2)
    with _raises(f"file-000.mp4: video has {LENGTHS[3] - 5} frames .* episodes table says {LENGTHS[3]}"):
        reader.read_episode(3)


def test_unknown_camera_and_episode(dataset: Path) -> None:
    reader = LeRobotReader(dataset)
    with _raises("camera 'top'.*available cameras: wrist, base"):
        reader.read_episode(0, cameras=["top"])
    with _raises("camera 'top'"):
        reader.iter_episodes(cameras=["top"])  # checked before iterating
    for index in (4, -1):
        with _raises(f"episode {index} is out of range.*0..3"):
            reader.read_tabular(index)


# ------------------------------------------------------------------------------------ writer atomicity


def _snapshot(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def test_failed_writer_leaves_nothing(tmp_path: Path, episodes: list[Episode]) -> None:
    with pytest.raises(RuntimeError, match="boom"), LeRobotWriter(tmp_path / "ds", FPS, CAMERAS) as writer:
        writer.add_episode(episodes[0])
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_existing(copy: Path, episodes: list[Episode]) -> None:
    before = _snapshot(copy)
    with (
        pytest.raises(RuntimeError, match="boom"),
        LeRobotWriter(copy, FPS, CAMERAS, overwrite=True) as writer,
    ):
        writer.add_episode(episodes[1])
        raise RuntimeError("boom")
    assert _snapshot(copy) == before
    assert sorted(p.name for p in copy.parent.iterdir()) == ["ds"]


def test_overwrite_replaces_and_refuses_without_flag(copy: Path, episodes: list[Episode]) -> None:
    with _raises("exists and is not empty.*overwrite=True"):
        LeRobotWriter(copy, FPS, CAMERAS)
    assert _write(copy, [episodes[1]], overwrite=True) == copy
    assert sorted(p.name for p in copy.parent.iterdir()) == ["ds"]
    reader = LeRobotReader(copy)
    assert reader.num_episodes == 1
    _assert_tabular_equal(reader.read_tabular(0), episodes[1])


def test_writer_rejects_bad_settings_and_episodes(tmp_path: Path, episodes: list[Episode]) -> None:
    with pytest.raises(ValueError, match="63x64.*even"):
        LeRobotWriter(tmp_path / "odd", FPS, {"wrist": (63, 64)})
    with LeRobotWriter(tmp_path / "ds", FPS, CAMERAS) as writer:
        wrong_fps = _make_episode(9, 16)
        wrong_fps.fps = 15
        with pytest.raises(ValueError, match="fps"):
            writer.add_episode(wrong_fps)
        one_camera = _make_episode(9, 16)
        del one_camera.frames["base"]
        with pytest.raises(ValueError, match="cameras"):
            writer.add_episode(one_camera)
        assert writer.add_episode(episodes[0]) == 0
    assert LeRobotReader(tmp_path / "ds").num_episodes == 1
    assert not (tmp_path / "odd").exists()
