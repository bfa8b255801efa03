"""The night's durable writes: whole files and ledger lines that survive a crash or a kill -9 at any moment.

Every text the harness writes goes through here, and through `redact` on the way: no secret reaches a file.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.secrets import redact
from models.files import write_text


def atomic_write_text(path: Path, text: str) -> Path:
    """Write `text`, redacted, whole or not at all and fsynced before it replaces `path` (models/files.py)."""
    return write_text(path, redact(text), durable=True)


def append_line(path: Path, line: str) -> None:
    """Append one line in a single write and fsync it.

    A kill mid-write can leave at most a torn last line (no trailing newline). Such a tail is cut off before
    the next append, so a new line never glues onto half an old one.
    """
    if "\n" in line:
        raise ValueError("a ledger line must not contain a newline")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    drop_torn_tail(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (redact(line) + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_torn_tail(path: Path) -> bool:
    """Cut a last line that has no newline (a write that was killed). True when something was cut."""
    if not path.exists():
        return False
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return False
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return False
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)
        f.flush()
        os.fsync(f.fileno())
    return True
