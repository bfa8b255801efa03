"""Figures a person looks at: canvas grids (and, later, loss curves and progress plots)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from models.canvas import CanvasConfig  # noqa: E402


def canvas_grid(
    canvases: np.ndarray, titles: list[str], config: CanvasConfig, out: Path, columns: int = 4
) -> Path:
    """Save canvases as a titled grid, pixels shown as squares, with the target step outlined."""
    n = len(canvases)
    columns = min(columns, n)
    rows = -(-n // columns)
    layout = config.layout
    cell_width = 2.4  # inches; the 150 dpi output shows a 64 px frame about 5x enlarged
    fig_w = columns * cell_width + 0.2
    fig_h = rows * (cell_width * layout.height / layout.width + 0.3) + 0.4
    fig, axes = plt.subplots(rows, columns, figsize=(fig_w, fig_h), squeeze=False)
    target = layout.target_columns
    for ax in axes.ravel():
        ax.axis("off")
    for ax, canvas, title in zip(axes.ravel(), canvases, titles, strict=False):
        ax.imshow(canvas, interpolation="nearest")
        ax.add_patch(
            plt.Rectangle(
                (target.start - 0.5, -0.5),
                target.stop - target.start,
                layout.strip_rows.start,
                fill=False,
                edgecolor="white",
                linewidth=0.8,
                linestyle="--",
            )
        )
        ax.set_title(title, fontsize=7)
    fig.suptitle("canvases: context | action separator | target (dashed)", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)


def save_figure(fig: plt.Figure, out: Path, dpi: int = 150) -> Path:
    """Write a figure atomically: a reader never sees a half-written PNG."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    os.replace(tmp, out)
    return out
