"""Reading a LeRobot v3.0 dataset (models/lerobot/format.py), ours or one recorded with LeRobot itself.

Every input problem raises `DatasetError` with one line naming the file or field, never a raw pyarrow / av
traceback."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models import vocab
from models.episode import Episode
from models.errors import DatasetError
from models.lerobot.format import (
    ACTION_DURATION_S,
    ACTION_KEY,
    CODEBASE_VERSION,
    DERIVE_DEADBAND,
    DISCRETE_KEY,
    EPISODES_DIR,
    IMAGE_PREFIX,
    INFO_PATH,
    JOINT_SUFFIX,
    SIDECAR_DIR,
    STATE_KEY,
    VIDEO_PATH,
    video_key,
)

# ----------------------------------------------------------------------------------------------- reading


_REQUIRED_FEATURES = (STATE_KEY, ACTION_KEY, "timestamp", "frame_index", "episode_index")


def _one_line(exc: BaseException) -> str:
    """pyarrow and ffmpeg messages can span lines; a DatasetError must stay one line."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


_SEEK_AHEAD_S = 2.0

# AVFrame colorspace / color_range codes that mean BT.601 limited range (or unspecified, which decoders
# and our writer treat as BT.601 limited for small SD frames).
_BT601_COLORSPACES = {2, 5, 6}
_LIMITED_RANGES = {0, 1}


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """A decoded frame as (H, W, 3) uint8 RGB.

    For the common yuv420p BT.601 case OpenCV converts about 20x faster than PyAV's per-frame swscale
    context at small frame sizes, and without swscale's slight darkening bias; anything else (full range,
    BT.709, 10-bit) goes through PyAV, which honours the frame's color metadata.
    """
    if (
        frame.format.name == "yuv420p"
        and frame.colorspace in _BT601_COLORSPACES
        and frame.color_range in _LIMITED_RANGES
        and frame.width % 2 == 0
        and frame.height % 2 == 0
    ):
        return cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2RGB_I420)
    return frame.to_ndarray(format="rgb24")


"""Skip ahead by seeking only past this gap; shorter gaps are cheaper to decode through."""


def _load_info(root: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a directory")
    path = root / INFO_PATH
    if not path.is_file():
        raise DatasetError(f"{path} is missing: not a LeRobot dataset")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({_one_line(exc)})") from None
    if not isinstance(info, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    version = info.get("codebase_version")
    if version != CODEBASE_VERSION:
        raise DatasetError(
            f"{path}: codebase_version is {version!r}, but LeRobot dataset {CODEBASE_VERSION} is required "
            f"(convert it with LeRobot's convert_dataset_v21_to_v30 script)"
        )
    features = info.get("features")
    if not isinstance(features, dict):
        raise DatasetError(f"{path}: field 'features' is missing")
    for key in ("fps", "data_path"):
        if key not in info:
            raise DatasetError(f"{path}: field {key!r} is missing")
    for key in _REQUIRED_FEATURES:
        if key not in features:
            raise DatasetError(f"{path}: required feature {key!r} is missing from 'features'")
    return info


def _parquet_schema_names(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"{path} is missing")
    try:
        return pq.read_schema(path).names
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{path}: unreadable parquet file ({_one_line(exc)})") from None


def _read_parquet(path: Path, columns: Sequence[str], required: Sequence[str]) -> pa.Table:
    """The `columns` the file has; a missing `required` column or a corrupt file is a DatasetError."""
    names = _parquet_schema_names(path)
    missing = [c for c in required if c not in names]
    if missing:
        raise DatasetError(f"{path}: column {missing[0]!r} is missing")
    try:
        return pq.read_table(path, columns=[c for c in columns if c in names])
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{path}: unreadable parquet file ({_one_line(exc)})") from None


def _video_columns(camera: str) -> list[str]:
    prefix = f"videos/{video_key(camera)}/"
    return [prefix + name for name in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]


def _load_episode_rows(root: Path, cameras: Sequence[str]) -> dict[int, dict[str, Any]]:
    """Episode index -> its row of `meta/episodes` (stats columns left out: they are large and unused)."""
    paths = sorted((root / EPISODES_DIR).glob("*/*.parquet"))
    if not paths:
        raise DatasetError(
            f"{root / EPISODES_DIR}: no episodes parquet files (meta/episodes/chunk-*/file-*.parquet)"
        )
    required = ["episode_index", "data/chunk_index", "data/file_index"]
    required += [c for cam in cameras for c in _video_columns(cam)]
    optional = ["tasks", "length", "dataset_from_index", "dataset_to_index"]
    rows: dict[int, dict[str, Any]] = {}
    for path in paths:
        for row in _read_parquet(path, required + optional, required).to_pylist():
            if row.get("length") is None:
                if row.get("dataset_to_index") is None or row.get("dataset_from_index") is None:
                    raise DatasetError(f"{path}: column 'length' is missing")
                row["length"] = row["dataset_to_index"] - row["dataset_from_index"]
            rows[int(row["episode_index"])] = row
    return dict(sorted(rows.items()))


def _joint_names(feature: Mapping[str, Any]) -> tuple[str, ...]:
    """Joint names from the state feature's names, without LeRobot's `.pos` suffix."""
    names = feature.get("names")
    if isinstance(names, dict):  # older ports: {"motors": [...]}
        names = next(iter(names.values()), None)
    if not names:
        return tuple(f"joint_{i}" for i in range(int(feature["shape"][0])))
    return tuple(name.removesuffix(JOINT_SUFFIX) for name in names)


def _matrix(table: pa.Table, key: str, path: Path) -> np.ndarray:
    """A list-of-floats column (fixed or variable size lists) as a (T, J) float32 array."""
    column = table.column(key).combine_chunks()
    if not (
        pa.types.is_list(column.type)
        or pa.types.is_fixed_size_list(column.type)
        or pa.types.is_large_list(column.type)
    ):
        raise DatasetError(f"{path}: column {key!r} is {column.type}, expected lists of floats")
    values = column.flatten().to_numpy(zero_copy_only=False)
    if len(table) and len(values) % len(table):
        raise DatasetError(f"{path}: column {key!r} has lists of different lengths or nulls")
    return values.astype(np.float32, copy=False).reshape(len(table), -1)


def _sidecar_paths(root: Path) -> dict[int, Path]:
    """Episode index -> `meta/discrete_action_logs/episode_<index>.jsonl`, whatever the zero padding."""
    paths = {}
    for path in sorted((root / SIDECAR_DIR).glob("episode_*.jsonl")):
        suffix = path.stem.removeprefix("episode_")
        if suffix.isdigit():
            paths[int(suffix)] = path
    return paths


def _read_sidecar(path: Path, length: int) -> np.ndarray:
    """Per-frame action ids from a sidecar log in the published coding, dense or sparse.

    Lines without `frame_index` (the header) are skipped. The action at frame f is the last one logged at a
    frame <= f; frames before the first logged line are buffer frames.
    """
    logged_frames, codes = [], []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable ({_one_line(exc)})") from None
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{line_number}: not valid JSON ({_one_line(exc)})") from None
        if not isinstance(entry, dict) or "frame_index" not in entry:
            continue
        if "discrete_action" not in entry:
            raise DatasetError(f"{path}:{line_number}: field 'discrete_action' is missing")
        logged_frames.append(int(entry["frame_index"]))
        codes.append(int(entry["discrete_action"]))
    if not codes:
        return np.full(length, vocab.BUFFER, dtype=np.int64)
    try:
        actions = vocab.from_published_codes(np.array(codes, dtype=np.int64))
    except ValueError as exc:
        raise DatasetError(f"{path}: {exc}") from None
    order = np.argsort(logged_frames, kind="stable")
    last = np.searchsorted(np.asarray(logged_frames)[order], np.arange(length), side="right") - 1
    return np.where(last >= 0, actions[order][np.maximum(last, 0)], vocab.BUFFER).astype(np.int64)


class _VideoCursor:
    """Where decoding stands in one camera's mp4 files.

    Reading episodes in file order decodes each file once, front to back: frames past the requested episode
    are kept for the next one, and only a jump backwards or far ahead seeks (to the keyframe before it).
    Frame k of an episode is the frame shown at from_timestamp + k / fps (half a frame of tolerance).
    """

    def __init__(self, fps: int) -> None:
        self._fps = fps
        self._path: Path | None = None
        self._container: Any = None
        self._stream: Any = None
        self._decoder: Iterator[av.VideoFrame] | None = None
        self._pending: av.VideoFrame | None = None
        self._position = 0.0

    def read(self, path: Path, from_timestamp: float, length: int) -> np.ndarray:
        """The episode's (length, H, W, 3) uint8 RGB frames."""
        if path != self._path:
            self._open(path)
        half = 0.5 / self._fps
        if from_timestamp < self._position - half or from_timestamp > self._position + _SEEK_AHEAD_S:
            self._seek(from_timestamp)
        end = from_timestamp + (length - 0.5) / self._fps
        out: np.ndarray | None = None
        filled = np.zeros(length, dtype=bool)
        for frame in self._frames():
            t = frame.time
            if t is None:
                raise DatasetError(f"{path}: a video frame has no timestamp")
            if t < from_timestamp - half:
                continue
            if t >= end:
                self._pending = frame
                break
            rgb = _to_rgb(frame)
            if out is None:
                out = np.empty((length, *rgb.shape), dtype=np.uint8)
            k = round((t - from_timestamp) * self._fps)
            out[k], filled[k] = rgb, True
        self._position = from_timestamp + length / self._fps
        if out is None or not filled.all():
            raise DatasetError(
                f"{path}: video has {int(filled.sum())} frames between {from_timestamp:.3f}s and "
                f"{from_timestamp + length / self._fps:.3f}s, but the episodes table says {length}"
            )
        return out

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = self._stream = self._decoder = self._pending = self._path = None
        self._position = 0.0

    def _open(self, path: Path) -> None:
        self.close()
        if not path.is_file():
            raise DatasetError(f"{path}: video file is missing")
        try:
            self._container = av.open(str(path))
            if not self._container.streams.video:
                raise DatasetError(f"{path}: file has no video stream")
        except av.FFmpegError as exc:
            self.close()
            raise DatasetError(f"{path}: cannot decode video ({_one_line(exc)})") from None
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self._decoder = self._container.decode(self._stream)
        self._path = path

    def _seek(self, timestamp: float) -> None:
        try:
            self._container.seek(
                round(timestamp / self._stream.time_base), stream=self._stream, backward=True
            )
        except av.FFmpegError as exc:
            raise DatasetError(f"{self._path}: cannot seek to {timestamp:.3f}s ({_one_line(exc)})") from None
        self._decoder = self._container.decode(self._stream)
        self._pending = None

    def _frames(self) -> Iterator[av.VideoFrame]:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            yield frame
        while True:
            try:
                frame = next(self._decoder)
            except StopIteration:
                return
            except av.FFmpegError as exc:
                raise DatasetError(f"{self._path}: cannot decode video ({_one_line(exc)})") from None
            yield frame


class LeRobotReader:
    """Reads a LeRobot v3.0 dataset, ours or one recorded with LeRobot, into `Episode`s.

    Metadata is loaded and checked up front; parquet rows on demand (one data file cached, since episodes
    are read in order), video frames only by `read_episode` / `iter_episodes`.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.info = _load_info(self.root)
        features: dict[str, dict[str, Any]] = self.info["features"]
        self.fps = int(self.info["fps"])
        self.joint_names = _joint_names(features[STATE_KEY])
        self.cameras = tuple(
            key.removeprefix(IMAGE_PREFIX)
            for key, ft in features.items()
            if key.startswith(IMAGE_PREFIX) and ft.get("dtype") == "video"
        )
        self._rows = _load_episode_rows(self.root, self.cameras)
        self.num_episodes = len(self._rows)
        self.episode_lengths = np.array([row["length"] for row in self._rows.values()], dtype=np.int64)
        self.total_frames = int(self.episode_lengths.sum())
        self._sidecars = _sidecar_paths(self.root)
        self.action_source = (
            "column" if DISCRETE_KEY in features else "sidecar" if self._sidecars else "derived"
        )
        """Where discrete actions come from: "column", "sidecar" (published codes) or "derived"."""
        self._cached_data: tuple[Path, pa.Table, np.ndarray] | None = None

    @property
    def episode_indices(self) -> list[int]:
        return list(self._rows)

    def read_tabular(self, episode_index: int) -> Episode:
        """An episode without frames (`frames == {}`): parquet only, fast enough to scan a whole dataset."""
        return self._episode(self._check_index(episode_index), frames={})

    def read_episode(self, episode_index: int, cameras: Sequence[str] | None = None) -> Episode:
        """An episode with the frames of `cameras` (default: all)."""
        return next(iter(self.iter_episodes([episode_index], cameras)))[1]

    def iter_episodes(
        self, episode_indices: Sequence[int] | None = None, cameras: Sequence[str] | None = None
    ) -> Iterator[tuple[int, Episode]]:
        """(index, episode) for the given episodes (default: all), in file order (ascending index).

        Each mp4 is decoded once, front to back, and only one episode's frames are held at a time.
        """
        indices = self.episode_indices if episode_indices is None else episode_indices
        chosen = sorted({self._check_index(i) for i in indices})
        return self._iter(chosen, self._check_cameras(cameras))

    # -- internals --------------------------------------------------------------------------------------

    def _iter(self, indices: Sequence[int], cameras: Sequence[str]) -> Iterator[tuple[int, Episode]]:
        cursors = {cam: _VideoCursor(self.fps) for cam in cameras}
        try:
            for index in indices:
                row = self._rows[index]
                frames = {}
                for cam in cameras:
                    path, from_timestamp = self._video_location(row, cam)
                    frames[cam] = cursors[cam].read(path, from_timestamp, row["length"])
                yield index, self._episode(index, frames)
        finally:
            for cursor in cursors.values():
                cursor.close()

    def _check_index(self, episode_index: int) -> int:
        index = int(episode_index)
        if index not in self._rows:
            known = self.episode_indices
            span = f"{known[0]}..{known[-1]}" if known else "none"
            raise DatasetError(f"episode {index} is out of range for {self.root}: episodes are {span}")
        return index

    def _check_cameras(self, cameras: Sequence[str] | None) -> tuple[str, ...]:
        if cameras is None:
            return self.cameras
        if isinstance(cameras, str):
            cameras = [cameras]
        for cam in cameras:
            if cam not in self.cameras:
                available = ", ".join(self.cameras) or "none"
                raise DatasetError(f"camera {cam!r} is not in {self.root}; available cameras: {available}")
        return tuple(cameras)

    def _video_location(self, row: Mapping[str, Any], camera: str) -> tuple[Path, float]:
        chunk, file, from_timestamp, _ = (row[c] for c in _video_columns(camera))
        template = self.info.get("video_path") or VIDEO_PATH
        relative = template.format(video_key=video_key(camera), chunk_index=chunk, file_index=file)
        return self.root / relative, float(from_timestamp)

    def _data_rows(self, index: int) -> tuple[Path, pa.Table]:
        """The episode's rows, sorted by frame_index, and the data file they came from."""
        row = self._rows[index]
        path = self.root / self.info["data_path"].format(
            chunk_index=row["data/chunk_index"], file_index=row["data/file_index"]
        )
        if self._cached_data is None or self._cached_data[0] != path:
            self._cached_data = (path, *self._load_data_file(path))
        _, table, episode_column = self._cached_data
        lo, hi = np.searchsorted(episode_column, [index, index + 1])
        rows = table.slice(lo, hi - lo)
        if len(rows) != row["length"]:
            raise DatasetError(
                f"{path}: episode {index} has {len(rows)} rows, but the episodes table says {row['length']}"
            )
        frame_index = rows.column("frame_index").to_numpy()
        if np.any(np.diff(frame_index) < 0):
            rows = rows.take(np.argsort(frame_index, kind="stable"))
        return path, rows

    def _load_data_file(self, path: Path) -> tuple[pa.Table, np.ndarray]:
        """A data file's rows sorted by episode_index (stable), so an episode is one slice of it."""
        wanted = [*_REQUIRED_FEATURES, DISCRETE_KEY]
        required = (
            [*_REQUIRED_FEATURES, DISCRETE_KEY] if self.action_source == "column" else _REQUIRED_FEATURES
        )
        table = _read_parquet(path, wanted, required)
        episode_column = table.column("episode_index").to_numpy()
        if np.any(np.diff(episode_column) < 0):
            order = np.argsort(episode_column, kind="stable")
            table, episode_column = table.take(order), episode_column[order]
        return table, episode_column

    def _episode(self, index: int, frames: dict[str, np.ndarray]) -> Episode:
        path, rows = self._data_rows(index)
        state, action = _matrix(rows, STATE_KEY, path), _matrix(rows, ACTION_KEY, path)
        for name, matrix in ((STATE_KEY, state), (ACTION_KEY, action)):
            if matrix.shape[1] != len(self.joint_names):
                raise DatasetError(
                    f"{path}: column {name!r} has {matrix.shape[1]} values per row, "
                    f"info.json names {len(self.joint_names)} joints"
                )
        tasks = self._rows[index].get("tasks") or [""]
        return Episode(
            frames=frames,
            state=state,
            action=action,
            discrete_action=self._discrete_actions(index, rows, state, action),
            fps=self.fps,
            task=tasks[0],
            joint_names=self.joint_names,
            meta={"episode_index": index, "timestamp": rows.column("timestamp").to_numpy()},
        )

    def _discrete_actions(
        self, index: int, rows: pa.Table, state: np.ndarray, action: np.ndarray
    ) -> np.ndarray:
        if self.action_source == "column":
            return rows.column(DISCRETE_KEY).to_numpy().astype(np.int64)
        if self.action_source == "sidecar":
            if index not in self._sidecars:
                raise DatasetError(
                    f"{self.root / SIDECAR_DIR}: no episode_{index:06d}.jsonl for episode {index}"
                )
            return _read_sidecar(self._sidecars[index], len(rows))
        if vocab.ACTION_JOINT not in self.joint_names:
            raise DatasetError(
                f"{self.root / INFO_PATH}: cannot derive discrete actions, no joint {vocab.ACTION_JOINT!r} "
                f"in {STATE_KEY} names"
            )
        joint = self.joint_names.index(vocab.ACTION_JOINT)
        frames_per_action = max(1, round(ACTION_DURATION_S * self.fps))
        return vocab.derive_from_commands(
            action[:, joint], frames_per_action, deadband=DERIVE_DEADBAND, measured=state[:, joint]
        )
