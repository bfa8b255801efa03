"""LeRobot dataset v3.0: the on-disk format (paths, feature keys, constants) that the writer and reader share.

Real recordings made with LeRobot and our simulated ones must read the same way, so the on-disk layout follows
LeRobot's v3.0 schema (`lerobot/datasets/utils.py`, `dataset_metadata.py`, `dataset_writer.py`) rather than
anything of our own: several episodes share one data parquet and one mp4 per camera, and
`meta/episodes/*/*.parquet` says where each episode lives (row range, file indices, video time range).

    meta/info.json                      codebase_version, fps, features, path templates, totals
    meta/stats.json                     per feature min / max / mean / std / count
    meta/tasks.parquet                  task_index + task (pandas index, as LeRobot writes it)
    meta/episodes/chunk-000/file-000.parquet
    data/chunk-{c:03d}/file-{f:03d}.parquet
    videos/observation.images.<camera>/chunk-{c:03d}/file-{f:03d}.mp4
"""

from __future__ import annotations

CODEBASE_VERSION = "v3.0"

INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
LEROBOT_JSON = {"indent": 4, "sort_keys": False, "ensure_ascii": False}  # how LeRobot writes its meta JSON
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
SIDECAR_DIR = "meta/discrete_action_logs"
_CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
EPISODES_PATH = f"{EPISODES_DIR}/{_CHUNK_FILE}.parquet"
DATA_PATH = f"data/{_CHUNK_FILE}.parquet"
VIDEO_PATH = "videos/{video_key}/" + _CHUNK_FILE + ".mp4"

STATE_KEY = "observation.state"
ACTION_KEY = "action"
DISCRETE_KEY = "discrete_action"
MEASURED_TIME_KEY = "measured_timestamp"
"""Seconds since the episode's first frame at which a real recorder actually took each frame. `timestamp`
stays k / fps, as LeRobot's own recorder writes it and its video decoding needs it (frames are looked up at
from_timestamp + timestamp); this column is what the clock said, so pacing can be checked afterwards."""
IMAGE_PREFIX = "observation.images."
JOINT_SUFFIX = ".pos"
"""LeRobot's SO-101 names its state/action entries `<joint>.pos`."""

ACTION_DURATION_S = 0.5
"""How long one discrete action is held; used only to derive actions for datasets that log none."""
DERIVE_DEADBAND = 1.0


def video_key(camera: str) -> str:
    """The feature key of a camera's video: `observation.images.<camera>`."""
    return IMAGE_PREFIX + camera
