"""`--camera`: a number is a device index, anything else a path, and a camera that will not open is one line
naming it, in `Camera` and in both CLIs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from robot.camera import Camera, CameraError, camera_source
from tests.helpers import ROOT, assert_one_line_error, run_module

NO_CAMERA_0 = pytest.mark.skipif(Path("/dev/video0").exists(), reason="this machine has a camera 0")


def write_video(path: Path, frames: int = 3, size: int = 32) -> Path:
    """A small MJPG clip at `path` (written as .avi first: OpenCV picks the container by extension)."""
    tmp = path.with_name(path.name + ".avi")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), 10, (size, size))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((size, size, 3), 60 * i, np.uint8))
    writer.release()
    return tmp.replace(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("12", 12),
        (" 1 ", 1),
        ("/dev/video2", "/dev/video2"),
        ("clip.mp4", "clip.mp4"),
        ("./0", "./0"),
        ("-1", "-1"),
        ("²", "²"),
        ("rtsp://cam.local/stream", "rtsp://cam.local/stream"),
    ],
)
def test_a_number_is_a_device_index_anything_else_a_path(text: str, expected: int | str):
    source = camera_source(text)
    assert source == expected and type(source) is type(expected)


def test_a_path_object_stays_a_path_and_an_int_an_index():
    assert camera_source(Path("0")) == "0"
    assert camera_source(3) == 3


def test_an_empty_camera_is_a_camera_error():
    with pytest.raises(CameraError, match="empty camera"):
        camera_source("  ")


@NO_CAMERA_0
def test_0_is_device_0_even_when_a_file_named_0_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    write_video(tmp_path / "0")
    with Camera("./0", 16, 16) as camera:  # the file itself opens fine ...
        assert camera.read().shape == (16, 16, 3)
    with pytest.raises(CameraError) as error:  # ... but "0" means the device
        Camera("0")
    assert str(error.value).startswith("camera device 0 cannot be opened")


@NO_CAMERA_0
def test_a_missing_device_is_one_line_without_opencvs_warnings(capfd: pytest.CaptureFixture[str]):
    level = cv2.utils.logging.getLogLevel()
    with pytest.raises(CameraError, match="^camera device 0 cannot be opened: is it plugged in"):
        Camera(0)
    assert capfd.readouterr().err == ""
    assert cv2.utils.logging.getLogLevel() == level


def test_an_unopenable_path_is_one_line_naming_it(tmp_path: Path):
    missing = tmp_path / "clip.mp4"
    with pytest.raises(CameraError) as error:
        Camera(str(missing))
    assert str(error.value) == f"camera {str(missing)!r}: no such file or device"
    notes = tmp_path / "notes.txt"
    notes.write_text("not a video")
    with pytest.raises(CameraError) as error:
        Camera(str(notes))
    message = str(error.value)
    assert message.startswith(f"camera {str(notes)!r} cannot be opened") and "\n" not in message


def test_a_file_camera_that_runs_out_says_so(tmp_path: Path):
    with Camera(write_video(tmp_path / "clip", frames=1)) as camera:
        camera.read()
        with pytest.raises(CameraError, match="delivered no frame"):
            camera.read()


def test_robot_record_with_a_bad_camera_is_one_line(tmp_path: Path):
    missing = tmp_path / "clip.mp4"
    result = run_module(
        "robot.record_cli",
        "--port",
        "/dev/null",
        "--calibration",
        tmp_path / "so101.json",
        "--camera",
        missing,
        "--out",
        tmp_path / "out",
    )
    assert_one_line_error(result, f"camera {str(missing)!r}: no such file or device")
    assert result.returncode == 1
    assert not (tmp_path / "out").exists()


@NO_CAMERA_0
def test_robot_record_camera_0_is_the_device_not_a_file_named_0(tmp_path: Path):
    write_video(tmp_path / "0")
    result = run_module(
        "robot.record_cli",
        "--port",
        "/dev/null",
        "--calibration",
        "so101.json",
        "--camera",
        "0",
        "--out",
        "out",
        cwd=tmp_path,
    )
    assert_one_line_error(result, "camera device 0 cannot be opened")


def test_robot_center_with_a_bad_camera_is_one_line(tmp_path: Path):
    missing = tmp_path / "wrist.mp4"
    result = run_module(
        "robot.center_cli",
        "--checkpoint",
        ROOT / "tests/fixtures/tiny-dit",
        "--port",
        "/dev/null",
        "--calibration",
        tmp_path / "so101.json",
        "--camera",
        missing,
        "--base-camera",
        write_video(tmp_path / "base.avi"),
        "--out",
        tmp_path / "reports",
    )
    assert_one_line_error(result, f"camera {str(missing)!r}: no such file or device")
    assert result.returncode == 1
