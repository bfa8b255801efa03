"""Pictures drawn in pixels (harness/picture.py): text where it is anchored, frames outside what they frame,
and a PNG that reads back as the same pixels."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from harness.picture import BLACK, Picture, line_height, render_text, rgb


def ink(picture: Picture) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the pixels that are not white."""
    return np.nonzero(np.any(picture.pixels < 250, axis=-1))


def test_text_lies_where_it_is_anchored():
    picture = Picture(400, 100)
    picture.text("mse 0.0003", 200, 50, size=7, ha="center", va="bottom")
    ys, xs = ink(picture)
    assert ys.max() < 50 and ys.min() >= 50 - line_height(7)  # above its anchor, one line high
    assert abs((xs.min() + xs.max()) / 2 - 200) <= 2 and 30 < xs.max() - xs.min() < 80  # centered on it


def test_lines_stack_and_vertical_text_reads_upward():
    one, two = render_text("typical", 7), render_text("val #3\ntypical", 7)
    assert two.shape[0] == 2 * one.shape[0] and two.shape[1] >= one.shape[1]
    picture = Picture(100, 200)
    picture.text("val #3\ntypical", 90, 100, size=7, ha="right", va="center", vertical=True)
    ys, xs = ink(picture)
    assert xs.max() < 90 and ys.max() - ys.min() > xs.max() - xs.min()  # taller than wide, left of x


def test_a_frame_surrounds_its_cell_without_covering_it():
    picture = Picture(40, 40)
    picture.paste(np.full((2, 3, 3), 7, np.uint8), 10, 10, scale=4)  # 12 x 8 px
    picture.frame(10, 10, 12, 8, rgb("#ff0000"), 2)
    assert np.all(picture.pixels[10:18, 10:22] == 7)
    assert np.all(picture.pixels[8:10, 8:24] == (255, 0, 0)) and np.all(
        picture.pixels[18:20, 8:24] == (255, 0, 0)
    )
    assert np.all(picture.pixels[10:18, 8:10] == (255, 0, 0)) and np.all(
        picture.pixels[10:18, 22:24] == (255, 0, 0)
    )
    assert np.all(picture.pixels[:7] == 255)  # nothing beyond


def test_the_png_holds_the_pixels(tmp_path: Path):
    picture = Picture(30, 20)
    picture.fill(5, 5, 10, 4, (10, 200, 30))
    picture.text("x", 20, 15, color=BLACK)
    out = picture.save(tmp_path / "p.png")
    assert np.array_equal(cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB), picture.pixels)
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]  # no temporary file left beside it
