"""API keys stay in the environment of the process that needs them and nowhere else.

Two guards: training and evaluation subprocesses (running code the agent wrote) get an environment without
any secret, so agent code cannot print one into a log; and every text file the harness writes passes
through `redact`, so even a key that leaked into a string is replaced before it reaches the disk.
"""

from __future__ import annotations

import os
import re
from typing import TextIO

SECRET_NAME = re.compile(r"(API_KEY|_TOKEN|SECRET|PASSWORD|AUTH)", re.IGNORECASE)
"""Environment variables treated as secrets: ANTHROPIC_API_KEY, GITHUB_TOKEN, AWS_SECRET_ACCESS_KEY..."""

MIN_SECRET_LENGTH = 8  # shorter values ("1", "true") would redact ordinary text

REDACTED = "[redacted]"


def secret_values(env: dict[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    values = {v for k, v in env.items() if SECRET_NAME.search(k) and len(v) >= MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)  # longest first: a key containing another is replaced whole


def redact(text: str) -> str:
    """`text` with the value of every secret environment variable replaced."""
    for value in secret_values():
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The current environment without secrets, plus `extra`: for subprocesses that run agent code."""
    env = {k: v for k, v in os.environ.items() if not SECRET_NAME.search(k)}
    env.update(extra or {})
    return env


class RedactingStream:
    """A text stream (stdout) whose every write passes through `redact`: what the night prints, an agent's
    hypothesis included, is often kept as a log (`harness run ... > night.log`). Everything else, isatty
    and fileno among it, is the wrapped stream's, so rich still sees a terminal when there is one."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)
