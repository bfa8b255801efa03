"""`harness report`, `harness summary`, `harness status`: looking at a night, while it runs or after; and
`harness steer`: a note for its next proposals."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from harness import reports
from harness.judge import PRIMARY_METRIC
from harness.ledger import Ledger, LedgerError, NightInfo, RunRecord, find_run, leaderboard, now
from harness.paths import RUNS_DIR, NightPaths, night_tags

console = Console()

ROOT_OPTION = typer.Option(Path("."), "--root", help="the project directory holding runs/ and reports/")


def latest_tag(root: Path) -> str:
    tags = night_tags(root)
    if not tags:
        raise LedgerError(f"no nights under {root / RUNS_DIR}: start one with `harness run`")
    return tags[-1]


def night_paths(root: Path, tag: str | None) -> NightPaths:
    if tag is None:
        return NightPaths(root, latest_tag(root))
    paths = NightPaths(root, tag)
    if not paths.ledger.exists():
        known = ", ".join(night_tags(root)) or "none"
        raise LedgerError(f"no night tagged {tag!r} under {root / RUNS_DIR}; nights: {known}")
    return paths


def resolve_run(root: Path, run: str) -> tuple[NightPaths, RunRecord]:
    """A run named by its id, or by its directory (`runs/<tag>/<run-id>`)."""
    as_dir = Path(run)
    if as_dir.is_dir() and (as_dir.parent / "ledger.jsonl").exists():
        paths = NightPaths(as_dir.resolve().parent.parent.parent, as_dir.resolve().parent.name)
        for record in Ledger(paths).read():
            if record.run_id == as_dir.name:
                return paths, record
        raise LedgerError(f"{as_dir} is not in its night's ledger ({paths.ledger})")
    return find_run(root, run)


def report(
    run: str = typer.Argument(..., help="a run id (e.g. 2026-11-25-007) or its directory under runs/"),
    root: Path = ROOT_OPTION,
) -> None:
    """Re-render one run's report (markdown + PNGs) from its ledger record and run directory."""
    paths, record = resolve_run(root, run)
    path = reports.render_run(paths, record)
    console.print(f"[green]wrote[/green] {path}")


def summary(
    tag: str | None = typer.Option(None, "--tag", help="the night (default: the latest)"),
    root: Path = ROOT_OPTION,
) -> None:
    """Re-render reports/summary.md and reports/progress.png for a night."""
    paths = night_paths(root, tag)
    path = reports.render_summary(paths)
    console.print(f"[green]wrote[/green] {path}")


def steer(
    note: str = typer.Argument(..., help="what the agent should know or try, in a sentence or two"),
    tag: str | None = typer.Option(None, "--tag", help="the night (default: the latest)"),
    root: Path = ROOT_OPTION,
) -> None:
    """Steer a night while it runs: the agent reads the note before its next proposal (GUIDANCE.md in the
    project's root is read the same way, for guidance that stands)."""
    from harness.steering import SteeringError, send_note

    paths = night_paths(root, tag)
    info = NightInfo.read(paths)
    if info is not None and info.finished_at is not None:
        raise SteeringError(
            f"night {paths.tag} ended ({info.end_reason}): a note reaches a night that runs or is resumed"
        )
    sent = send_note(paths, note)
    console.print(
        f"[green]note {sent.id}[/green] for night {paths.tag}: the agent reads it before its next proposal"
    )


def status(
    tag: str | None = typer.Option(None, "--tag", help="the night (default: the latest)"),
    root: Path = ROOT_OPTION,
    top: int = typer.Option(10, "--top", help="leaderboard rows"),
) -> None:
    """The night's leaderboard and what is running now."""
    night = reports.night_view(night_paths(root, tag))
    info = night.info
    counts = night.counts
    head = f"night [bold]{night.paths.tag}[/bold]: {len(night.records)} runs"
    head += f" ({counts['keep']} kept, {counts['discard']} discarded, "
    head += f"{counts['crash'] + counts['timeout']} failed, {counts['rejected']} rejected)"
    if info is not None and night.elapsed_s is not None:
        used = reports.fmt_duration(night.elapsed_s)
        head += f" · {used} of {reports.fmt_duration(info.budget_s)} budget"
        if info.finished_at is not None:
            head += f" · ended: {info.end_reason or 'done'}"
    console.print(head)
    if info is not None and info.continues:
        console.print(f"continues night {info.continues}: its best run is this night's baseline")
    for r in night.running:
        elapsed = reports.fmt_duration((now() - r.started_at).total_seconds())
        what = reports.one_line(r.hypothesis, 90)
        console.print(f"[cyan]running now[/cyan] {r.run_id} · {r.phase} · {elapsed} in · {what}")
    if not night.running and info is not None and info.finished_at is None and night.records:
        console.print(
            f"[yellow]not running[/yellow]: `harness run --resume {night.paths.tag}` continues the night"
        )
    board = leaderboard(night.records, top=top)
    if not board:
        console.print("no run has been judged yet")
        return
    table = Table(title=f"leaderboard (val {PRIMARY_METRIC}, lower is better)")
    for column, justify in [
        ("#", "right"),
        ("run", "left"),
        ("status", "left"),
        (f"val {PRIMARY_METRIC}", "right"),
        ("vs baseline", "right"),
        ("cf_acc", "right"),
        ("hypothesis", "left"),
    ]:
        table.add_column(column, justify=justify)
    for rank, r in enumerate(board, start=1):
        star = " *" if r is night.best else ""
        table.add_row(
            str(rank),
            r.run_id + star,
            r.status.value,
            reports.fmt_number(r.primary),
            night.vs_baseline(r),
            reports.fmt_number(r.guard, 3),
            reports.one_line(r.title, 60),
        )
    console.print(table)
    if night.best is not None:
        console.print(
            f"best: [bold]{night.best.run_id}[/bold] · promote with `harness promote {night.best.run_id}`"
        )
    _print_nights(root)


def _print_nights(root: Path) -> None:
    """Every night of the project, a line each: which continues which, and its best."""
    from harness.nights import nights

    lines = nights(root)
    if len(lines) < 2:
        return
    console.print("nights:")
    for line in lines:
        best = (
            f"best {line.best.run_id} ({reports.fmt_number(line.best.primary)})" if line.best else "no best"
        )
        after = f" · continues {line.continues}" if line.continues else ""
        running = " · [cyan]running[/cyan]" if line.running else ""
        console.print(f"  {line.tag}: {line.runs} runs · {best}{after}{running}")
