"""A USB camera through OpenCV, returning RGB frames like the simulator's cameras."""

from __future__ import annotations

import cv2
import numpy as np

from models.errors import WorldloopError


class CameraError(WorldloopError):
    """A camera that cannot be opened or stops delivering frames."""


class Camera:
    """`read()` blocks until the next frame: (H, W, 3) uint8 RGB, resized to (width, height) when given."""

    def __init__(self, index: int | str, width: int | None = None, height: int | None = None, fps: int = 30):
        self.index = index
        self.size = (width, height) if width and height else None
        self._capture = cv2.VideoCapture(index)
        if not self._capture.isOpened():
            raise CameraError(f"camera {index!r} cannot be opened: is it plugged in and free?")
        self._capture.set(cv2.CAP_PROP_FPS, fps)

    def read(self) -> np.ndarray:
        ok, frame = self._capture.read()
        if not ok or frame is None:
            raise CameraError(f"camera {self.index!r} delivered no frame")
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
