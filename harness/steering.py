"""Steering a night while it runs: `harness steer "<note>"` and the project's GUIDANCE.md.

A researcher who sees the night going astray at midnight should not have to stop it. A note sent with
`harness steer` is appended to `runs/<tag>/steering.jsonl` (one fsynced line; only the command writes the
file, the night only reads it); GUIDANCE.md, at the project's root, is standing guidance the
researcher edits at any time. Both are read before every proposal and shown in its prompt, so a note reaches
the agent at its very next proposal; each run's record lists what its prompt showed (`RunRecord.steering`),
and the summary lists the notes and the runs that followed them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from harness.durable import append_line
from harness.ledger import now
from harness.paths import NightPaths
from models.errors import WorldloopError

GUIDANCE_FILE = "GUIDANCE.md"
GUIDANCE_CHARS = 3000  # what a prompt shows of GUIDANCE.md
NOTE_CHARS = 1000  # one steering note
NOTES_SHOWN = 10  # the latest notes a prompt shows in full; earlier ones are counted


class SteeringError(WorldloopError):
    """A note that cannot be sent (empty, too long, no such night, a night already over)."""


@dataclass(frozen=True)
class SteeringNote:
    id: str  # S1, S2, ... in the order they were sent
    at: datetime
    text: str


def read_notes(paths: NightPaths) -> list[SteeringNote]:
    """The night's notes, oldest first; a line torn by a kill of `harness steer` is skipped."""
    if not paths.steering.exists():
        return []
    notes = []
    for line in paths.steering.read_text().splitlines():
        try:
            entry = json.loads(line)
            notes.append(
                SteeringNote(f"S{len(notes) + 1}", datetime.fromisoformat(entry["at"]), entry["text"])
            )
        except (ValueError, KeyError, TypeError):
            continue
    return notes


def send_note(paths: NightPaths, text: str) -> SteeringNote:
    """Append a note for the night's next proposals."""
    text = text.strip()
    if not text:
        raise SteeringError("the note is empty: say what the agent should know or try")
    if len(text) > NOTE_CHARS:
        raise SteeringError(f"the note has {len(text)} characters; at most {NOTE_CHARS} reach the agent")
    at = now()
    append_line(paths.steering, json.dumps({"at": at.isoformat(), "text": text}))
    return SteeringNote(f"S{len(read_notes(paths))}", at, text)


def read_guidance(root: Path) -> tuple[str, str]:
    """GUIDANCE.md's text as a prompt shows it (at most GUIDANCE_CHARS) and its version ("" when there is
    none): the first 8 hex digits of its SHA-256, which the ledger records."""
    path = Path(root) / GUIDANCE_FILE
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return "", ""
    except (OSError, UnicodeDecodeError) as err:
        raise SteeringError(f"{path}: cannot be read as text ({err})") from None
    if not text:
        return "", ""
    version = hashlib.sha256(text.encode()).hexdigest()[:8]
    shown = (
        text if len(text) <= GUIDANCE_CHARS else text[:GUIDANCE_CHARS] + "\n[... cut: GUIDANCE.md is longer]"
    )
    return shown, version


@dataclass
class Steering:
    """What one prompt shows of the researcher's guidance, and what its run's record keeps of it."""

    guidance: str
    guidance_version: str
    notes: list[SteeringNote]
    earlier: int  # notes sent before those shown

    @property
    def seen(self) -> list[str]:
        """For the ledger: the notes the prompt showed, and GUIDANCE.md's version."""
        ids = [note.id for note in self.notes]
        return ids + ([f"{GUIDANCE_FILE}@{self.guidance_version}"] if self.guidance_version else [])


def steering_for(paths: NightPaths) -> Steering:
    """What the next prompt shows: GUIDANCE.md (a file that cannot be read says so, the night goes on) and
    the latest notes."""
    notes = read_notes(paths)
    try:
        guidance, version = read_guidance(paths.root)
    except SteeringError as err:
        guidance, version = f"({err})", ""
    shown = notes[-NOTES_SHOWN:]
    return Steering(guidance, version, shown, len(notes) - len(shown))
