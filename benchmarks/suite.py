"""The test suite as CI runs it: a fresh clone, `make setup`, the README's test command, `make lint`.

Clones the committed HEAD into a temporary directory and times each phase of `.ci/run` there (setup, tests,
lint), with the ten slowest tests from pytest's own durations. What else ran on the machine is the
caller's to say (`--beside`): the figure is wall time on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.common import Row, print_table, write_section

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 240.0  # issue 13: the whole .ci/run under 4 minutes


def _phase(command: list[str], cwd: Path) -> tuple[float, str]:
    start = time.monotonic()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return time.monotonic() - start, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__.splitlines()[0])
    parser.add_argument("--beside", default="nothing else", help="what else ran on the machine meanwhile")
    args = parser.parse_args()
    clone = Path(tempfile.mkdtemp(prefix="suite-bench-")) / "worldloop"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True
    )
    try:
        setup_s, _ = _phase(["make", "setup"], clone)
        test_s, out = _phase(["make", "test", "PYTEST_ARGS=--durations=10"], clone)
        lint_s, _ = _phase(["make", "lint"], clone)
    finally:
        shutil.rmtree(clone.parent, ignore_errors=True)
    passed = re.search(r"(\d+) passed", out)
    slowest = re.findall(r"^([\d.]+)s (call|setup|teardown)\s+(\S+)", out, re.M)
    total = setup_s + test_s + lint_s
    rows = [
        Row(".ci/run in all", total, "s", f"< {TARGET_S:.0f} s", f"commit {commit.stdout.strip()}"),
        Row("setup (venv, torch CPU wheel, the package)", setup_s, "s"),
        Row(
            "tests (make test: 3 xdist workers)",
            test_s,
            "s",
            note=f"{passed.group(1) if passed else '?'} passed",
        ),
        Row("lint (ruff check, ruff format --check)", lint_s, "s"),
    ]
    rows += [
        Row(f"slowest: {name.removeprefix('tests/')} ({when})", float(s), "s") for s, when, name in slowest
    ]
    print_table("The test suite from a fresh clone", rows)
    write_section(
        "suite",
        "The test suite from a fresh clone: `.ci/run`'s phases (2 CPU cores)",
        rows,
        f"Beside it: {args.beside}. The tests' own phase is `make test`: pytest with 3 xdist workers.",
    )


if __name__ == "__main__":
    main()
