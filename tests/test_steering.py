"""Steering notes and GUIDANCE.md (harness/steering.py): what a prompt shows of them and what a run's record
keeps; `harness steer` on a running night is tested with a real night (tests/test_night_process.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.paths import NightPaths
from harness.steering import (
    GUIDANCE_CHARS,
    NOTE_CHARS,
    NOTES_SHOWN,
    SteeringError,
    read_notes,
    send_note,
    steering_for,
)


def test_notes_are_numbered_in_order_and_a_torn_line_is_skipped(tmp_path: Path):
    paths = NightPaths(tmp_path, "s")
    assert read_notes(paths) == [] and steering_for(paths).seen == []
    first = send_note(paths, "  try a smaller patch  ")
    assert (first.id, first.text) == ("S1", "try a smaller patch")
    with open(paths.steering, "a") as f:
        f.write('{"at": "2026-12-06T01:0')  # a `harness steer` killed mid-write
    second = send_note(paths, "stop sweeping the learning rate")
    assert [(n.id, n.text) for n in read_notes(paths)] == [
        ("S1", "try a smaller patch"),
        ("S2", "stop sweeping the learning rate"),
    ]
    assert second.id == "S2" and steering_for(paths).seen == ["S1", "S2"]


@pytest.mark.parametrize(
    ("text", "words"), [(" \n", "the note is empty"), ("x" * (NOTE_CHARS + 1), "at most")]
)
def test_an_empty_or_long_note_is_refused_and_nothing_is_written(tmp_path: Path, text: str, words: str):
    paths = NightPaths(tmp_path, "s")
    with pytest.raises(SteeringError, match=words):
        send_note(paths, text)
    assert not paths.steering.exists()


def test_guidance_is_shown_bounded_with_its_version_and_the_latest_notes(tmp_path: Path):
    paths = NightPaths(tmp_path, "s")
    (tmp_path / "GUIDANCE.md").write_text("Prefer changes to the loss.\n" + "y" * 2 * GUIDANCE_CHARS)
    for i in range(NOTES_SHOWN + 2):
        send_note(paths, f"note {i}")
    steering = steering_for(paths)
    assert (
        steering.guidance.startswith("Prefer changes to the loss.")
        and "GUIDANCE.md is longer" in steering.guidance
    )
    assert len(steering.guidance) < GUIDANCE_CHARS + 100
    assert [n.id for n in steering.notes] == [
        f"S{i}" for i in range(3, NOTES_SHOWN + 3)
    ] and steering.earlier == 2
    version = steering.seen[-1]
    assert version.startswith("GUIDANCE.md@") and len(version) == len("GUIDANCE.md@") + 8
    (tmp_path / "GUIDANCE.md").write_text("Prefer changes to the data sampling.\n")
    assert steering_for(paths).seen[-1] != version  # an edit is a new version in the ledger
    (tmp_path / "GUIDANCE.md").write_bytes(b"\xff\xfe not text")
    assert "cannot be read as text" in steering_for(paths).guidance  # the night goes on, and says why
