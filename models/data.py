"""From a LeRobot dataset to canvases: episode splits, sample selection and the canvas cache.

Judging code: the harness always runs this file from the night's base commit, so the agent can change how a
model reads canvases but never which samples are in val or test.

A sample is `history` consecutive held actions plus the frame after the last one. Steps sit on action
boundaries found from the discrete actions, so data whose actions start mid-recording (buffer frames) or
change at uneven times still yields only clean samples: every interval between two steps holds exactly one
action for exactly `action_duration`.

The cache keeps each split's canvases in one `.npy` (memory-mapped on load) with a `.meta.npz` of
per-sample facts and an `index.json` with sha256 checksums. Its directory name is a hash of the dataset's
content, the canvas config and the split config, so a change of any of them builds a new cache and an
unchanged one is never rebuilt. Caches are written to a temporary directory and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from models.canvas import CanvasConfig, build_many
from models.episode import Episode
from models.errors import DatasetError, MissingCacheError
from models.files import sha256, write_json
from models.lerobot import LeRobotReader
from models.vocab import BUFFER

SPLITS = ("train", "val", "test")
CACHE_FORMAT = 1
CACHE_DIRNAME = ".cache"


class SplitConfig(BaseModel):
    """Episode-level split. Seeded, so every run of a night (and every night) sees the same val and test."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)


DEFAULT_SPLIT = SplitConfig()


def split_episodes(num_episodes: int, split: SplitConfig = DEFAULT_SPLIT) -> dict[str, np.ndarray]:
    """Episode indices per split; val and test get at least one episode each when there are 3 or more."""
    if split.val_fraction + split.test_fraction >= 1:
        raise ValueError("val_fraction + test_fraction must leave episodes for training")
    order = np.random.default_rng(split.seed).permutation(num_episodes)
    n_val = round(num_episodes * split.val_fraction)
    n_test = round(num_episodes * split.test_fraction)
    if num_episodes >= 3:
        n_val = max(n_val, 1 if split.val_fraction > 0 else 0)
        n_test = max(n_test, 1 if split.test_fraction > 0 else 0)
    return {
        "test": np.sort(order[:n_test]),
        "val": np.sort(order[n_test : n_test + n_val]),
        "train": np.sort(order[n_test + n_val :]),
    }


def step_starts(discrete_action: np.ndarray, frames_per_action: int) -> np.ndarray:
    """First frames of the clean action intervals of an episode.

    An interval is `frames_per_action` frames holding one valid action. A run of the same action that lasts
    k intervals gives k starts; a shorter remainder (an action cut short) gives none.
    """
    actions = np.asarray(discrete_action)
    n = len(actions)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.flatnonzero(np.diff(actions)) + 1
    run_starts = np.concatenate([[0], change])
    run_ends = np.concatenate([change, [n]])
    starts = [
        np.arange(s, e - frames_per_action + 1, frames_per_action)
        for s, e in zip(run_starts, run_ends, strict=True)
        if actions[s] != BUFFER
    ]
    return np.concatenate(starts).astype(np.int64) if starts else np.zeros(0, dtype=np.int64)


def sample_frames(discrete_action: np.ndarray, frames_per_action: int, history: int) -> np.ndarray:
    """(N, history + 1) frame indices of every sample in an episode: the steps' frames, target last.

    Consecutive intervals must touch (the next starts where the previous ends) and the target frame must
    exist in the episode.
    """
    starts = step_starts(discrete_action, frames_per_action)
    n = len(discrete_action)
    rows = []
    for i in range(len(starts) - history + 1):
        chain = starts[i : i + history]
        target = chain[-1] + frames_per_action
        if np.all(np.diff(chain) == frames_per_action) and target < n:
            rows.append([*chain, target])
    return np.array(rows, dtype=np.int64).reshape(-1, history + 1)


@dataclass
class EpisodeSamples:
    """Everything but the pixels of one episode's samples; what `index.json` and `.meta.npz` hold."""

    episode: int
    frames: np.ndarray  # (N, steps) frame indices
    actions: np.ndarray  # (N, history)
    states: np.ndarray  # (N, steps, J) at the steps
    prev_states: np.ndarray  # (N, J) one action before the first step


def episode_samples(episode_index: int, episode: Episode, config: CanvasConfig) -> EpisodeSamples:
    """Which samples an episode gives and their actions and joint states (frames are not needed)."""
    fpa = config.frames_per_action(episode.fps)
    frames = sample_frames(episode.discrete_action, fpa, config.history)
    missing = [j for j in config.joints if j not in episode.joint_names]
    if missing:
        raise DatasetError(f"joint(s) {missing} not in the dataset; it has {list(episode.joint_names)}")
    cols = [episode.joint_names.index(j) for j in config.joints]
    state = episode.state[:, cols]
    return EpisodeSamples(
        episode=episode_index,
        frames=frames,
        actions=episode.discrete_action[frames[:, :-1]],
        states=state[frames],
        prev_states=state[np.maximum(frames[:, 0] - fpa, 0)],
    )


def render_samples(samples: EpisodeSamples, episode: Episode, config: CanvasConfig) -> np.ndarray:
    """(N, H, W, 3) canvases of one episode's samples."""
    frames = {cam: episode.frames[cam][samples.frames] for cam in config.cameras}
    return build_many(config, frames, samples.states, samples.prev_states, samples.actions)


# ----------------------------------------------------------------------------------------------- cache


@dataclass
class CanvasSplit:
    """A split's canvases (memory-mapped) and per-sample facts, as models and the evaluator consume them."""

    name: str
    config: CanvasConfig
    canvases: np.ndarray  # (N, H, W, 3) uint8
    episode: np.ndarray  # (N,)
    frames: np.ndarray  # (N, steps)
    actions: np.ndarray  # (N, history)
    states: np.ndarray  # (N, steps, J)

    def __len__(self) -> int:
        return len(self.canvases)


def dataset_fingerprint(root: Path) -> str:
    """Hash of what a dataset holds: content of meta and data files, name and size of videos.

    Videos can be gigabytes and are only ever appended or replaced, so their size stands in for content.
    """
    digest = hashlib.sha256()
    for path in sorted(
        p for p in root.rglob("*") if p.is_file() and CACHE_DIRNAME not in p.relative_to(root).parts
    ):
        rel = path.relative_to(root).as_posix()
        digest.update(rel.encode() + b"\0")
        if rel.startswith("videos/"):
            digest.update(str(path.stat().st_size).encode())
        else:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def cache_key(root: Path, config: CanvasConfig, split: SplitConfig) -> str:
    blob = json.dumps(
        {
            "format": CACHE_FORMAT,
            "dataset": dataset_fingerprint(root),
            "canvas": config.fingerprint(),
            "split": split.model_dump(mode="json"),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_dir(
    root: Path, config: CanvasConfig, split: SplitConfig = DEFAULT_SPLIT, cache_root: Path | None = None
) -> Path:
    return (cache_root or Path(root) / CACHE_DIRNAME) / f"canvas-{cache_key(Path(root), config, split)}"


Progress = Callable[[int, int], None]
"""Called with (episodes done, episodes total) while a cache builds."""


def build_cache(
    root: Path,
    config: CanvasConfig,
    split: SplitConfig = DEFAULT_SPLIT,
    cache_root: Path | None = None,
    progress: Progress | None = None,
    force: bool = False,
) -> Path:
    """Build (or find) the canvas cache of a dataset for a canvas config. Returns its directory."""
    root = Path(root)
    reader = LeRobotReader(root)
    check_cameras(reader, config)
    target = cache_dir(root, config, split, cache_root)
    if target.exists() and not force:
        verify_cache(target)
        return target

    episodes_of = split_episodes(reader.num_episodes, split)
    samples = {i: episode_samples(i, reader.read_tabular(i), config) for i in range(reader.num_episodes)}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        arrays = {
            name: np.lib.format.open_memmap(
                tmp / f"{name}.npy",
                mode="w+",
                dtype=np.uint8,
                shape=(sum(len(samples[i].frames) for i in episodes_of[name]), *config.layout.shape),
            )
            for name in SPLITS
        }
        offsets = {name: 0 for name in SPLITS}
        split_of = {int(i): name for name, ids in episodes_of.items() for i in ids}
        for done, (i, episode) in enumerate(reader.iter_episodes(cameras=config.cameras), start=1):
            name, n = split_of[i], len(samples[i].frames)
            if n:
                arrays[name][offsets[name] : offsets[name] + n] = render_samples(samples[i], episode, config)
            offsets[name] += n
            if progress:
                progress(done, reader.num_episodes)
        index = {
            "format": CACHE_FORMAT,
            "dataset": str(root.resolve()),
            "canvas": config.model_dump(mode="json"),
        }
        index["split"] = split.model_dump(mode="json")
        index["splits"] = {}
        for name in SPLITS:
            arrays[name].flush()
            del arrays[name]
            ordered = [samples[int(i)] for i in episodes_of[name]]
            _save_meta(tmp / f"{name}.meta.npz", ordered, config)
            index["splits"][name] = {
                "count": offsets[name],
                "episodes": [int(i) for i in episodes_of[name]],
                "sha256": {f: sha256(tmp / f) for f in (f"{name}.npy", f"{name}.meta.npz")},
            }
        write_json(tmp / "index.json", index)
        if force and target.exists():
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.exists():
                raise
            shutil.rmtree(tmp)  # another builder finished the same cache first; theirs is as good
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def check_cameras(reader: LeRobotReader, config: CanvasConfig) -> None:
    """Refuse a canvas config that asks for cameras the dataset does not have, naming both."""
    missing = [cam for cam in config.cameras if cam not in reader.cameras]
    if missing:
        raise DatasetError(
            f"camera(s) {missing} not in {reader.root / 'meta/info.json'}; it has {list(reader.cameras)}"
        )


def load_split(
    root: Path,
    config: CanvasConfig,
    name: str,
    split: SplitConfig = DEFAULT_SPLIT,
    cache_root: Path | None = None,
) -> CanvasSplit:
    """A split's canvases from the cache; a missing cache says how to build it."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; splits: {', '.join(SPLITS)}")
    root = Path(root)
    if not (root / "meta" / "info.json").exists():
        LeRobotReader(root)  # raises the reader's precise error
    directory = cache_dir(root, config, split, cache_root)
    if not (directory / "index.json").exists():
        check_cameras(LeRobotReader(root), config)  # a config this dataset can never serve: say why
        raise MissingCacheError(
            f"no canvas cache for {root} with this canvas config; build it with `harness data build {root}` "
            "and the same canvas options (or `--config <experiment.toml>`)"
        )
    meta_file = directory / f"{name}.meta.npz"
    try:
        canvases = np.load(directory / f"{name}.npy", mmap_mode="r")
        with np.load(meta_file) as meta:
            facts = {k: meta[k] for k in ("episode", "frames", "actions", "states")}
    except (OSError, ValueError, KeyError) as err:
        raise DatasetError(
            f"canvas cache {directory} is damaged ({err}); rebuild with `harness data build {root} --force`"
        ) from None
    if canvases.shape[1:] != config.layout.shape or len(canvases) != len(facts["episode"]):
        raise DatasetError(
            f"canvas cache {directory} does not match its index; "
            f"rebuild with `harness data build {root} --force`"
        )
    return CanvasSplit(name=name, config=config, canvases=canvases, **facts)


def read_index(directory: Path) -> dict:
    """A cache's `index.json`: canvas and split config, and per split its count, episodes and checksums."""
    index_file = Path(directory) / "index.json"
    try:
        return json.loads(index_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetError(f"canvas cache index {index_file} is unreadable: {err}") from None


def verify_cache(directory: Path) -> dict:
    """Check every cache file against the checksums in its index; a mismatch names the file."""
    index = read_index(directory)
    for entry in index.get("splits", {}).values():
        for file, expected in entry["sha256"].items():
            path = directory / file
            if not path.exists() or sha256(path) != expected:
                raise DatasetError(f"canvas cache file {path} is missing or damaged; rebuild with --force")
    return index


def _save_meta(path: Path, samples: list[EpisodeSamples], config: CanvasConfig) -> None:
    steps, joints = config.history + 1, len(config.joints)

    def cat(attr: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        parts = [getattr(s, attr) for s in samples]
        return np.concatenate(parts).astype(dtype) if parts else np.zeros((0, *shape), dtype=dtype)

    np.savez(
        path,
        episode=np.concatenate(
            [np.full(len(s.frames), s.episode, dtype=np.int64) for s in samples] or [np.zeros(0, np.int64)]
        ),
        frames=cat("frames", (steps,), np.int64),
        actions=cat("actions", (config.history,), np.int64),
        states=cat("states", (steps, joints), np.float32),
        prev_states=cat("prev_states", (joints,), np.float32),
    )
