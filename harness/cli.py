"""`harness`: the command line. Each command is a thin shell over a library function.

User errors (a bad dataset, a bad config) end in one red line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import typer

from harness import data_cli, promote_cli, review_cli, run_cli
from models.errors import run_command

app = typer.Typer(
    help="worldloop: overnight world-model research on an SO-101 arm.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_cli.app, name="data")
app.command()(run_cli.run)
app.command()(review_cli.report)
app.command()(review_cli.summary)
app.command()(review_cli.status)
app.command()(review_cli.steer)
app.command(name="promote")(promote_cli.promote_command)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False
)
def train(ctx: typer.Context) -> None:
    """Train a world model for a fixed budget: same options as `python -m models.train` (see --help)."""
    from models.train import main as train_main

    train_main(ctx.args or ["--help"])


@app.command(
    name="eval",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def evaluate(ctx: typer.Context) -> None:
    """Judge a run on val or test, its model in a process of its own (= `python -m models.evaluate`)."""
    from models.evaluate import main as evaluate_main

    evaluate_main(ctx.args or ["--help"])


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `harness` script: run the app, turning user errors into one line."""
    run_command(lambda: app(args=argv, prog_name="harness"))


if __name__ == "__main__":
    main()
