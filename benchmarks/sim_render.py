"""How fast the simulated arm renders: steps/s on ONE core (one step = act + observe, both cameras).

Data synthesis runs many episodes, so the sim must be far faster than the 30 fps it pretends to run at.
`python -m benchmarks.sim_render`; the ratio to real time is the figure that survives a noisy machine.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy/cv2 load their thread pools

import argparse  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import Row, print_table, write_section  # noqa: E402
from robot.sim import SimArm, SimConfig  # noqa: E402

NAME = "sim_render"
TITLE = "Simulator rendering (one core)"
CASES: tuple[tuple[int, int, int, str], ...] = (
    # width, height, timed steps, target
    (64, 64, 3000, ">= 300 steps/s"),
    (224, 224, 400, ""),
)


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


def run() -> list[Row]:
    cv2.setNumThreads(1)
    rows = []
    for width, height, steps, target in CASES:
        rate = measure(width, height, steps)
        rows.append(
            Row(
                f"sim step {width}x{height}, wrist + base",
                rate,
                "steps/s",
                target,
                f"{rate / 30:.0f}x real time",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    rows = run()
    print_table(TITLE, rows)
    if not args.no_write:
        write_section(
            NAME, TITLE, rows, "One step = `act` + `observe`: physics, both cameras rendered, noise added."
        )


if __name__ == "__main__":
    main()
