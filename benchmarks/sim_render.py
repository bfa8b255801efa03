"""How fast the simulated arm renders: steps/s on ONE core (one step = act + observe, both cameras).

Data synthesis runs many episodes, so the sim must be far faster than the 30 fps it pretends to run at.
Run with `python -m benchmarks.sim_render`; `run()` returns the rows for the project's RESULTS writer.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy/cv2 load their thread pools

import time  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from robot.sim import SimArm, SimConfig  # noqa: E402

CASES: tuple[tuple[int, int, int, float], ...] = (
    # width, height, steps, target steps/s (None-like 0 = measured only)
    (64, 64, 2000, 300.0),
    (224, 224, 300, 0.0),
)


def _pin_one_thread() -> None:
    cv2.setNumThreads(1)
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


def measure(width: int, height: int, steps: int, seed: int = 0) -> float:
    """Steps per second of act + observe with both cameras, after a short warm-up."""
    arm = SimArm(SimConfig(frame_width=width, frame_height=height), seed=seed)
    actions = np.random.default_rng(seed).integers(0, 3, size=steps)
    for a in actions[:20]:
        arm.act(int(a))
        arm.observe()
    start = time.perf_counter()
    for a in actions:
        arm.act(int(a))
        arm.observe()
    return steps / (time.perf_counter() - start)


def run() -> list[dict]:
    """One row per frame size: name, value, unit, target (None where there is no target)."""
    _pin_one_thread()
    rows = []
    for width, height, steps, target in CASES:
        rows.append(
            {
                "name": f"sim steps/s {width}x{height} (wrist+base, 1 core)",
                "value": round(measure(width, height, steps), 1),
                "unit": "steps/s",
                "target": f">= {target:g}" if target else None,
            }
        )
    return rows


def _print(rows: list[dict]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for row in rows:
            print(f"{row['name']:<45} {row['value']:>10} {row['unit']:<8} {row['target'] or ''}")
        return
    table = Table(title="robot.sim rendering")
    for column in ("name", "value", "unit", "target"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for row in rows:
        table.add_row(row["name"], f"{row['value']:.1f}", row["unit"], row["target"] or "-")
    Console().print(table)


if __name__ == "__main__":
    _print(run())
