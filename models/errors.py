"""Errors a user can act on.

Everything that goes wrong because of *input* (a dataset, a config, a checkpoint) raises a subclass of
`WorldloopError` whose message is one readable line naming the file or field. The CLIs print that line and
exit non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

EXIT_NAN = 3
"""The exit code of a training stopped by a NaN or infinite loss: the harness reports it as such."""


class WorldloopError(Exception):
    """Base class for user-facing errors: the message is shown as is, without a traceback."""


class DatasetError(WorldloopError):
    """A dataset on disk is missing, corrupt, of another version, or lacks what was asked for."""


class MissingCacheError(DatasetError):
    """No canvas cache exists for a dataset and canvas config; the message says how to build one."""


class ConfigError(WorldloopError):
    """A config file or value is invalid."""


def describe_validation_error(err: object, source: str = "config") -> str:
    """One line listing every bad field of a pydantic ValidationError, e.g. for a CLI to print."""
    problems = []
    for item in err.errors():  # type: ignore[attr-defined]
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")  # a validator's ValueError: its words only
        problems.append(f"{where}: {message}")
    return f"bad {source}: " + "; ".join(problems)


def run_command(entry: Callable[[], object]) -> None:
    """Run a command-line entry point: a user error ends in one red line and a non-zero exit, no traceback.

    Exit codes: 2 for invalid values (pydantic), 1 for other user errors, 130 for Ctrl-C.
    """
    from pydantic import ValidationError
    from rich.console import Console

    err = Console(stderr=True)
    try:
        entry()
    except ValidationError as error:
        err.print(f"[red]error:[/red] {describe_validation_error(error)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except WorldloopError as error:
        err.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/yellow]")
        sys.exit(130)
