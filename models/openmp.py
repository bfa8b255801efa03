"""How many CPU threads a training run uses, and how they wait: one home for both rules.

The harness puts them in each training's environment (harness/executor.py); `python -m models.train` applies
the wait policy itself when started by hand. Importing this module imports nothing heavy: the harness reads
it without loading torch. `robot-center` keeps libgomp's default wait (spinning): a control step alone on
the machine is its case, and there spinning is faster (benchmarks/RESULTS.md, centering).
"""

from __future__ import annotations

import os

DEFAULT_THREADS = 1
"""Training threads on CPU unless OMP_NUM_THREADS says otherwise, whatever the cores. One thread is the only
count whose samples per CPU-second do not move with the machine's load, which a CPU-time budget needs: at
d=128 two threads that wait for each other at every op train 18 samples per CPU-second alone but 22 beside a
busy process (it serializes them and they stop waiting), so a CPU-time budget favoured the loaded run by
1.2x; with libgomp's spinning (measured 2026-12-02), 21 alone and 10 beside it: the complaint. One
thread trains 31 per CPU-second alone and 29 beside one busy process (0.95x), and more per wall-second than
two threads (31 vs 26 samples/s alone; benchmarks/load.py). Cores beyond a run's thread go to other runs."""

WAIT_POLICY = {"GOMP_SPINCOUNT": "300"}
"""How a training's OpenMP threads wait at a barrier: spin 300 times (a few microseconds), then sleep.
libgomp's default spins 300,000 times (about 3 ms), which burns CPU time without progress while a thread
waits for another one that a busy machine has descheduled: beside one CPU-bound process a 2-thread baseline
trained 17x fewer samples. Sleeping at once (OMP_WAIT_POLICY=PASSIVE) pays a futex wake-up at every barrier,
~15% of the small baseline's samples per CPU-second on an idle machine. libgomp reads this once, when torch
is imported, so it goes in the environment before that (benchmarks/load.py measures the difference)."""


def apply_wait_policy() -> None:
    """Set WAIT_POLICY in this process's environment unless the user chose a policy (OMP_WAIT_POLICY or
    GOMP_SPINCOUNT set). Takes effect only before the first `import torch` in the process."""
    if "OMP_WAIT_POLICY" not in os.environ:
        for name, value in WAIT_POLICY.items():
            os.environ.setdefault(name, value)
