"""Reading and writing files, one way for the whole project: whole or not at all, TOML with one-line errors,
checksums.

A reader (the harness, a report, a person) polls run directories while runs are written, so every result
file is written beside its destination and renamed over it: it sees the old file or the new one, never half.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from models.errors import ConfigError, WorldloopError


@contextmanager
def replacing(path: Path, durable: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` to write; renamed over `path` when the block ends without error.

    `durable`: fsync the new file before the rename, so that after a power loss the path holds the old or the
    new contents (what the night's ledger and reports need); results a run can rewrite skip the cost.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of this writer's own: two writers of one path never write, rename or delete each other's file
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield tmp
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str, durable: bool = False) -> Path:
    """Write `text` (UTF-8) whole or not at all; returns `path`."""
    with replacing(path, durable) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(
    path: Path, data: object, indent: int = 2, sort_keys: bool = True, ensure_ascii: bool = True
) -> Path:
    """Write `data` as JSON (and a final newline) whole or not at all; returns `path`."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii)
    return write_text(path, text + "\n")


def sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_toml(text: str, source: Path | str, error: type[WorldloopError] = ConfigError) -> dict:
    """TOML text as a dict; malformed text is `error` with one line naming `source`."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise error(f"{source}: not valid TOML ({err})") from None


def read_toml(path: Path, error: type[WorldloopError] = ConfigError) -> dict:
    """A TOML file as a dict; a missing, unreadable or malformed file is `error` with one line naming it."""
    return read_toml_text(path, error)[1]


def read_toml_text(path: Path, error: type[WorldloopError] = ConfigError) -> tuple[str, dict]:
    """`read_toml`, with the text it parsed (for a caller that edits the file line by line)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as err:
        raise error(f"{path}: cannot read it ({err.strerror})") from None
    return text, parse_toml(text, path, error)
