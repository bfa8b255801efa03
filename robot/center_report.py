"""The report of one centering episode: did it center, how fast, and what the model expected at each step."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from models.files import replacing, write_text  # noqa: E402
from models.vocab import ACTION_NAMES  # noqa: E402
from robot.center import CenterSettings, EpisodeResult, StepLog  # noqa: E402

STRIP_STEPS = 12  # columns of the frame strip


def _save(fig: plt.Figure, path: Path) -> Path:
    """Atomic PNG write: a report never links a half-written image."""
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def how(step: StepLog) -> str:
    """How a planning policy chose a step's action: planned with the model, searched (the target out of
    view: no model call, robot/search.py), or blind (the model showed the target in no prediction)."""
    if step.plan_ms is None:
        return "search"
    return "blind" if step.blind else "planned"


def frame_strip(result: EpisodeResult, path: Path) -> Path:
    """Top row: the wrist frame at each step (title: the action taken). Bottom: what the model predicted the
    next frame would be under that action, so each prediction sits left of the frame that really came."""
    steps = [s for s in result.log if s.frame is not None][:STRIP_STEPS]
    rows = 2 if any(s.predicted is not None for s in steps) else 1
    fig, axes = plt.subplots(
        rows, max(1, len(steps)), figsize=(1.3 * max(1, len(steps)) + 0.4, 1.5 * rows + 0.3), squeeze=False
    )
    for ax in axes.ravel():
        ax.axis("off")
    for i, step in enumerate(steps):
        axes[0, i].imshow(step.frame, interpolation="nearest")
        action = ACTION_NAMES[step.action] if step.action is not None else "centered"
        action += f" ({how(step)})" if step.action is not None and how(step) != "planned" else ""
        axes[0, i].set_title(f"{i}: {action}\noffset {step.offset:+.2f}", fontsize=6)
        if rows == 2 and step.predicted is not None:
            axes[1, i].imshow(step.predicted, interpolation="nearest")
            axes[1, i].set_title("predicted next", fontsize=6)
    fig.tight_layout()
    return _save(fig, path)


def offset_plot(result: EpisodeResult, settings: CenterSettings, path: Path) -> Path:
    offsets = [s.offset for s in result.log]
    fig, ax = plt.subplots(figsize=(5.0, 2.4))
    ax.plot(range(len(offsets)), offsets, marker="o", markersize=3, color="#1f5fbf")
    ax.axhspan(-settings.tolerance, settings.tolerance, color="#2e9e4f", alpha=0.15, label="centered")
    ax.axhline(0, color="0.5", linewidth=0.6)
    ax.set_xlabel("control step", fontsize=8)
    ax.set_ylabel("target offset (half-widths)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def write_report(result: EpisodeResult, settings: CenterSettings, out: Path, title: str, source: str) -> Path:
    """`<out>.md` with `<out>-frames.png` and `<out>-offset.png` beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    strip = frame_strip(result, out.with_name(out.name + "-frames.png"))
    plot = offset_plot(result, settings, out.with_name(out.name + "-offset.png"))
    ms = result.plan_ms
    actions = [s for s in result.log if s.action is not None]
    counts = ", ".join(f"{n} {kind}" for kind, n in Counter(how(s) for s in actions).items()) or "none"
    timing = f"{np.median(ms):.0f} ms median, {max(ms):.0f} ms worst" if ms else "-"
    verdict = (
        f"**centered** the {result.target} object in {result.steps_to_center} steps"
        if result.success
        else f"**did not center** the {result.target} object in {settings.max_steps} steps"
    )
    text = "\n".join(
        [
            f"# {title}",
            "",
            f"{verdict}; final offset {result.final_offset:+.3f} half-widths "
            f"(tolerance ±{settings.tolerance}).",
            "",
            "| | |",
            "|---|---|",
            f"| model | {source} |",
            f"| steps | {len(actions)} actions: {counts} |",
            f"| planning time | {timing} |",
            "",
            "## Offset over time",
            "",
            f"![offset]({plot.name})",
            "",
            "## What the arm saw, and what the model predicted",
            "",
            f"![frames]({strip.name})",
            "",
        ]
    )
    return write_text(out.with_suffix(".md"), text)
