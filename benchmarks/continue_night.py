"""Nights that build on each other: a local-agent night, then a night that continues it (`--continue`).

    python -m benchmarks.continue_night [--budget 1h] [--per-run 5m] [--dataset data/sim]

Both nights run the real loop with the offline agent on the real baseline DiT (experiments/dit.toml) and the
simulated dataset, in a fresh copy of this project's models/, experiments/ and LOOP.md. The second starts
from the first's best commit (its baseline is that best, measured again) with the first's runs in its
memory and novelty check. What counts is whether the second night ends below the first night's best, on
val and on test; both are reported, with the run that holds each best.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import git

from benchmarks.common import Row, print_table, write_section
from harness.agents.local import LocalAgent
from harness.ledger import Ledger, best_run
from harness.loop import Night, NightSettings
from harness.paths import NightPaths
from harness.reports import metrics_on_test
from models.config import parse_duration

NAME = "continue_night"
TITLE = "Nights that build on each other: a local-agent night, then one that continues it"
ROOT = Path(__file__).resolve().parents[1]


def make_project(root: Path) -> Path:
    """This project's editable code and configs, committed in a repository of their own."""
    for name in ("models", "experiments"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("LOOP.md", ".gitignore"):
        shutil.copy(ROOT / name, root / name)
    repo = git.Repo.init(root, initial_branch="main")
    repo.git.add("--all")
    actor = git.Actor("researcher", "researcher@example.com")
    repo.index.commit("the project", author=actor, committer=actor)
    return root


def night(root: Path, tag: str, dataset: Path, budget: float, per_run: float, continues: str | None) -> dict:
    settings = NightSettings(
        root=root, tag=tag, budget_s=budget, per_run_s=per_run, dataset=dataset, continues=continues
    )
    Night(settings, LocalAgent()).run()
    paths = NightPaths(root, tag)
    records = Ledger(paths).read()
    best = best_run(records)
    test = metrics_on_test(paths, best) if best else None
    return {
        "runs": len(records),
        "best": best,
        "val": best.primary if best else None,
        "test": (test or {}).get("mse"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}", description=__doc__.split("\n")[0])
    parser.add_argument("--budget", default="1h", help="each night's budget")
    parser.add_argument("--per-run", default="5m")
    parser.add_argument("--dataset", type=Path, default=ROOT / "data/sim")
    parser.add_argument("--beside", default="nothing else", help="what else ran on the machine meanwhile")
    args = parser.parse_args()
    budget, per_run = parse_duration(args.budget), parse_duration(args.per_run)
    with tempfile.TemporaryDirectory(prefix="bench-continue-") as tmp:
        root = make_project(Path(tmp) / "project")
        first = night(root, "first", args.dataset.resolve(), budget, per_run, None)
        second = night(root, "second", args.dataset.resolve(), budget, per_run, "first")
    rows = []
    for label, got in (("first night", first), ("second night (--continue first)", second)):
        best = got["best"].run_id if got["best"] else "-"
        rows.append(Row(f"{label}: runs", got["runs"], "runs"))
        rows.append(Row(f"{label}: best val mse", got["val"] or float("nan"), "", "", best))
        rows.append(Row(f"{label}: its test mse", got["test"] or float("nan"), "", "", best))
    for split in ("val", "test"):
        if first[split] and second[split]:
            target = "< 1" if split == "val" else "< 1 (report)"
            rows.append(Row(f"second / first best, {split}", second[split] / first[split], "x", target))
    print_table(TITLE, rows)
    note = (
        f"Two nights of {args.budget} at {args.per_run} a run, the offline agent, the baseline DiT on "
        f"{args.dataset.name}; beside it: {args.beside}."
    )
    write_section(NAME, TITLE, rows, note)


if __name__ == "__main__":
    main()
