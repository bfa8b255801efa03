"""The `harness data` commands as a user runs them: real subprocesses, real files, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from tests.helpers import assert_one_line_error, harness


def test_synth_info_build_show(tmp_path: Path):
    out = tmp_path / "demo"
    result = harness("data", "synth", "--episodes", 4, "--actions-per-episode", 5, "--out", out, "--seed", 3)
    assert result.returncode == 0, result.stderr
    assert "4 episodes, 300 frames" in result.stdout

    result = harness("data", "info", out)
    assert result.returncode == 0, result.stderr
    assert "4 (300 frames at 30 fps)" in result.stdout
    assert "wrist 64x64" in result.stdout and "base 64x64" in result.stdout
    assert "16 (history 1" in result.stdout  # 4 episodes x (5 actions - 1)

    result = harness("data", "build", out)
    assert result.returncode == 0, result.stderr
    assert "canvases of 136x136" in result.stdout
    assert len(list((out / ".cache").glob("canvas-*"))) == 1

    png = tmp_path / "grid.png"
    result = harness("data", "show", out, "--out", png, "--count", 6)
    assert result.returncode == 0, result.stderr
    image = cv2.imread(str(png))
    assert image is not None and image.shape[0] > 300 and image.shape[1] > 600
    # synth refuses to clobber an existing dataset without --overwrite
    result = harness("data", "synth", "--episodes", 1, "--out", out)
    assert_one_line_error(result, str(out))


def test_missing_dataset_names_the_path(tmp_path: Path):
    assert_one_line_error(harness("data", "info", tmp_path / "nowhere"), "nowhere")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(harness("data", "build", tmp_path / "empty"), "info.json")


def test_other_version_is_refused(dataset_copy: Path):
    info = dataset_copy / "meta" / "info.json"
    meta = json.loads(info.read_text())
    meta["codebase_version"] = "v2.1"
    info.write_text(json.dumps(meta))
    assert_one_line_error(harness("data", "info", dataset_copy), "v2.1", "v3.0")


def test_truncated_parquet_names_the_file(dataset_copy: Path):
    parquet = next((dataset_copy / "data").rglob("*.parquet"))
    parquet.write_bytes(parquet.read_bytes()[: parquet.stat().st_size // 2])
    assert_one_line_error(harness("data", "info", dataset_copy), parquet.name)


def test_undecodable_video_names_the_file_and_leaves_no_cache(dataset_copy: Path):
    video = next((dataset_copy / "videos" / "observation.images.base").rglob("*.mp4"))
    video.write_bytes(b"\x00not a video" * 100)
    result = harness("data", "build", dataset_copy)
    assert_one_line_error(result, video.name)
    leftovers = list((dataset_copy / ".cache").glob("*")) if (dataset_copy / ".cache").exists() else []
    assert leftovers == []


def test_unknown_camera_lists_the_known_ones(sim_dataset: Path):
    assert_one_line_error(
        harness("data", "build", sim_dataset, "--cameras", "wrist,top"), "top", "wrist", "base"
    )


@pytest.mark.parametrize(
    ("args", "field"), [(("--history", "0"), "history"), (("--frame-size", "4"), "frame_width")]
)
def test_bad_canvas_config_lists_the_field(sim_dataset: Path, args: tuple[str, str], field: str):
    result = harness("data", "build", sim_dataset, *args)
    assert_one_line_error(result, "bad config", field)
