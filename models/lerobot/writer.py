"""Writing a LeRobot v3.0 dataset (models/lerobot/format.py): parquet data and episodes, one mp4 per camera
and file, stats; a dataset directory appears whole or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models import vocab
from models.episode import Episode
from models.errors import DatasetError
from models.files import write_json
from models.lerobot.format import (
    ACTION_KEY,
    CODEBASE_VERSION,
    DATA_PATH,
    DISCRETE_KEY,
    EPISODES_PATH,
    INFO_PATH,
    JOINT_SUFFIX,
    LEROBOT_JSON,
    MEASURED_TIME_KEY,
    STATE_KEY,
    STATS_PATH,
    TASKS_PATH,
    VIDEO_PATH,
    video_key,
)
from models.vocab import JOINT_NAMES

# --------------------------------------------------------------------------------------------------- stats


_MB = 1024**2
_MAX_STATS_FRAMES = 100
"""Frames per episode sampled for image stats, as LeRobot's `estimate_num_samples` does for short episodes."""

_SCALAR_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


@dataclass
class _FileSlot:
    """Chunk and file index of the file being filled; the file index restarts in a new chunk directory."""

    chunk_index: int = 0
    file_index: int = 0

    def advance(self, chunks_size: int) -> None:
        if self.file_index == chunks_size - 1:
            self.chunk_index, self.file_index = self.chunk_index + 1, 0
        else:
            self.file_index += 1

    def path(self, template: str, **keys: str) -> str:
        return template.format(chunk_index=self.chunk_index, file_index=self.file_index, **keys)


Stats = dict[str, np.ndarray]


def _vector_stats(values: np.ndarray) -> Stats:
    """Stats over frames; a scalar column keeps a length-1 axis, as LeRobot stores shape-(1,) features."""
    values = np.asarray(values)
    keepdims = values.ndim == 1
    return {
        "min": np.min(values, axis=0, keepdims=keepdims).astype(np.float64),
        "max": np.max(values, axis=0, keepdims=keepdims).astype(np.float64),
        "mean": np.mean(values, axis=0, keepdims=keepdims, dtype=np.float64),
        "std": np.std(values, axis=0, keepdims=keepdims, dtype=np.float64),
        "count": np.array([len(values)], dtype=np.int64),
    }


def _image_stats(frames: np.ndarray) -> Stats:
    """Per-channel stats in [0, 1] with LeRobot's (3, 1, 1) shape, from up to 100 evenly spaced frames.

    Computed from a 256-bin histogram per channel: exact for uint8 and several times faster than float
    reductions over a channel-last array. `count` is the number of frames sampled, as in LeRobot.
    """
    picks = np.unique(
        np.linspace(0, len(frames) - 1, min(len(frames), _MAX_STATS_FRAMES)).round().astype(int)
    )
    pixels = frames[picks].reshape(-1, 3)
    levels = np.arange(256, dtype=np.float64)
    stats: dict[str, list[float]] = {"min": [], "max": [], "mean": [], "std": []}
    for channel in range(3):
        hist = np.bincount(pixels[:, channel], minlength=256).astype(np.float64)
        present = np.flatnonzero(hist)
        mean = hist @ levels / hist.sum()
        stats["min"].append(present[0])
        stats["max"].append(present[-1])
        stats["mean"].append(mean)
        stats["std"].append(np.sqrt(hist @ (levels - mean) ** 2 / hist.sum()))
    result = {
        name: (np.array(values, dtype=np.float64) / 255.0).reshape(3, 1, 1) for name, values in stats.items()
    }
    return {**result, "count": np.array([len(picks)], dtype=np.int64)}


def _aggregate_stats(per_episode: Sequence[Stats]) -> Stats:
    """Dataset stats from episode stats: count-weighted mean and the pooled (parallel) variance."""
    counts = np.array([s["count"][0] for s in per_episode], dtype=np.float64)
    means = np.stack([s["mean"] for s in per_episode])
    variances = np.stack([s["std"] ** 2 for s in per_episode])
    weights = counts.reshape(-1, *([1] * (means.ndim - 1)))
    mean = (means * weights).sum(axis=0) / counts.sum()
    variance = ((variances + (means - mean) ** 2) * weights).sum(axis=0) / counts.sum()
    return {
        "min": np.min(np.stack([s["min"] for s in per_episode]), axis=0),
        "max": np.max(np.stack([s["max"] for s in per_episode]), axis=0),
        "mean": mean,
        "std": np.sqrt(variance),
        "count": np.array([int(counts.sum())], dtype=np.int64),
    }


# ----------------------------------------------------------------------------------------------- writing


def _codec_options(codec: str, crf: int) -> dict[str, str]:
    """Quality-based rate control: the frames are small and compress well, bitrate targets would not fit."""
    if codec in ("libx264", "h264", "libx265", "hevc"):
        return {"crf": str(crf), "preset": "fast"}
    if codec == "libsvtav1":
        return {"crf": str(crf), "preset": "8"}
    return {}


class _Mp4File:
    """One mp4 being written: a single video stream to which consecutive episodes are appended.

    The encoder stays open across episodes so the file is one continuous stream (frame k of the file at
    k / fps); each episode starts on a forced keyframe so a reader can seek straight to it.
    """

    def __init__(self, path: Path, codec: str, crf: int, fps: int, height: int, width: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._container = av.open(str(path), mode="w")
        self._stream = self._container.add_stream(codec, rate=fps)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = _codec_options(codec, crf)
        self.num_frames = 0
        self.num_episodes = 0
        self._packets = 0
        self._packet_bytes = 0

    def append(self, frames: np.ndarray) -> int:
        """Encode an episode's (T, H, W, 3) RGB frames; returns the file frame number of its first frame."""
        start = self.num_frames
        for k, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = start + k
            if k == 0:
                frame.pict_type = av.video.frame.PictureType.I
            self._mux(self._stream.encode(frame))
        self.num_frames += len(frames)
        self.num_episodes += 1
        return start

    def estimated_bytes(self, more_frames: int = 0) -> float:
        """Bytes muxed so far plus frames still inside the encoder (its lookahead), plus `more_frames`.

        Frames still in the encoder are counted at the average size of those already out; before the first
        packet nothing is known and only muxed bytes count, so size limits are approximate, as in LeRobot.
        """
        if self._packets == 0:
            return float(self._packet_bytes)
        per_frame = self._packet_bytes / self._packets
        return self._packet_bytes + per_frame * (self.num_frames - self._packets + more_frames)

    def close(self) -> None:
        self._mux(self._stream.encode(None))
        self._container.close()

    def abort(self) -> None:
        with contextlib.suppress(av.FFmpegError, OSError):  # the file goes with the temporary directory
            self._container.close()

    def _mux(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            self._packets += 1
            self._packet_bytes += packet.size
            self._container.mux(packet)


@dataclass(frozen=True)
class _VideoSettings:
    codec: str
    crf: int
    fps: int
    file_bytes: float
    chunks_size: int


class _CameraVideos:
    """The mp4 files of one camera: fills one file with episodes, opens the next past the size limit."""

    def __init__(self, root: Path, camera: str, size: tuple[int, int], settings: _VideoSettings) -> None:
        self._root = root
        self._key = video_key(camera)
        self._size = size
        self._settings = settings
        self._slot = _FileSlot()
        self._file: _Mp4File | None = None

    def add_episode(self, frames: np.ndarray) -> dict[str, Any]:
        """Append an episode; returns its `videos/<key>/...` columns of the episodes table."""
        s = self._settings
        if self._file is not None and self._file.estimated_bytes(len(frames)) > s.file_bytes:
            self._file.close()
            self._file = None
            self._slot.advance(s.chunks_size)
        if self._file is None:
            path = self._root / self._slot.path(VIDEO_PATH, video_key=self._key)
            self._file = _Mp4File(path, s.codec, s.crf, s.fps, *self._size)
        start = self._file.append(frames)
        prefix = f"videos/{self._key}/"
        return {
            prefix + "chunk_index": self._slot.chunk_index,
            prefix + "file_index": self._slot.file_index,
            prefix + "from_timestamp": start / s.fps,
            prefix + "to_timestamp": (start + len(frames)) / s.fps,
        }

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def abort(self) -> None:
        if self._file is not None:
            self._file.abort()
            self._file = None


class _DataFiles:
    """The data parquet files: one row group per episode, a new file once the size limit would be passed.

    Size is the Arrow (uncompressed) size of the rows, known before writing, unlike the compressed size.
    """

    def __init__(self, root: Path, schema: pa.Schema, limit_bytes: float, chunks_size: int) -> None:
        self._root = root
        self._schema = schema
        self._limit = limit_bytes
        self._chunks_size = chunks_size
        self._slot = _FileSlot()
        self._writer: pq.ParquetWriter | None = None
        self._bytes = 0

    def append(self, table: pa.Table) -> tuple[int, int]:
        """Write an episode's rows; returns the (chunk_index, file_index) they went to."""
        if self._writer is not None and self._bytes + table.nbytes > self._limit:
            self.close()
            self._slot.advance(self._chunks_size)
        if self._writer is None:
            path = self._root / self._slot.path(DATA_PATH)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(path, self._schema, compression="snappy")
            self._bytes = 0
        self._writer.write_table(table, row_group_size=max(1, len(table)))
        self._bytes += table.nbytes
        return self._slot.chunk_index, self._slot.file_index

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _list_array(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """(T, J) float32 -> fixed-size lists, the Arrow type of a HF `Sequence(length=J)` feature."""
    flat = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).ravel(), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])


def _tasks_table(tasks: Mapping[str, int]) -> pa.Table:
    """`meta/tasks.parquet` as LeRobot writes it with pandas: column task_index, index named `task`.

    The pandas metadata makes `pd.read_parquet` restore the `task` index that LeRobot looks tasks up in.
    """
    table = pa.table({"task_index": pa.array(list(tasks.values()), pa.int64()), "task": list(tasks)})
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            },
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": "task",
                "field_name": "task",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    return table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})


def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


class LeRobotWriter:
    """Writes episodes as a LeRobot v3.0 dataset; use as a context manager.

    Everything goes into a hidden temporary sibling of `root` that `close()` renames into place, so a crash or
    an exception inside the `with` block never leaves a half-written dataset, and an existing dataset is only
    replaced (with `overwrite=True`) once the new one is complete.
    """

    def __init__(
        self,
        root: Path,
        fps: int,
        cameras: Mapping[str, tuple[int, int]],
        joint_names: Sequence[str] = JOINT_NAMES,
        robot_type: str = "so101",
        codec: str = "libx264",
        crf: int = 18,
        data_file_mb: float = 100,
        video_file_mb: float = 200,
        chunks_size: int = 1000,
        overwrite: bool = False,
        discrete_action_column: bool = True,
        measured_time_column: bool = False,
    ) -> None:
        """`cameras` maps camera name -> (height, width), both even (yuv420p halves chroma in each axis).

        `discrete_action_column=False` leaves the `discrete_action` column out, as in datasets recorded
        with plain LeRobot (readers then use sidecar logs or derive actions). `measured_time_column=True`
        adds MEASURED_TIME_KEY from each episode's `frame_times` (a real arm's recordings).
        """
        self.root = Path(root)
        self.fps = int(fps)
        self.cameras = {name: (int(h), int(w)) for name, (h, w) in cameras.items()}
        self.joint_names = tuple(joint_names)
        self.robot_type = robot_type
        self.codec, self.crf = codec, crf
        self.data_file_mb, self.video_file_mb, self.chunks_size = data_file_mb, video_file_mb, chunks_size
        self.overwrite = overwrite
        self.discrete_action_column = discrete_action_column
        self.measured_time_column = measured_time_column
        self._check_settings()
        if _is_nonempty_dir(self.root) and not overwrite:
            raise DatasetError(f"{self.root} exists and is not empty; pass overwrite=True to replace it")
        if self.root.exists() and not self.root.is_dir():
            raise DatasetError(f"{self.root} exists and is not a directory")

        self.root.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root.parent / f".{self.root.name}.writing-{uuid.uuid4().hex[:8]}"
        self._tmp.mkdir()
        settings = _VideoSettings(codec, crf, self.fps, video_file_mb * _MB, chunks_size)
        self._videos = {
            cam: _CameraVideos(self._tmp, cam, size, settings) for cam, size in self.cameras.items()
        }
        self._schema = self._data_schema()
        self._data = _DataFiles(self._tmp, self._schema, data_file_mb * _MB, chunks_size)
        self._episodes: list[dict[str, Any]] = []
        self._episode_stats: list[dict[str, Stats]] = []
        self._tasks: dict[str, int] = {}
        self._total_frames = 0
        self._open = True

    # -- context manager --------------------------------------------------------------------------------

    def __enter__(self) -> LeRobotWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
        elif self._open:
            self.close()

    # -- public API -------------------------------------------------------------------------------------

    def add_episode(self, episode: Episode) -> int:
        """Append one episode (frames encoded into each camera's current mp4, rows into the current parquet).

        Returns the episode index. Everything is checked before anything is written, so a rejected episode
        leaves the dataset as it was.
        """
        if not self._open:
            raise RuntimeError("LeRobotWriter is closed")
        self._check_episode(episode)
        index = len(self._episodes)
        task_index = self._tasks.setdefault(episode.task, len(self._tasks))
        columns = self._episode_columns(episode, index, task_index)
        stats = {key: _vector_stats(np.asarray(values)) for key, values in columns.items()}

        row: dict[str, Any] = {"episode_index": index, "tasks": [episode.task], "length": episode.length}
        chunk_index, file_index = self._data.append(self._data_table(columns))
        row.update(
            {
                "data/chunk_index": chunk_index,
                "data/file_index": file_index,
                "dataset_from_index": self._total_frames,
                "dataset_to_index": self._total_frames + episode.length,
            }
        )
        for cam, videos in self._videos.items():
            row.update(videos.add_episode(episode.frames[cam]))
            stats[video_key(cam)] = _image_stats(episode.frames[cam])
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        row.update(
            {f"stats/{key}/{name}": value.tolist() for key, s in stats.items() for name, value in s.items()}
        )

        self._episodes.append(row)
        self._episode_stats.append(stats)
        self._total_frames += episode.length
        return index

    def close(self) -> Path:
        """Finish the files, write the metadata, and move the dataset into `root`; returns `root`."""
        if not self._open:
            return self.root
        try:
            if not self._episodes:
                raise ValueError(f"no episodes were added to {self.root}")
            for videos in self._videos.values():
                videos.close()
            self._data.close()
            self._write_metadata()
            self._move_into_place()
        except BaseException:
            self.abort()
            raise
        self._open = False
        return self.root

    def abort(self) -> None:
        """Drop everything written so far; `root` is left exactly as it was."""
        for videos in self._videos.values():
            videos.abort()
        with contextlib.suppress(OSError, pa.ArrowException):  # deleted with the temporary directory below
            self._data.close()
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._open = False

    # -- checks -----------------------------------------------------------------------------------------

    def _check_settings(self) -> None:
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        for name, (h, w) in self.cameras.items():
            if h <= 0 or w <= 0 or h % 2 or w % 2:
                raise ValueError(f"camera {name!r}: frame size {h}x{w} must be positive and even (yuv420p)")
        if min(self.data_file_mb, self.video_file_mb) <= 0 or self.chunks_size <= 0:
            raise ValueError("data_file_mb, video_file_mb and chunks_size must be positive")
        try:
            av.codec.Codec(self.codec, "w")
        except (av.FFmpegError, ValueError) as exc:
            raise ValueError(f"video encoder {self.codec!r} is not available in PyAV's ffmpeg") from exc

    def _check_episode(self, episode: Episode) -> None:
        if episode.fps != self.fps:
            raise ValueError(f"episode fps {episode.fps} != dataset fps {self.fps}")
        if tuple(episode.joint_names) != self.joint_names:
            raise ValueError(f"episode joints {episode.joint_names} != dataset joints {self.joint_names}")
        if set(episode.frames) != set(self.cameras):
            raise ValueError(
                f"episode cameras {sorted(episode.frames)} != dataset cameras {sorted(self.cameras)}"
            )
        for cam, (h, w) in self.cameras.items():
            if episode.frames[cam].shape[1:3] != (h, w):
                raise ValueError(
                    f"camera {cam!r}: frames are {episode.frames[cam].shape[1:3]}, expected {(h, w)}"
                )
        if episode.length == 0:
            raise ValueError("episode has no frames")
        if self.measured_time_column and episode.frame_times is None:
            raise ValueError("this dataset records measured frame times: the episode has no frame_times")
        valid = (episode.discrete_action >= vocab.BUFFER) & (episode.discrete_action < vocab.NUM_ACTIONS)
        if not valid.all():
            raise ValueError(f"discrete_action values must be in [{vocab.BUFFER}, {vocab.NUM_ACTIONS - 1}]")

    # -- rows -------------------------------------------------------------------------------------------

    def _data_schema(self) -> pa.Schema:
        vector = pa.list_(pa.float32(), len(self.joint_names))
        fields = [(ACTION_KEY, vector), (STATE_KEY, vector), ("timestamp", pa.float32())]
        fields += [(name, pa.int64()) for name in _SCALAR_COLUMNS[1:]]
        if self.discrete_action_column:
            fields.append((DISCRETE_KEY, pa.int64()))
        if self.measured_time_column:
            fields.append((MEASURED_TIME_KEY, pa.float32()))
        return pa.schema(fields)

    def _episode_columns(self, episode: Episode, index: int, task_index: int) -> dict[str, np.ndarray]:
        n = episode.length
        frame_index = np.arange(n, dtype=np.int64)
        columns = {
            ACTION_KEY: episode.action,
            STATE_KEY: episode.state,
            "timestamp": (frame_index / self.fps).astype(np.float32),
            "frame_index": frame_index,
            "episode_index": np.full(n, index, dtype=np.int64),
            "index": frame_index + self._total_frames,
            "task_index": np.full(n, task_index, dtype=np.int64),
        }
        if self.discrete_action_column:
            columns[DISCRETE_KEY] = episode.discrete_action
        if self.measured_time_column:
            columns[MEASURED_TIME_KEY] = np.asarray(episode.frame_times, dtype=np.float32)
        return columns

    def _data_table(self, columns: Mapping[str, np.ndarray]) -> pa.Table:
        arrays = [
            _list_array(columns[f.name])
            if pa.types.is_fixed_size_list(f.type)
            else pa.array(columns[f.name], f.type)
            for f in self._schema
        ]
        return pa.Table.from_arrays(arrays, schema=self._schema)

    # -- metadata ---------------------------------------------------------------------------------------

    def _features(self) -> dict[str, dict[str, Any]]:
        names = [name + JOINT_SUFFIX for name in self.joint_names]
        vector = {"dtype": "float32", "shape": [len(names)], "names": names}
        features: dict[str, dict[str, Any]] = {ACTION_KEY: dict(vector), STATE_KEY: dict(vector)}
        codec_name = av.codec.Codec(self.codec, "w").canonical_name
        for cam, (h, w) in self.cameras.items():
            features[video_key(cam)] = {
                "dtype": "video",
                "shape": [h, w, 3],
                "names": ["height", "width", "channels"],
                "info": {
                    "video.height": h,
                    "video.width": w,
                    "video.codec": codec_name,
                    "video.pix_fmt": "yuv420p",
                    "video.is_depth_map": False,
                    "video.fps": self.fps,
                    "video.channels": 3,
                    "has_audio": False,
                },
            }
        features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
        for name in _SCALAR_COLUMNS[1:]:
            features[name] = {"dtype": "int64", "shape": [1], "names": None}
        if self.discrete_action_column:
            features[DISCRETE_KEY] = {"dtype": "int64", "shape": [1], "names": None}
        if self.measured_time_column:
            features[MEASURED_TIME_KEY] = {"dtype": "float32", "shape": [1], "names": None}
        return features

    def _info(self) -> dict[str, Any]:
        return {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self._episodes),
            "total_frames": self._total_frames,
            "total_tasks": len(self._tasks),
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": self.data_file_mb,
            "video_files_size_in_mb": self.video_file_mb,
            "fps": self.fps,
            "splits": {"train": f"0:{len(self._episodes)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.cameras else None,
            "features": self._features(),
        }

    def _write_metadata(self) -> None:
        episodes_path = self._tmp / EPISODES_PATH.format(chunk_index=0, file_index=0)
        episodes_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self._episodes), episodes_path)
        pq.write_table(_tasks_table(self._tasks), self._tmp / TASKS_PATH)
        keys = self._episode_stats[0].keys()
        stats = {key: _aggregate_stats([s[key] for s in self._episode_stats]) for key in keys}
        stats_json = {key: {k: v.tolist() for k, v in s.items()} for key, s in stats.items()}
        write_json(self._tmp / STATS_PATH, stats_json, **LEROBOT_JSON)
        write_json(self._tmp / INFO_PATH, self._info(), **LEROBOT_JSON)

    def _move_into_place(self) -> None:
        """Rename the finished temporary directory to `root`; an old dataset is moved aside first."""
        old = None
        if _is_nonempty_dir(self.root):
            if not self.overwrite:
                raise DatasetError(f"{self.root} appeared while writing and is not empty; not replacing it")
            old = self.root.parent / f".{self.root.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(self.root, old)
        try:
            os.replace(self._tmp, self.root)
        except OSError:
            if old is not None:
                os.rename(old, self.root)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
