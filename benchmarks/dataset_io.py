"""Dataset and canvas throughput: recording, size on disk, cold canvas build vs the warm cache.

`python -m benchmarks.dataset_io [--episodes N]`. The cold build decodes every video and draws every canvas;
the warm cache reads the same canvases back from the memory-mapped cache in training-sized batches. Both
run in one process on the same dataset, so their ratio is meaningful even on a noisy shared machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Row, print_table, write_section
from models.canvas import CanvasConfig
from models.data import SPLITS, build_cache, load_split
from models.lerobot import LeRobotReader
from robot.record import record_sim_dataset
from robot.sim import SimConfig

NAME = "dataset_io"
TITLE = "Dataset I/O: recording, size, canvas cache"


def _dir_bytes(root: Path, part: str) -> int:
    return sum(p.stat().st_size for p in (root / part).rglob("*") if p.is_file())


def run(episodes: int = 40, actions_per_episode: int = 30, workers: int = 2) -> list[Row]:
    rows: list[Row] = []
    config = CanvasConfig()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "sim"
        start = time.perf_counter()
        record_sim_dataset(root, episodes, actions_per_episode, seed=0, config=SimConfig(), workers=workers)
        record_s = time.perf_counter() - start
        frames = LeRobotReader(root).total_frames
        rows.append(
            Row(
                "record sim dataset (render + encode)",
                frames / record_s,
                "frames/s",
                "",
                f"{workers} workers",
            )
        )
        per_k = 1000 / frames
        rows.append(Row("size per 1,000 frames, 2 cameras 64x64", _dir_bytes(root, ".") * per_k / 1e6, "MB"))
        rows.append(Row("  of which video", _dir_bytes(root, "videos") * per_k / 1e6, "MB"))

        start = time.perf_counter()
        reader = LeRobotReader(root)
        decoded = sum(len(ep.discrete_action) for _, ep in reader.iter_episodes())
        rows.append(
            Row("decode all episodes, both cameras", decoded / (time.perf_counter() - start), "steps/s")
        )

        start = time.perf_counter()
        build_cache(root, config)
        cold_s = time.perf_counter() - start
        count = sum(len(load_split(root, config, name)) for name in SPLITS)
        cold_rate = count / cold_s
        rows.append(Row("canvases, cold cache (decode + draw + write)", cold_rate, "canvases/s"))

        start = time.perf_counter()
        build_cache(root, config)  # hit: verifies checksums, builds nothing
        rows.append(
            Row(
                "cache hit check (sha256 of all files)",
                time.perf_counter() - start,
                "s",
                "",
                f"{count} canvases",
            )
        )

        split = load_split(root, config, "train")
        rng = np.random.default_rng(0)
        order = rng.permutation(len(split))
        batch = 64
        start = time.perf_counter()
        checksum = 0
        for i in range(0, len(order), batch):
            chunk = np.ascontiguousarray(split.canvases[np.sort(order[i : i + batch])])
            checksum += int(chunk[:, 0, 0, 0].sum())
        warm_rate = len(order) / (time.perf_counter() - start)
        rows.append(
            Row(
                "canvases, warm cache (shuffled batches of 64)",
                warm_rate,
                "canvases/s",
                ">= 2,000",
                f"{warm_rate / cold_rate:.0f}x cold",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    rows = run(args.episodes)
    print_table(TITLE, rows)
    if not args.no_write:
        notes = (
            f"{args.episodes} simulated episodes of 30 actions (450 frames each), default canvas "
            "(2 cameras, 64x64 frames, history 1: 136x136 px)."
        )
        write_section(NAME, TITLE, rows, notes)


if __name__ == "__main__":
    main()
