"""Figures a person looks at: canvas grids, a run's counterfactuals, errors and loss, the night's progress."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from harness.picture import BLACK, WHITE, Picture, line_height, rgb  # noqa: E402
from models.canvas import CanvasConfig  # noqa: E402
from models.files import replacing  # noqa: E402


def canvas_grid(
    canvases: np.ndarray, titles: list[str], config: CanvasConfig, out: Path, columns: int = 4
) -> Path:
    """Save canvases as a titled grid, pixels shown as squares, with the target step outlined."""
    layout = config.layout
    target = layout.target_columns
    outline = (target.start, 0, target.stop - target.start, layout.strip_rows.start)
    cells = [_Cell(canvas, title, outline=outline) for canvas, title in zip(canvases, titles, strict=True)]
    columns = min(columns, len(cells))
    rows = [cells[i : i + columns] for i in range(0, len(cells), columns)]
    title = "canvases: context | action separator | target (dashed)"
    return _grid_picture(title, rows, scale=_enlarged(layout.width, CANVAS_PX)).save(out)


def save_figure(fig: plt.Figure, out: Path, dpi: int = 150) -> Path:
    """Write a figure atomically: a reader never sees a half-written PNG."""
    out = Path(out)
    with replacing(out) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return out


# ------------------------------------------------------------------------------------------ image grids


@dataclass
class _Cell:
    """One picture of a grid figure: an RGB image, its title, a frame color (the true action's) and a dashed
    outline (x, y, width, height in the image's pixels: a canvas's target)."""

    image: np.ndarray
    title: str = ""
    frame: np.ndarray | None = None  # RGB in [0, 1]
    outline: tuple[int, int, int, int] | None = None


CELL_PX = 126
"""About how wide a frame of a run's figures is drawn, in pixels (1.15 in at 110 dpi, a 64 px frame 2x)."""
CANVAS_PX = 360  # about how wide `harness data show` draws a whole canvas
GAP_PX = 8  # between two cells, and under the bottom row
FRAME_PX = 3  # a frame's width, in the gap around its cell
TEXT_PT = 7  # cell titles and row labels; the figure's title is one point larger
BAR_TICKS = 6  # labelled ticks of the heatmaps' color bar, 0 to ERROR_VMAX
BAR_PX = 64  # room right of the heatmaps for their color bar and its labels


def _enlarged(width: int, about_px: int) -> int:
    """The whole-number enlargement that draws `width` pixels about `about_px` wide: each pixel of an image
    stays a sharp square."""
    return max(1, round(about_px / width))


def _grid_picture(
    title: str,
    rows: list[list[_Cell]],
    scale: int,
    labels: list[tuple[str, str]] | None = None,
    right_px: int = 0,
) -> Picture:
    """Rows of image cells (each enlarged `scale` times) drawn as one picture: titles above the cells,
    `labels` (text, color) left of the rows, `right_px` left free on the right (a color bar)."""
    height = max(cell.image.shape[0] for row in rows for cell in row) * scale
    widths = [max(row[c].image.shape[1] for row in rows if c < len(row)) * scale for c in range(len(rows[0]))]
    line = line_height(TEXT_PT)
    left = 2 * line + GAP_PX if labels else GAP_PX
    top = line_height(TEXT_PT + 1) + GAP_PX
    title_room = GAP_PX + 2 * line + FRAME_PX + 2  # below the row above: a gap, two lines, a frame
    row_h = title_room + height
    picture = Picture(left + sum(w + GAP_PX for w in widths) + right_px, top + len(rows) * row_h + GAP_PX)
    picture.text(title, picture.width // 2, GAP_PX // 2, size=TEXT_PT + 1, va="top")
    for r, row in enumerate(rows):
        y = top + r * row_h + title_room
        x = left
        for cell, width in zip(row, widths, strict=False):
            picture.paste(cell.image, x, y, scale)
            h, w = cell.image.shape[0] * scale, cell.image.shape[1] * scale
            if cell.frame is not None:  # a frame around the cell, in the gap
                picture.frame(x, y, w, h, rgb(cell.frame), FRAME_PX)
            if cell.outline is not None:
                ox, oy, ow, oh = (v * scale for v in cell.outline)
                picture.dashed_frame(x + ox, y + oy, ow, oh, WHITE)
            if cell.title:
                picture.text(cell.title, x + w // 2, y - FRAME_PX - 1, size=TEXT_PT)
            x += width + GAP_PX
        if labels:
            text, color = labels[r]
            picture.text(text, left - GAP_PX, y + height // 2, TEXT_PT, rgb(color), "right", "center", True)
    return picture


# ------------------------------------------------------------------------------------------ run reports

ERROR_VMAX = 0.25
"""Top of the error heatmaps' color scale (mean |error| over channels, [0, 1] pixels). Fixed, so heatmaps of
different runs compare at a glance."""


def _heat(error: np.ndarray) -> np.ndarray:
    """An |error| map as the heatmaps' colors (inferno, 0 to ERROR_VMAX), RGB uint8."""
    rgb = matplotlib.colormaps["inferno"](np.clip(error / ERROR_VMAX, 0.0, 1.0))[..., :3]
    return (rgb * 255).round().astype(np.uint8)


def _color_bar(picture: Picture, x: int, y: int, height: int, width: int = 12) -> None:
    """The heatmaps' scale: inferno from 0 (bottom) to ERROR_VMAX (top), labelled ticks on its right."""
    ramp = _heat(np.linspace(ERROR_VMAX, 0.0, height)[:, None].repeat(width, axis=1))
    picture.paste(ramp, x, y)
    picture.frame(x, y, width, height, BLACK, 1)
    for value in np.linspace(0.0, ERROR_VMAX, BAR_TICKS):
        ty = y + int(round((1 - value / ERROR_VMAX) * (height - 1)))
        picture.fill(x + width, ty, 4, 1, BLACK)
        picture.text(f"{value:.2f}", x + width + 6, ty, size=TEXT_PT - 1, ha="left", va="center")


def _row_label(examples: dict[str, np.ndarray], row: int, split: str) -> tuple[str, str]:
    hard = bool(examples["hard"][row])
    text = f"{split} #{int(examples['index'][row])}\n{'hardest' if hard else 'typical'}"
    return text, "#b00020" if hard else "black"


def _copy_last(examples: dict[str, np.ndarray], config: CanvasConfig) -> np.ndarray:
    """The copy-last-frame baseline's prediction: the last context step, (N, H, W_target, 3)."""
    return examples["context"][:, :, config.layout.step_columns(config.history - 1)]


def _abs_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(axis=-1) / 255.0


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(((a.astype(np.float32) - b.astype(np.float32)) / 255.0) ** 2))


def counterfactual_grid(
    examples: dict[str, np.ndarray], config: CanvasConfig, out: Path, split: str = "val"
) -> Path:
    """Rows: samples; columns: context | truth | prediction under each action, the true action framed.

    Each prediction is titled with its mse against the truth, so a reader sees which action the model
    thinks happened (the lowest) without squinting at pixels.
    """
    from models.vocab import ACTION_NAMES

    layout = config.layout
    rows = len(examples["index"])
    if rows == 0:
        raise ValueError("no counterfactual examples to draw")
    colors = {name: np.array(config.action_colors[name]) / 255 for name in ACTION_NAMES}
    grid = []
    for r in range(rows):
        true_action = int(examples["true_action"][r])
        truth = examples["truth"][r]
        cells = [
            _Cell(examples["context"][r][:, layout.context_columns], "context" if r == 0 else ""),
            _Cell(truth, f"truth ({ACTION_NAMES[true_action]})"),
        ]
        for a, name in enumerate(ACTION_NAMES):
            pred = examples["predictions"][r, a]
            mark = " (true)" if a == true_action else ""
            frame = colors[name] if a == true_action else None
            cells.append(_Cell(pred, f"{name}{mark}\nmse {_mse(pred, truth):.4f}", frame))
        grid.append(cells)
    labels = [_row_label(examples, r, split) for r in range(rows)]
    title = "what the model predicts under each action (framed: the action really taken)"
    return _grid_picture(title, grid, _enlarged(config.frame_width, CELL_PX), labels).save(out)


def error_heatmaps(
    examples: dict[str, np.ndarray], config: CanvasConfig, out: Path, split: str = "val"
) -> Path:
    """Rows: samples; columns: truth | prediction (true action) | its |error| | copy-last-frame's |error|.

    The two heatmaps share a fixed scale, so where the model beats simply repeating the last frame (the
    moving edges) is visible side by side.
    """
    rows = len(examples["index"])
    if rows == 0:
        raise ValueError("no counterfactual examples to draw")
    copy = _copy_last(examples, config)
    grid = []
    for r in range(rows):
        truth = examples["truth"][r]
        pred = examples["predictions"][r, int(examples["true_action"][r])]
        grid.append(
            [
                _Cell(truth, "truth"),
                _Cell(pred, "prediction"),
                _Cell(_heat(_abs_error(pred, truth)), f"model |error|\nmse {_mse(pred, truth):.4f}"),
                _Cell(
                    _heat(_abs_error(copy[r], truth)),
                    f"copy last frame |error|\nmse {_mse(copy[r], truth):.4f}",
                ),
            ]
        )
    labels = [_row_label(examples, r, split) for r in range(rows)]
    title = "per-pixel error under the true action, beside the copy-last-frame baseline"
    picture = _grid_picture(title, grid, _enlarged(config.frame_width, CELL_PX), labels, right_px=BAR_PX)
    bar_h = picture.height * 2 // 5
    _color_bar(picture, picture.width - BAR_PX + GAP_PX, (picture.height - bar_h) // 2, bar_h)
    return picture.save(out)


def read_train_log(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(minutes, loss) from a run's train_log.csv; empty arrays when it is missing or has no rows."""
    import csv

    if not Path(path).exists():
        return np.zeros(0), np.zeros(0)
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("time_s") and r.get("loss")]
    minutes = np.array([float(r["time_s"]) / 60 for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    return minutes, loss


def loss_curve(curves: list[tuple[str, Path]], out: Path) -> Path:
    """Training loss over wall-clock minutes; the first curve is the run, the others (gray) its references."""
    fig, ax = plt.subplots(figsize=(5.6, 2.8))
    drawn = 0
    for i, (label, log) in enumerate(curves):
        minutes, loss = read_train_log(log)
        if len(loss) == 0:
            continue
        style = {"color": "#1f5fbf", "linewidth": 1.6} if i == 0 else {"color": "0.6", "linewidth": 1.0}
        ax.plot(minutes, loss, label=label, **style)
        drawn += 1
    if drawn and all(v > 0 for _, log in curves for v in read_train_log(log)[1]):
        ax.set_yscale("log")
    ax.set_xlabel("training time (min)", fontsize=8)
    ax.set_ylabel("training loss", fontsize=8)
    ax.tick_params(labelsize=7, which="both")
    ax.grid(alpha=0.3, which="both")
    if drawn:
        ax.legend(fontsize=7, frameon=False)
    else:
        ax.text(0.5, 0.5, "no training log", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return save_figure(fig, out, dpi=110)


def _edge_markers(ax: plt.Axes, xs: list[int], edge: float, marker: str, color: str, label: str) -> None:
    """Runs marked on a horizontal edge of the plot (x in data units, y in axes units)."""
    transform = ax.get_xaxis_transform()
    ax.scatter(
        xs, [edge] * len(xs), transform=transform, marker=marker, color=color, s=26, label=label, zorder=3
    )


def progress_plot(
    points: list[tuple[int, float | None, str, str]], out: Path, metric: str = "val mse"
) -> Path:
    """The night's progress: one point per run, kept runs labelled, the best so far as a step line.

    `points` are (run index, metric or None, status, short label). Failed runs (no metric) are red crosses
    on the bottom edge, so a night of crashes is visible too.
    """
    fig, ax = plt.subplots(figsize=(9.0, 4.2))
    judged = [(i, v, s, label) for i, v, s, label in points if v is not None]
    failed = [i for i, v, _, _ in points if v is None]
    kept = [(i, v, label) for i, v, s, label in judged if s == "keep"]
    baseline = next((v for i, v, _, _ in judged if i == 0), None)
    # A run that blew up (10x the baseline) would flatten every improvement into one line: the axis stops
    # at twice the baseline and such runs sit on its top edge as arrows.
    ceiling = 2.0 * baseline if baseline is not None and baseline > 0 else None
    shown = [(i, v, s) for i, v, s, _ in judged if s != "keep" and (ceiling is None or v <= ceiling)]
    above = [i for i, v, s, _ in judged if s != "keep" and ceiling is not None and v > ceiling]
    discarded = [(i, v) for i, v, s in shown if s != "unconfirmed"]
    unconfirmed = [(i, v) for i, v, s in shown if s == "unconfirmed"]
    if discarded:
        ax.scatter(*zip(*discarded, strict=True), s=18, color="0.72", label="discarded", zorder=2)
    if unconfirmed:  # cleared the bar on one seed, not on two: worth seeing, not worth keeping
        ax.scatter(
            *zip(*unconfirmed, strict=True),
            s=30,
            facecolor="none",
            edgecolor="#e08a00",
            linewidth=1.2,
            label="unconfirmed",
            zorder=2,
        )
    if baseline is not None:
        ax.axhline(baseline, color="0.4", linestyle="--", linewidth=0.8, label="baseline")
    if kept:
        xs, ys, labels = zip(*kept, strict=True)
        ax.scatter(xs, ys, s=42, color="#2e9e4f", edgecolor="black", linewidth=0.5, label="kept", zorder=3)
        last = max(i for i, *_ in points)
        best = np.minimum.accumulate(ys)
        ax.step(
            [*xs, last], [*best, best[-1]], where="post", color="#2e9e4f", linewidth=1.2, label="best so far"
        )
        for x, y, label in zip(xs, ys, labels, strict=True):
            text = label if len(label) <= 42 else label[:41] + "…"
            ax.annotate(
                text, (x, y), xytext=(4, 6), textcoords="offset points", fontsize=6.5, rotation=20, zorder=4
            )
    if ceiling is not None:
        low = min(v for _, v, _, _ in judged if v <= ceiling)
        ax.set_ylim(low - 0.05 * (ceiling - low), ceiling)
    if above:  # off the scale
        _edge_markers(ax, above, 0.98, "^", "0.6", f"discarded, above {ceiling:.3g}")
    if failed:  # no value to plot
        _edge_markers(ax, failed, 0.02, "x", "#c62828", "crashed / timed out / rejected")
    ax.set_xlabel("run", fontsize=8)
    ax.set_ylabel(f"{metric} (lower is better)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    improvements = sum(1 for i, *_ in kept if i != 0)
    ax.set_title(f"{len(points)} runs, {improvements} kept improvements over the baseline", fontsize=9)
    if points:
        ax.legend(fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=5)
        ax.set_xlim(-0.5, max(i for i, *_ in points) + 1.5)
    fig.tight_layout()
    return save_figure(fig, out, dpi=110)
