"""`make bench`: every benchmark in turn, each rewriting its own section of benchmarks/RESULTS.md."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = (
    *("sim_render", "dataset_io", "bus", "center"),  # 10 min
    "world_models",  # 2.4 h: 2 models x 4 budgets x 3 seeds, two at a time, a core each
    *("parallel", "large_night", "memory"),  # 10 min, 20 min, 2 min
    "night",  # 1 h
    "continue_night",  # 2 h
)


def main() -> None:
    for name in BENCHMARKS:
        module = importlib.import_module(f"benchmarks.{name}")
        sys.argv = [f"benchmarks.{name}"]
        module.main()


if __name__ == "__main__":
    main()
