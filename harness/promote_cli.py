"""`harness promote`: make a run the robot's model, or list the promoted ones."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from harness.ledger import Ledger, best_run
from harness.promote import list_promoted, promote
from harness.reports import fmt_number
from harness.review_cli import night_paths
from models.errors import WorldloopError

ROOT_OPTION = typer.Option(Path("."), "--root", help="the project directory holding runs/ and checkpoints/")
console = Console()


def promote_command(
    run_id: str = typer.Argument(None, help="the run to promote (see `harness status`)"),
    alias: str = typer.Option("best", "--alias", help="name to point at it, e.g. best"),
    best: bool = typer.Option(False, "--best", help="promote the best run of the newest night (or --tag's)"),
    tag: str = typer.Option(None, "--tag", help="with --best: the night to take the best run from"),
    list_: bool = typer.Option(False, "--list", help="show the promoted models instead"),
    root: Path = ROOT_OPTION,
) -> None:
    """Copy a run's checkpoint, configs and code into checkpoints/<run-id>/ and point an alias at it."""
    if list_:
        _print_list(root)
        return
    if best:
        if run_id:
            raise WorldloopError("give a run id or --best, not both")
        run_id = _best_of_night(root, tag)
    if not run_id:
        raise WorldloopError("name the run to promote (e.g. `harness promote 2026-11-25-007`), or use --list")
    done = promote(root, run_id, alias)
    test = done.manifest["metrics"]["test"] or {}
    val = done.manifest["metrics"]["val"] or {}
    console.print(
        f"[green]promoted[/green] {run_id} -> {done.path} (val mse {fmt_number(val.get('mse'))}, "
        f"test mse {fmt_number(test.get('mse'))})" + (f"; {alias} -> {run_id}" if alias else "")
    )


def _best_of_night(root: Path, tag: str | None) -> str:
    """The night's best kept run (the one its summary names), for `--best`."""
    paths = night_paths(root, tag)
    best = best_run(Ledger(paths).read())
    if best is None:
        raise WorldloopError(f"night {paths.tag!r} kept no run (its baseline failed?): nothing to promote")
    return best.run_id


def _print_list(root: Path) -> None:
    promoted = list_promoted(root)
    if not promoted:
        console.print("nothing promoted yet: `harness promote <run-id>`")
        return
    table = Table(title="promoted models")
    for column in ("run", "aliases", "val mse", "test mse", "cf_acc", "commit"):
        table.add_column(column)
    for p in promoted:
        m = p.manifest
        if "error" in m:
            table.add_row(p.run_id, ", ".join(p.aliases), f"[red]{m['error']}[/red]", "", "", "")
            continue
        val, test = m["metrics"].get("val") or {}, m["metrics"].get("test") or {}
        table.add_row(
            p.run_id,
            ", ".join(p.aliases),
            fmt_number(val.get("mse")),
            fmt_number(test.get("mse")),
            fmt_number(val.get("cf_acc"), 3),
            str(m.get("commit", ""))[:7],
        )
    console.print(table)
