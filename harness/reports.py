"""Reports: what the agent reads after every run and what the researcher reads in the morning.

Everything here is rendered from the ledger and the run directories alone (the metrics JSON, the
counterfactual examples, the training log), so `harness report` and `harness summary` can re-render any
night at any time, and a report never shows a number that is not on disk.

- `render_run`: `reports/<tag>/<run-id>.md` with its PNGs (counterfactual grid, error heatmaps, loss curve);
- `feedback`: the same run as compact text for the agent's next prompt (numbers and image paths);
- `render_summary`: `reports/summary.md` and `reports/progress.png`, the night at a glance.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2
import numpy as np

from harness.durable import atomic_write_text
from harness.judge import (
    GUARD_METRIC,
    PRIMARY_METRIC,
    REPORT_METRICS,
    Metrics,
    MetricSpec,
    NoiseFloor,
    mark_threshold,
    relative_change,
    value,
)
from harness.ledger import (
    FAILED,
    Ledger,
    NightActivity,
    NightInfo,
    RunningState,
    RunRecord,
    RunStatus,
    Timings,
    TokenUse,
    baseline_run,
    best_before,
    best_run,
    leaderboard,
    load_metrics,
    night_noise,
    now,
)
from harness.paths import NightPaths
from harness.plateau import night_plateau, plateaus
from harness.steering import SteeringNote, read_notes
from models.config import read_config

if TYPE_CHECKING:
    from harness.painter import Painter

PROMPTS = Path(__file__).resolve().parents[1] / "prompts"

TEST_CARRY_FRACTION = 0.5
"""The summary flags a best run whose test gain over the baseline is below this fraction of its val gain."""

DIFF_LIMIT = 400
"""Lines of the proposal's diff shown in a report; the whole diff stays in the run directory."""

PROPOSAL_DIFF = "proposal.diff"
TRAIN_LOG = "train_log.csv"
TRAIN_METRICS = "metrics.json"


# ------------------------------------------------------------------------------------------ formatting


def fmt_number(v: float | int | str | None, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v / 1e6:.2f}M" if abs(v) >= 1_000_000 else f"{v:,}"
    if not math.isfinite(v):
        return str(v)
    return f"{v:.{digits}g}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def fmt_change(new: float | None, old: float | None, spec: MetricSpec, threshold: float | None = None) -> str:
    """A signed change, marked ✓ when better and ✗ when worse by at least `threshold` (default: the
    metric's fixed noise; see `judge.mark_threshold` for the measured one)."""
    if new is None or old is None:
        return "-"
    if spec.relative:
        change = relative_change(new, old)
        if change is None:
            return "-"
    else:
        change = new - old
    text = f"{change:+.1%}" if spec.relative else f"{change:+.3f}"
    big = abs(change) >= (spec.noise if threshold is None else threshold)
    text = text.replace("-", "−")
    if spec.higher_is_better is None or not big:
        return text
    better = (change > 0) == spec.higher_is_better
    return f"{text} {'✓' if better else '✗'}"


def one_line(text: str | None, limit: int = 110) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def table_cell(text: str | None, limit: int = 110) -> str:
    """Text safe inside a markdown table cell: one line, pipes escaped."""
    return one_line(text, limit).replace("|", "\\|")


def tail(text: str | None, lines: int = 30) -> str:
    return "\n".join((text or "").rstrip().splitlines()[-lines:])


STATUS_ICONS = {
    RunStatus.KEEP: "✅",
    RunStatus.DISCARD: "➖",
    RunStatus.UNCONFIRMED: "❔",
    RunStatus.CRASH: "💥",
    RunStatus.TIMEOUT: "⏱",
    RunStatus.REJECTED: "🚫",
    RunStatus.LOST: "🔌",
}
"""Each status's mark in reports and the summary (templates: `icons[status]`)."""
assert set(STATUS_ICONS) == set(RunStatus), "every status needs its mark"


@functools.cache
def _environment() -> jinja2.Environment:
    """One environment per process: it caches compiled templates (compiling them took ~50 ms per report)
    and reloads a template whose file changed."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(PROMPTS),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters.update(num=fmt_number, duration=fmt_duration, one_line=one_line, cell=table_cell)
    env.globals["icons"] = STATUS_ICONS
    return env


def render_template(name: str, **context: object) -> str:
    return _environment().get_template(name).render(**context)


# ------------------------------------------------------------------------------------------- one run


@dataclass
class MetricRow:
    label: str
    value: str
    references: list[tuple[str, str]]  # (value, change) per reference run
    baseline: str  # the trivial model's value: copying the last frame, or chance
    baseline_kind: str  # "copy-last-frame" or "chance"


@dataclass
class SeedRow:
    """One seed of a run, as its report's table shows it: the compute it got and what it scored."""

    seed: int
    status: str
    samples: str
    cpu: str  # CPU seconds of the training process (the harness's measurement)
    wall: str
    threads: str
    others: str  # cores other programs kept busy while it trained
    mse: str
    guard: str


def seed_rows(record: RunRecord) -> list[SeedRow]:
    rows = []
    for t in record.trials:
        train = t.train
        rows.append(
            SeedRow(
                seed=t.seed,
                status="judged"
                if t.ok
                else f"{t.status.value if t.status else 'failed'}: {one_line(t.reason, 60)}",
                samples=fmt_number(train.get("samples")),
                cpu=fmt_duration(t.cpu_s if t.cpu_s is not None else train.get("cpu_seconds")),
                wall=fmt_duration(t.train_s),
                threads=fmt_number(train.get("threads")),
                others=fmt_number(train.get("others_cores"), 2),
                mse=fmt_number(value(t.metrics_val, PRIMARY_METRIC)),
                guard=fmt_number(value(t.metrics_val, GUARD_METRIC), 3),
            )
        )
    return rows


@dataclass
class RunView:
    """Everything a run report shows, read from disk once."""

    record: RunRecord
    paths: NightPaths
    parent: RunRecord | None
    best: RunRecord | None  # the best run this one was judged against, when not its parent
    train: dict
    figures: dict[str, str]  # kind -> file name beside the report
    diff: str
    diff_truncated: bool
    rows: list[MetricRow]
    references: list[str]  # column titles of the reference runs
    seeds: list[SeedRow]
    noise: NoiseFloor | None  # the noise floor its decision used

    @property
    def report_path(self) -> Path:
        return self.paths.report(self.record.run_id)


def _metric_rows(metrics: Metrics, references: list[Metrics], noise: NoiseFloor | None) -> list[MetricRow]:
    rows = []
    for spec in REPORT_METRICS:
        if spec.key not in metrics:
            continue
        v = value(metrics, spec.key)
        refs = [
            (
                fmt_number(r.get(spec.key)),
                fmt_change(v, value(r, spec.key), spec, mark_threshold(spec, metrics, r, noise)),
            )
            for r in references
        ]
        if spec.baseline_key:
            baseline, kind = fmt_number(metrics.get(spec.baseline_key)), "copy-last-frame"
        elif spec.baseline_value is not None:
            baseline, kind = fmt_number(spec.baseline_value, 3), "chance"
        else:
            baseline, kind = "", ""
        rows.append(MetricRow(spec.label, fmt_number(metrics.get(spec.key)), refs, baseline, kind))
    return rows


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        return {}


def run_figures(record: RunRecord, paths: NightPaths) -> dict[str, Path]:
    """The PNGs a run's report shows, by kind: only those its files allow (a crash has no counterfactuals)."""
    run_dir = paths.run_dir(record.run_id)
    kinds = []
    cf = run_dir / "cf_val.npz"
    if record.status not in FAILED and cf.exists() and (run_dir / "config.json").exists():
        with np.load(cf) as data:
            if "index" in data.files and len(data["index"]):
                kinds += ["cf", "error"]
    if (run_dir / TRAIN_LOG).exists():
        kinds.append("loss")
    return {kind: paths.figure(record.run_id, kind) for kind in kinds}


def draw_run_figures(record: RunRecord, paths: NightPaths, parent: RunRecord | None) -> dict[str, Path]:
    """Draw a run's PNGs (`run_figures`, returned): here, or in a night's painter (harness/painter.py)."""
    from harness import plots  # matplotlib loads only where a figure is drawn, not for `harness --help`

    run_dir = paths.run_dir(record.run_id)
    figures = run_figures(record, paths)
    if "cf" in figures:
        canvas = read_config(run_dir).canvas
        with np.load(run_dir / "cf_val.npz") as data:
            examples = {k: data[k] for k in data.files}
        plots.counterfactual_grid(examples, canvas, figures["cf"])
        plots.error_heatmaps(examples, canvas, figures["error"])
    if "loss" in figures:
        curves = [(record.run_id, run_dir / TRAIN_LOG)]
        if parent is not None:
            curves.append((f"{parent.run_id} (parent)", paths.run_dir(parent.run_id) / TRAIN_LOG))
        plots.loss_curve(curves, figures["loss"])
    return figures


def parent_of(record: RunRecord, records: list[RunRecord]) -> RunRecord | None:
    return next((r for r in records if r.run_id == record.parent), None) if record.parent else None


def run_view(paths: NightPaths, record: RunRecord, records: list[RunRecord], draw: bool = True) -> RunView:
    """A run's report as data; with `draw`, its figures are drawn here (else they are only named)."""
    parent = parent_of(record, records)
    best = best_before(records, record)
    references: list[tuple[str, RunRecord]] = []
    if parent is not None and parent.primary is not None:
        references.append((f"parent {parent.run_id}", parent))
    if best is not None and best is not parent:
        references.append((f"best before {best.run_id}", best))
    figures = draw_run_figures(record, paths, parent) if draw else run_figures(record, paths)
    run_dir = paths.run_dir(record.run_id)
    diff_lines = (
        (run_dir / PROPOSAL_DIFF).read_text().splitlines() if (run_dir / PROPOSAL_DIFF).exists() else []
    )
    return RunView(
        record=record,
        paths=paths,
        parent=parent,
        best=best if best is not parent else None,
        train=_read_json(run_dir / TRAIN_METRICS),
        figures={kind: path.name for kind, path in figures.items()},
        diff="\n".join(diff_lines[:DIFF_LIMIT]),
        diff_truncated=len(diff_lines) > DIFF_LIMIT,
        rows=_metric_rows(record.metrics_val, [r.metrics_val for _, r in references], record.noise),
        references=[label for label, _ in references],
        seeds=seed_rows(record),
        noise=record.noise,
    )


def render_run(
    paths: NightPaths,
    record: RunRecord,
    records: list[RunRecord] | None = None,
    painter: Painter | None = None,
) -> Path:
    """Write `reports/<tag>/<run-id>.md` and its PNGs (drawn by `painter` when given, else here); returns
    the markdown's path."""
    records = Ledger(paths).read() if records is None else records
    view = run_view(paths, record, records, draw=painter is None)
    if painter is not None:
        painter.run_figures(record, paths, parent_of(record, records))
    text = render_template("report.md.j2", v=view, r=record, tail=tail(record.error_tail))
    return atomic_write_text(view.report_path, text)


def feedback(paths: NightPaths, record: RunRecord, records: list[RunRecord], root: Path | None = None) -> str:
    """The run as the agent reads it next: status, reason, numbers vs the best, and where the images are.

    Call after `render_run`, which draws the images named here. Paths are relative to `root` (the project).
    """
    view = run_view(paths, record, records, draw=False)
    root = Path(root) if root is not None else paths.root
    images = {
        kind: str(paths.figure(record.run_id, kind).relative_to(root))
        for kind in ("cf", "error", "loss")
        if paths.figure(record.run_id, kind).exists()
    }
    return render_template(
        "feedback.md.j2", v=view, r=record, images=images, tail=tail(record.error_tail, 25)
    )


# -------------------------------------------------------------------------------------------- summary


@dataclass
class Comparison:
    """Best vs baseline on one split."""

    split: str
    rows: list[tuple[str, str, str, str]]  # label, baseline, best, change
    gain: float | None  # relative drop of the primary metric (positive = better)


def metrics_on_test(paths: NightPaths, record: RunRecord) -> Metrics | None:
    """A run's test metrics: from its record, else from `eval_test.json` in its run directory."""
    return record.metrics_test or load_metrics(paths.run_dir(record.run_id) / "eval_test.json")


def _compare(split: str, base: Metrics | None, best: Metrics | None, noise: NoiseFloor) -> Comparison | None:
    if not base or not best:
        return None
    rows = []
    for spec in REPORT_METRICS:
        if spec.key in ("parameters", "cf_spread") or spec.key not in best:
            continue
        b, n = value(base, spec.key), value(best, spec.key)
        change = fmt_change(n, b, spec, mark_threshold(spec, best, base, noise))
        rows.append((spec.label, fmt_number(b), fmt_number(n), change))
    change = relative_change(value(best, PRIMARY_METRIC), value(base, PRIMARY_METRIC))
    return Comparison(split, rows, None if change is None else -change)


@dataclass
class NoteFollowed:
    """A researcher's note (`harness steer`) and the runs whose prompts showed it, in order."""

    note: SteeringNote
    runs: list[RunRecord]

    @property
    def kept(self) -> int:
        return sum(1 for r in self.runs if r.status == RunStatus.KEEP)


@dataclass
class NightView:
    paths: NightPaths
    info: NightInfo | None
    records: list[RunRecord]
    best: RunRecord | None
    baseline: RunRecord | None
    counts: dict[str, int]
    timings: Timings
    tokens: TokenUse
    elapsed_s: float | None
    val: Comparison | None
    test: Comparison | None
    test_missing: list[str]  # run ids whose test metrics are not computed yet
    noise: NoiseFloor  # the night's noise floor now
    carries: bool | None  # does the val gain carry to test? None when unknown
    board: list[RunRecord]
    failures: list[RunRecord]
    running: list[RunningState]  # the runs in flight, when the loop that wrote them is alive
    generated_at: datetime
    steering: list[NoteFollowed] = field(default_factory=list)  # the researcher's notes and what followed

    @property
    def improved(self) -> bool:
        """Has a kept run beaten the baseline?"""
        return (
            self.best is not None and self.baseline is not None and self.best.run_id != self.baseline.run_id
        )

    def is_best(self, record: RunRecord) -> bool:
        return self.best is not None and record.run_id == self.best.run_id

    def link(self, record: RunRecord) -> str:
        return f"{self.paths.tag}/{record.run_id}.md"

    def figure(self, record: RunRecord, kind: str) -> str | None:
        path = self.paths.figure(record.run_id, kind)
        return f"{self.paths.tag}/{path.name}" if path.exists() else None

    def vs_baseline(self, record: RunRecord) -> str:
        if record.is_baseline:
            return "baseline"
        base = self.baseline.metrics_val if self.baseline else None
        spec = next(s for s in REPORT_METRICS if s.key == PRIMARY_METRIC)
        threshold = mark_threshold(spec, record.metrics_val, base, self.noise)
        return fmt_change(record.primary, value(base, PRIMARY_METRIC), spec, threshold)

    @property
    def utilization(self) -> float | None:
        """The share of the workers' time spent on jobs (training, judging) over the night's time."""
        if self.info is None or not self.elapsed_s:
            return None
        busy = sum(t.train_s + t.eval_s for r in self.records for t in r.trials)
        return min(1.0, busy / (self.info.workers * self.elapsed_s))

    @property
    def plateaus(self) -> list[tuple[str, str]]:
        """Stretches of the night with no kept run, as long as a plateau (harness/plateau.py) or longer."""
        if self.info is None:
            return []
        return plateaus(self.records, night_plateau(self.info))

    @property
    def revisits(self) -> list[RunRecord]:
        return [r for r in self.records if r.revisit_of]

    @property
    def repeats(self) -> tuple[int, int]:
        """Proposals sent back as near-duplicates of earlier runs, and those rejected for repeating again."""
        sent = sum(1 for r in self.records if r.sent_back)
        return sent, sum(1 for r in self.records if r.sent_back and r.status == RunStatus.REJECTED)

    @property
    def runs_per_hour(self) -> float:
        return 3600.0 * len(self.records) / self.elapsed_s if self.elapsed_s else 0.0

    def share(self, seconds: float) -> str:
        total = self.timings.total_s
        return f"{seconds / total:.0%}" if total > 0 else "-"


def _elapsed(info: NightInfo | None, records: list[RunRecord], running: list[RunningState]) -> float | None:
    if info is None:
        return None
    if info.spent_s is not None and not running:  # what the loop counted: not a resumed night's pause
        return info.spent_s
    if info.finished_at is not None:
        end = info.finished_at
    elif running:
        end = now()
    elif records:
        end = max(r.finished_at for r in records)
    else:
        return 0.0
    return max(0.0, (end - info.started_at).total_seconds())


def night_view(paths: NightPaths) -> NightView:
    records = Ledger(paths).read()
    info = NightInfo.read(paths)
    activity = NightActivity.read(paths)
    running = activity.runs if activity is not None and activity.alive() else []
    best, baseline = best_run(records), baseline_run(records)
    counts = {s.value: sum(1 for r in records if r.status == s) for s in RunStatus}
    noise = night_noise(records)
    val = test = None
    test_missing: list[str] = []
    carries = None
    if best is not None and baseline is not None and baseline.primary is not None and best is not baseline:
        val = _compare("val", baseline.metrics_val, best.metrics_val, noise)
        base_test, best_test = metrics_on_test(paths, baseline), metrics_on_test(paths, best)
        test_missing = [r.run_id for r, m in ((baseline, base_test), (best, best_test)) if not m]
        test = _compare("test", base_test, best_test, noise)
        if val and test and val.gain is not None and test.gain is not None and val.gain > 0:
            carries = test.gain >= TEST_CARRY_FRACTION * val.gain
    return NightView(
        paths=paths,
        info=info,
        records=records,
        best=best,
        baseline=baseline,
        counts=counts,
        timings=sum((r.timings for r in records), Timings()),
        tokens=sum((r.tokens for r in records), TokenUse()),
        elapsed_s=_elapsed(info, records, running),
        val=val,
        test=test,
        test_missing=test_missing,
        noise=noise,
        carries=carries,
        board=leaderboard(records),
        failures=[r for r in records if r.status in FAILED],
        running=running,
        generated_at=now(),
        steering=[NoteFollowed(n, [r for r in records if n.id in r.steering]) for n in read_notes(paths)],
    )


def draw_progress(paths: NightPaths, records: list[RunRecord] | None = None) -> Path:
    """`reports/progress.png`: the night's runs so far (read from its ledger when not given)."""
    from harness import plots

    records = Ledger(paths).read() if records is None else records
    points = [(r.index, r.primary, r.status.value, r.title) for r in records]
    return plots.progress_plot(points, paths.progress, metric=f"val {PRIMARY_METRIC}")


def render_summary(paths: NightPaths, painter: Painter | None = None) -> Path:
    """Rewrite `reports/summary.md` and `reports/progress.png` (drawn by `painter` when given, else here) for
    one night; returns the markdown's path."""
    view = night_view(paths)
    if painter is None:
        draw_progress(paths, view.records)
    else:
        painter.progress(paths)
    return atomic_write_text(paths.summary, render_template("summary.md.j2", n=view, metric=PRIMARY_METRIC))
