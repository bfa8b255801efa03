"""Where a night's files live. One place, so the loop, the reports and the CLI never disagree.

runs/<tag>/ledger.jsonl        one RunRecord per line (harness/ledger.py)
runs/<tag>/results.tsv         the same, in the autoresearch format
runs/<tag>/night.json          the night's settings and budget (NightInfo)
runs/<tag>/current.json        the runs in flight, their phases (NightActivity); removed at the night's end
runs/<tag>/memory.md           the research memory the last prompt showed (harness/memory.py)
runs/<tag>/steering.jsonl      the researcher's notes sent with `harness steer` (harness/steering.py)
runs/<tag>/worktree/           the git worktree the harness commits proposals in (branch harness/<tag>)
runs/<tag>/judge/              the pinned judge of the night's base commit
runs/<tag>/trees/<run-id>/     a copy of a run's commit, where its jobs run (removed once it is recorded)
runs/<tag>/<run-id>/           one run: config, weights, logs, eval_<split>.json, cf_<split>.npz
runs/<tag>/<run-id>/seed-<n>/  the same for each further seed of that run's code (noise floor, confirmation)
reports/<tag>/<run-id>.md      the per-run report, its PNGs beside it
reports/summary.md             the night at a glance, with reports/progress.png
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RUNS_DIR = "runs"
REPORTS_DIR = "reports"


@dataclass(frozen=True)
class NightPaths:
    root: Path
    tag: str

    @property
    def runs(self) -> Path:
        return self.root / RUNS_DIR / self.tag

    @property
    def ledger(self) -> Path:
        return self.runs / "ledger.jsonl"

    @property
    def results_tsv(self) -> Path:
        return self.runs / "results.tsv"

    @property
    def night(self) -> Path:
        return self.runs / "night.json"

    @property
    def current(self) -> Path:
        return self.runs / "current.json"

    @property
    def memory(self) -> Path:
        return self.runs / "memory.md"

    @property
    def steering(self) -> Path:
        return self.runs / "steering.jsonl"

    def run_dir(self, run_id: str) -> Path:
        return self.runs / run_id

    def trial_dir(self, run_id: str, trial: int, seed: int) -> Path:
        """Where one seed of a run trains: the run's own directory for its first seed (reports and promote
        read it), a subdirectory for each further one."""
        return self.run_dir(run_id) if trial == 0 else self.run_dir(run_id) / f"seed-{seed}"

    @property
    def reports(self) -> Path:
        return self.root / REPORTS_DIR / self.tag

    def report(self, run_id: str) -> Path:
        return self.reports / f"{run_id}.md"

    def figure(self, run_id: str, kind: str) -> Path:
        """A run report's PNG: kind is cf, error or loss."""
        return self.reports / f"{run_id}-{kind}.png"

    @property
    def summary(self) -> Path:
        return self.root / REPORTS_DIR / "summary.md"

    @property
    def progress(self) -> Path:
        return self.root / REPORTS_DIR / "progress.png"


def run_id_for(tag: str, index: int) -> str:
    """Run ids carry their tag, so one id names one run across every night in the project."""
    return f"{tag}-{index:03d}"


def night_tags(root: Path) -> list[str]:
    """Tags of the nights under `root/runs`, oldest ledger first."""
    runs = Path(root) / RUNS_DIR
    if not runs.is_dir():
        return []
    ledgers = [p for p in runs.glob("*/ledger.jsonl") if p.is_file()]
    return [p.parent.name for p in sorted(ledgers, key=lambda p: (p.stat().st_mtime, p.parent.name))]
