"""A USB camera through OpenCV, returning RGB frames like the simulator's cameras.

`--camera` of `robot-record` and `robot-center` goes through `camera_source`: a number is a device index,
anything else a path (or URL). OpenCV makes no such distinction for strings: `cv2.VideoCapture("0")` opens a
file named `0` when the working directory has one, so a numeric string must become an int first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from models.errors import WorldloopError

CameraSource = int | str
"""A device index (0 is /dev/video0 on Linux) or a video file path / stream URL."""

CAMERA_HELP = "a device index (0 is /dev/video0) or a video file path; a file named 0 is ./0"
"""The `--camera` help of every CLI, saying what `camera_source` does."""


class CameraError(WorldloopError):
    """A camera that cannot be opened or stops delivering frames."""


def camera_source(text: str | int | os.PathLike[str]) -> CameraSource:
    """What a `--camera` value means: ASCII digits are a device index, anything else a path or URL.

    A Path stays a path even when its name is a number, so code (and a user, with `./0`) can still reach
    a file called `0`.
    """
    if isinstance(text, int):
        return text
    if isinstance(text, os.PathLike):
        return os.fspath(text)
    text = text.strip()
    if not text:
        raise CameraError("empty camera: give a device index such as 0, or a video file path")
    if text.isascii() and text.isdigit():
        return int(text)
    return text


def describe_source(source: CameraSource) -> str:
    """How error messages name a camera: `camera device 0`, `camera 'clip.mp4'`."""
    return f"camera device {source}" if isinstance(source, int) else f"camera {source!r}"


@contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Hold back OpenCV's own warnings (`can't open camera by index`, several lines on stderr) while a
    capture opens: a failure is reported as one CameraError line instead."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None:
        yield
        return
    level = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        logging.setLogLevel(level)


def _missing_file(source: CameraSource) -> bool:
    """A path (not a device index or a stream URL) with nothing at it."""
    return isinstance(source, str) and "://" not in source and not Path(source).exists()


def _open_error(source: CameraSource) -> CameraError:
    name = describe_source(source)
    if isinstance(source, int):
        return CameraError(f"{name} cannot be opened: is it plugged in, and not in use by another program?")
    if _missing_file(source):
        return CameraError(f"{name}: no such file or device")
    return CameraError(f"{name} cannot be opened: not a video file or capture device OpenCV can read")


class Camera:
    """`read()` blocks until the next frame: (H, W, 3) uint8 RGB, resized to (width, height) when given."""

    def __init__(
        self,
        source: str | int | os.PathLike[str],
        width: int | None = None,
        height: int | None = None,
        fps: int = 30,
    ):
        """`source` as `camera_source` reads it: "0" is device 0 even if a file named 0 exists."""
        self.source = camera_source(source)
        self.size = (width, height) if width and height else None
        if _missing_file(self.source):
            raise _open_error(self.source)  # without asking OpenCV, which would warn on stderr first
        with _quiet_opencv():
            self._capture = cv2.VideoCapture(self.source)
        if not self._capture.isOpened():
            raise _open_error(self.source)
        self._capture.set(cv2.CAP_PROP_FPS, fps)

    def read(self) -> np.ndarray:
        ok, frame = self._capture.read()
        if not ok or frame is None:
            raise CameraError(f"{describe_source(self.source)} delivered no frame")
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        if self.size and rgb.shape[1::-1] != self.size:
            rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
        return rgb

    def close(self) -> None:
        self._capture.release()

    def __enter__(self) -> Camera:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
