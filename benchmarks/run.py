"""`make bench`: every benchmark in turn, each rewriting its own section of benchmarks/RESULTS.md."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ("sim_render", "dataset_io", "world_models")  # world_models trains for ~30 min


def main() -> None:
    for name in BENCHMARKS:
        module = importlib.import_module(f"benchmarks.{name}")
        sys.argv = [f"benchmarks.{name}"]
        module.main()


if __name__ == "__main__":
    main()
