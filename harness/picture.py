"""Pictures drawn straight into pixels: images, frames and text in an RGB array, written as a PNG.

A run's grid figures (its counterfactuals, its error heatmaps) are pictures, not plots: no axes, no ticks.
Drawn through matplotlib's figures they cost about 0.3 s of CPU each (the figure, text layout, the PNG
encoder at its slowest setting), most of a run's figure time, paid once per run in every night and in the
painter of a parallel one. Here the text still comes from matplotlib's font engine (FreeType, DejaVu Sans,
antialiased, as in the plots), laid out by hand on a pixel grid; a grid figure takes a few ms.
"""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
from matplotlib import font_manager
from matplotlib.colors import to_rgb

from models.files import replacing

DPI = 110  # text sizes are in points at this resolution, as the matplotlib figures beside them
PNG_COMPRESSION = 3  # zlib level: within a few % of the smallest file, several times faster than 9

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)


def rgb(color: str | tuple[float, ...] | np.ndarray) -> tuple[int, int, int]:
    """A color as RGB 0-255 from anything matplotlib names a color by ("black", "#b00020", RGB in [0, 1])."""
    r, g, b = (int(round(c * 255)) for c in to_rgb(tuple(color) if not isinstance(color, str) else color))
    return r, g, b


@functools.cache
def _font_path() -> str:
    return font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"))


def line_height(size: float) -> int:
    """Pixels from one line of `size`-point text to the next."""
    return int(round(size * DPI / 72 * 1.25))


def _render_line(text: str, size: float) -> np.ndarray:
    """One line of text as coverage (0-255), `line_height(size)` rows high, its baseline where every other
    line's is (so lines of different letters sit on one baseline)."""
    font = font_manager.get_font(_font_path())
    font.clear()
    font.set_size(size, DPI)
    font.set_text(text, 0.0)
    font.draw_glyphs_to_bitmap(antialiased=True)
    glyphs = np.asarray(font.get_image())
    height = line_height(size)
    baseline = int(round(size * DPI / 72 * 0.95))  # DejaVu's ascender is 0.93 em
    top = max(0, baseline + font.get_descent() // 64 - glyphs.shape[0])
    out = np.zeros((height, glyphs.shape[1]), np.uint8)
    rows = min(glyphs.shape[0], height - top)
    out[top : top + rows] = glyphs[:rows]
    return out


def render_text(text: str, size: float, align: str = "center") -> np.ndarray:
    """Lines of text as one coverage block (0-255), each line aligned left, center or right."""
    lines = [
        _render_line(line, size) if line else np.zeros((line_height(size), 1), np.uint8)
        for line in text.split("\n")
    ]
    width = max(line.shape[1] for line in lines)
    block = np.zeros((sum(line.shape[0] for line in lines), width), np.uint8)
    y = 0
    for line in lines:
        x = {"left": 0, "center": (width - line.shape[1]) // 2, "right": width - line.shape[1]}[align]
        block[y : y + line.shape[0], x : x + line.shape[1]] = line
        y += line.shape[0]
    return block


class Picture:
    """An RGB picture on white, drawn into by pixel coordinates (x right, y down)."""

    def __init__(self, width: int, height: int):
        self.pixels = np.full((height, width, 3), 255, np.uint8)

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    def paste(self, image: np.ndarray, x: int, y: int, scale: int = 1) -> None:
        """An RGB uint8 image with its top left at (x, y), each pixel a `scale` x `scale` square."""
        if scale > 1:
            image = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
        self.pixels[y : y + image.shape[0], x : x + image.shape[1]] = image

    def fill(self, x: int, y: int, width: int, height: int, color: tuple[int, int, int]) -> None:
        self.pixels[max(0, y) : y + height, max(0, x) : x + width] = color

    def frame(
        self, x: int, y: int, width: int, height: int, color: tuple[int, int, int], thickness: int
    ) -> None:
        """A rectangle's outline drawn outside the box (x, y, width, height): what it frames stays visible."""
        t = thickness
        self.fill(x - t, y - t, width + 2 * t, t, color)
        self.fill(x - t, y + height, width + 2 * t, t, color)
        self.fill(x - t, y, t, height, color)
        self.fill(x + width, y, t, height, color)

    def dashed_frame(
        self, x: int, y: int, width: int, height: int, color: tuple[int, int, int], dash: int = 4
    ) -> None:
        """A one-pixel dashed outline just inside the box (x, y, width, height)."""
        on = (np.arange(max(width, height)) // dash) % 2 == 0
        for row in (y, y + height - 1):
            self.pixels[row, x : x + width][on[:width]] = color
        for col in (x, x + width - 1):
            self.pixels[y : y + height, col][on[:height]] = color

    def text(
        self,
        text: str,
        x: int,
        y: int,
        size: float = 7,
        color: tuple[int, int, int] = BLACK,
        ha: str = "center",
        va: str = "bottom",
        vertical: bool = False,
    ) -> None:
        """Text anchored at (x, y): `ha` left|center|right, `va` top|center|bottom of its block; `vertical`
        reads bottom to top (a row's label)."""
        block = render_text(text, size, align=ha if not vertical else "center")
        if vertical:
            block = np.rot90(block)
        h, w = block.shape
        left = {"left": x, "center": x - w // 2, "right": x - w}[ha]
        top = {"top": y, "center": y - h // 2, "bottom": y - h}[va]
        # clip to the picture
        x0, y0 = max(0, left), max(0, top)
        x1, y1 = min(self.width, left + w), min(self.height, top + h)
        if x1 <= x0 or y1 <= y0:
            return
        alpha = block[y0 - top : y1 - top, x0 - left : x1 - left, None].astype(np.float32) / 255.0
        region = self.pixels[y0:y1, x0:x1]
        region[:] = (region * (1.0 - alpha) + np.asarray(color, np.float32) * alpha).round().astype(np.uint8)

    def save(self, out: Path) -> Path:
        """Write the picture as a PNG, atomically: a reader never sees half of it."""
        ok, png = cv2.imencode(".png", self.pixels[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
        if not ok:
            raise ValueError(f"{out}: the picture could not be encoded as PNG")
        out = Path(out)
        with replacing(out) as tmp:
            Path(tmp).write_bytes(png.tobytes())
        return out
