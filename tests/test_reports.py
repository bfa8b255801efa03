"""Reports of a real night (the session's `loop_night`, tests/conftest.py: the loop's own records, runs,
judge and decisions): every report, the summary, the agent's feedback and the CLI are checked against the
numbers in the ledger and on disk. The ledger's own robustness and summaries of hand-made nights follow.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from harness import plots, reports
from harness.ledger import Ledger, LedgerError, NightActivity, NightInfo, RunningState, RunRecord, RunStatus
from harness.painter import Painter
from harness.paths import NightPaths, run_id_for
from models.canvas import CanvasConfig
from models.vocab import ACTION_NAMES
from tests.helpers import assert_one_line_error, harness
from tests.night_project import EXPECTED, KEEP

TAG = "t"
JUDGED = (RunStatus.KEEP, RunStatus.DISCARD, RunStatus.UNCONFIRMED)  # runs the judge scored: images, metrics
NAN_CRASH = EXPECTED.index("crash")


@pytest.fixture
def night(loop_night: NightPaths) -> NightPaths:
    return loop_night


def links(markdown: str) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", markdown)


def table_rows(markdown: str, header_start: str) -> list[list[str]]:
    """Cells of the markdown table whose header row starts with `header_start`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))])  # "\|" is text
    return rows


def test_every_report_exists_and_its_links_resolve(night: NightPaths):
    records = Ledger(night).read()
    assert [r.run_id for r in records] == [run_id_for(TAG, i) for i in range(len(EXPECTED))]
    for record in records:
        report = night.report(record.run_id)
        targets = links(report.read_text())
        for target in targets:
            assert (report.parent / target).exists(), f"{report.name} links to missing {target}"
        pngs = {t for t in targets if t.endswith(".png")}
        if record.status in JUDGED:
            assert {f"{record.run_id}-{kind}.png" for kind in ("cf", "error", "loss")} <= pngs
        else:
            assert not any("-cf" in p or "-error" in p for p in pngs), record.run_id
    summary = night.summary.read_text()
    assert "progress.png" in links(summary)
    for target in links(summary):
        assert (night.summary.parent / target).exists(), f"summary links to missing {target}"


def test_report_tables_show_the_metrics_on_disk(night: NightPaths):
    records = {r.run_id: r for r in Ledger(night).read()}
    for record in list(records.values())[KEEP : KEEP + 2]:  # the confirmed keep, then a discard
        metrics, parent = record.metrics_val, records[record.parent].metrics_val
        text = night.report(record.run_id).read_text()
        rows = {row[0]: row for row in table_rows(text, "| metric |")}
        mse = rows["mse (target frame)"]
        assert mse[1] == f"**{reports.fmt_number(metrics['mse'])}**"
        assert mse[2] == reports.fmt_number(parent["mse"])
        change = (metrics["mse"] - parent["mse"]) / parent["mse"]
        assert mse[3].startswith(f"{change:+.1%}".replace("-", "−"))
        assert mse[-1] == reports.fmt_number(metrics["copy_mse"])
        assert rows["counterfactual accuracy"][1] == f"**{reports.fmt_number(metrics['cf_acc'])}**"
        assert rows["counterfactual accuracy"][-1] == "0.333 (chance)"
        assert record.reason in text
        header = {row[0]: row[1:] for row in table_rows(text, "| | |")}
        assert header["changed"][0].startswith("experiments/dit.toml")  # the proposal's own diff stat
    assert "models/dit.py" in records[run_id_for(TAG, KEEP)].diff_stat  # the keep carries the code mark


def test_leaderboard_is_ordered_by_val_mse(night: NightPaths):
    records = Ledger(night).read()
    mse = {r.run_id: r.primary for r in records if r.primary is not None}
    expected = sorted(mse, key=lambda run_id: mse[run_id])
    rows = table_rows(night.summary.read_text(), "| # | run |")
    shown = [re.search(r"\[([^\]]+)\]", row[1]).group(1) for row in rows]
    assert shown == expected
    assert [row[3] for row in rows] == [reports.fmt_number(mse[run_id]) for run_id in expected]
    best = min((r for r in records if r.status == RunStatus.KEEP), key=lambda r: r.primary)
    assert f"harness promote {best.run_id}" in night.summary.read_text()
    assert [row for row in rows if "⭐" in row[1]][0][1].startswith(f"[{best.run_id}]")


def test_results_tsv_mirrors_the_ledger(night: NightPaths):
    lines = night.results_tsv.read_text().splitlines()
    assert lines[0].split("\t") == ["run_id", "commit", "mse", "cf_acc", "status", "description"]
    records = Ledger(night).read()
    assert len(lines) == 1 + len(records)
    for line, record in zip(lines[1:], records, strict=True):
        cells = line.split("\t")
        assert cells[0] == record.run_id and cells[4] == record.status.value
        assert cells[1] == (record.commit[:7] if record.commit else "-")  # rejected: never committed
        if record.primary is None:
            assert cells[2] == ""
        else:
            assert float(cells[2]) == pytest.approx(record.primary, rel=1e-5)


def test_crash_report_shows_the_error_instead_of_images(night: NightPaths):
    crash = run_id_for(TAG, NAN_CRASH)
    text = night.report(crash).read_text()
    assert "## What went wrong" in text and "NaN" in text
    assert "## Counterfactuals" not in text and "## Metrics" not in text
    summary = night.summary.read_text()
    assert "## Failures" in summary and crash in summary


def test_images_have_the_size_of_their_content(night: NightPaths):
    run_id = run_id_for(TAG, 0)
    examples = np.load(night.run_dir(run_id) / "cf_val.npz")
    rows = len(examples["index"])
    cf = cv2.imread(str(night.figure(run_id, "cf")))
    error = cv2.imread(str(night.figure(run_id, "error")))
    for image in (cf, error):
        assert image is not None and image.shape[0] > rows * 120  # each row a readable canvas
        assert image.shape[1] >= 400
    assert cf.shape[1] > error.shape[1]  # 5 columns vs 4


def test_a_painter_process_draws_the_figures_it_is_asked_for_and_names_those_it_cannot(
    night: NightPaths, tmp_path: Path
):
    """What a night of several workers does with its figures (harness/painter.py): a run's, the same as
    drawn in line, and the progress plot asked twice while one is out; a run whose examples are damaged is
    named among the failures, and the rest are still drawn."""
    records = Ledger(night).read()
    kept = records[KEEP]
    copy = NightPaths(tmp_path, TAG)
    for record in (kept, records[0]):  # the kept run and its parent, in a night of their own
        shutil.copytree(night.run_dir(record.run_id), copy.run_dir(record.run_id))
    shutil.copy(night.ledger, copy.ledger)
    damaged = records[1]
    shutil.copytree(night.run_dir(damaged.run_id), copy.run_dir(damaged.run_id))
    (copy.run_dir(damaged.run_id) / "cf_val.npz").write_bytes(b"not an npz")

    painter = Painter(tmp_path / "painter.log")
    painter.run_figures(damaged, copy, None)
    painter.run_figures(kept, copy, reports.parent_of(kept, records))
    painter.progress(copy)
    painter.progress(copy)
    failures = painter.close()
    assert len(failures) == 1 and failures[0].startswith(f"the figures of {damaged.run_id}:")
    for kind in ("cf", "error", "loss"):
        drawn, in_line = (
            cv2.imread(str(copy.figure(kept.run_id, kind))),
            cv2.imread(str(night.figure(kept.run_id, kind))),
        )
        assert drawn is not None and drawn.shape == in_line.shape
    assert cv2.imread(str(copy.progress)) is not None


def test_counterfactual_grid_puts_each_action_in_its_column(tmp_path: Path):
    """Known solid colors per column: truth orange, predictions yellow / cyan / magenta by action id."""
    config = CanvasConfig(frame_width=16, frame_height=16, separator_width=4, motor_strip_height=4)
    layout = config.layout
    n = 3
    colors = [(230, 230, 0), (0, 230, 230), (230, 0, 230)]
    predictions = np.zeros((n, len(ACTION_NAMES), layout.height, config.frame_width, 3), np.uint8)
    for a, color in enumerate(colors):
        predictions[:, a] = color
    examples = {
        "index": np.arange(n),
        "context": np.full((n, *layout.shape), 20, np.uint8),
        "truth": np.full((n, layout.height, config.frame_width, 3), (200, 110, 40), np.uint8),
        "predictions": predictions,
        "true_action": np.array([0, 1, 2]),
        "mse": np.zeros(n),
        "hard": np.array([False, False, True]),
    }
    image = cv2.cvtColor(
        cv2.imread(str(plots.counterfactual_grid(examples, config, tmp_path / "cf.png"))), cv2.COLOR_BGR2RGB
    )
    centers = []
    for color in [(200, 110, 40), *colors]:
        ys, xs = np.nonzero(np.all(np.abs(image.astype(int) - color) <= 6, axis=-1))
        assert len(xs) > 300, f"color {color} missing"
        centers.append(xs.mean())
        # one block per row: the rows of this color form n separate vertical runs
        runs = np.count_nonzero(np.diff(np.unique(ys)) > 1) + 1
        assert runs == n
    assert centers == sorted(centers)  # truth | stay | pan+ | pan-, left to right


def test_feedback_for_the_agent(night: NightPaths):
    records = Ledger(night).read()
    kept = records[KEEP]
    text = reports.feedback(night, kept, records)
    assert f"Run {kept.run_id}: {kept.status.value}" in text
    assert kept.reason in text
    assert f"mse (target frame): {reports.fmt_number(kept.metrics_val['mse'])}" in text
    paths = re.findall(r"(reports/\S+\.png)", text)
    assert len(paths) == 3 and all((night.root / p).exists() for p in paths)
    crash = reports.feedback(night, records[NAN_CRASH], records)
    assert "NaN" in crash and "-cf.png" not in crash and "-loss.png" in crash  # it trained, then blew up


def test_torn_last_line_is_dropped_and_cut_before_the_next_append(tmp_path: Path):
    paths = NightPaths(tmp_path, "t")
    ledger = Ledger(paths)
    first = RunRecord(
        run_id="t-000", index=0, tag="t", hypothesis="a", status=RunStatus.KEEP, metrics_val={"mse": 1.0}
    )
    ledger.append(first)
    whole = RunRecord(
        run_id="t-001", index=1, tag="t", hypothesis="b", status=RunStatus.DISCARD
    ).model_dump_json()
    with open(paths.ledger, "a") as f:
        f.write(whole[: len(whole) // 2])  # a kill in the middle of the write
    assert [r.run_id for r in ledger.read()] == ["t-000"]
    ledger.append(RunRecord(run_id="t-001", index=1, tag="t", hypothesis="b again", status=RunStatus.CRASH))
    assert [(r.run_id, r.hypothesis) for r in ledger.read()] == [("t-000", "a"), ("t-001", "b again")]
    assert paths.ledger.read_text().count("\n") == 2
    with pytest.raises(LedgerError, match="already in"):
        ledger.append(first)


def test_a_corrupt_line_in_the_middle_names_its_line(tmp_path: Path):
    paths = NightPaths(tmp_path, "t")
    paths.runs.mkdir(parents=True)
    good = RunRecord(
        run_id="t-000", index=0, tag="t", hypothesis="a", status=RunStatus.KEEP
    ).model_dump_json()
    paths.ledger.write_text(f"{good}\n{{not json\n{good}\n")
    with pytest.raises(LedgerError, match=r"ledger.jsonl:2: not a run record"):
        Ledger(paths).read()


def synthetic_night(tmp_path: Path, test_gain: float) -> NightPaths:
    """Baseline and one kept run 20% better on val; on test the kept run is `test_gain` better."""
    paths = NightPaths(tmp_path, "flag")
    ledger = Ledger(paths)
    base = {"mse": 0.010, "cf_acc": 0.90}
    best = {"mse": 0.008, "cf_acc": 0.91}
    for index, (val, test) in enumerate(
        [(base, base), (best, {"mse": 0.010 * (1 - test_gain), "cf_acc": 0.9})]
    ):
        status = RunStatus.KEEP
        ledger.append(
            RunRecord(
                run_id=run_id_for("flag", index),
                index=index,
                tag="flag",
                hypothesis=f"idea {index}",
                status=status,
                metrics_val=val,
                metrics_test=test,
            )
        )
    reports.render_summary(paths)
    return paths


def test_summary_flags_a_val_gain_that_does_not_carry_to_test(tmp_path: Path):
    flagged = synthetic_night(tmp_path / "a", test_gain=0.02).summary.read_text()
    assert "does not carry to test" in flagged
    assert "lowers val mse by 20.0% vs the baseline" in flagged and "(test: −2.0%)" in flagged
    carried = synthetic_night(tmp_path / "b", test_gain=0.18).summary.read_text()
    assert "does not carry" not in carried and "(test: −18.0%)" in carried


def test_summary_before_any_improvement_and_with_no_runs(tmp_path: Path):
    paths = NightPaths(tmp_path, "quiet")
    NightInfo(tag="quiet", budget_s=3600, per_run_s=300, agent="local").write(paths)
    reports.render_summary(paths)
    assert "No runs yet" in paths.summary.read_text()
    ledger = Ledger(paths)
    ledger.append(
        RunRecord(
            run_id="quiet-000",
            index=0,
            tag="quiet",
            hypothesis="baseline",
            status=RunStatus.KEEP,
            metrics_val={"mse": 0.01, "cf_acc": 0.9},
        )
    )
    ledger.append(
        RunRecord(
            run_id="quiet-001",
            index=1,
            tag="quiet",
            hypothesis="worse",
            status=RunStatus.DISCARD,
            metrics_val={"mse": 0.02, "cf_acc": 0.9},
        )
    )
    reports.render_summary(paths)
    text = paths.summary.read_text()
    assert "No run has beaten the baseline yet" in text and "harness promote quiet-000" in text


def test_cli_report_summary_status(night: NightPaths):
    root = night.root
    run_id = run_id_for(TAG, 1)
    night.report(run_id).unlink()
    assert harness("report", run_id, "--root", root).returncode == 0
    assert night.report(run_id).exists()
    night.report(run_id).unlink()
    assert harness("report", night.run_dir(run_id)).returncode == 0
    assert night.report(run_id).exists()
    night.summary.unlink()
    assert harness("summary", "--root", root).returncode == 0
    assert night.summary.exists()

    upcoming = run_id_for(TAG, len(EXPECTED))
    running = [RunningState(run_id=upcoming, phase="train", hypothesis="wider MLP")]
    NightActivity(runs=running).write(night)  # our own pid: a loop alive
    try:
        result = harness("status", "--root", root, "--tag", TAG)
    finally:
        night.current.unlink()
    assert result.returncode == 0, result.stderr
    head, _, best = result.stdout.partition("best:")
    assert f"running now {upcoming} · train" in head
    board = [run for run in re.findall(rf"{TAG}-\d{{3}}", head) if run != upcoming]
    mse = {r.run_id: r.primary for r in Ledger(night).read() if r.primary is not None}
    assert board == sorted(mse, key=mse.get)
    kept = [r for r in Ledger(night).read() if r.status == RunStatus.KEEP]
    assert f"harness promote {min(kept, key=lambda r: r.primary).run_id}" in best
    after = harness("status", "--root", root).stdout  # the file is gone, no loop is alive: the night ended
    words = " ".join(after.split())  # the terminal table wraps lines
    assert "running now" not in words and f"ended: --max-runs {len(EXPECTED)} reached" in words


def test_cli_errors_are_one_line(night: NightPaths):
    result = harness("report", "nope-007", "--root", night.root)
    assert_one_line_error(result, "unknown run 'nope-007'", "known runs:", run_id_for(TAG, 0))
    assert_one_line_error(harness("summary", "--tag", "other", "--root", night.root), f"nights: {TAG}")
    assert_one_line_error(harness("status", "--root", night.root / "empty"), "no nights under")
    ended = harness("steer", "try a wider model", "--root", night.root)
    assert_one_line_error(ended, f"night {TAG} ended", "a note reaches a night that runs or is resumed")
    assert not night.steering.exists()
