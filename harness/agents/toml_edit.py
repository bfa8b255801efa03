"""Editing a TOML file in place: set dotted keys to new values, keeping every other line, comment and the
order as the person wrote them (a diff of the edit shows only the values that changed). The offline agent
writes its proposals with it; tomllib only reads, and a round trip through a writer would reformat the file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

_HEADER = re.compile(r"^\s*\[(?!\[)(?P<name>[^\]]+)\]\s*(?:#.*)?$")
_ARRAY_HEADER = re.compile(r"^\s*\[\[")
_KEY_LINE = re.compile(r"""^(?P<lead>\s*(?P<key>[A-Za-z0-9_-]+|"[^"]*"|'[^']*')\s*=\s*)(?P<rest>.*)$""")
_SCALAR = re.compile(r"""^(?P<value>"(?:[^"\\]|\\.)*"|'[^']*'|[^\s#"'\[{]+)(?P<tail>\s*(?:#.*)?)$""")


def format_toml_value(value: Any) -> str:
    """A scalar as TOML: floats in Python's shortest round-trip form (0.0021, 2.1e-05), bools lower-case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # always has a '.' or an exponent, so TOML reads it back as a float
    if isinstance(value, str):
        escaped = "".join(
            "\\" + ch if ch in '"\\' else f"\\u{ord(ch):04x}" if ord(ch) < 0x20 or ord(ch) == 0x7F else ch
            for ch in value
        )
        return f'"{escaped}"'
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) as a TOML scalar")


def set_toml_values(text: str, values: Mapping[str, Any]) -> str:
    """`text` with each dotted key's `key = value` line rewritten in its [section], everything else as it was.

    A key missing from its section is added after the section's last line; a missing section is appended.
    Only one-line scalar values can be rewritten (ValueError otherwise): that is all a search space sets.
    """
    pending: dict[str, dict[str, Any]] = {}
    for dotted, value in values.items():
        section, _, key = dotted.rpartition(".")
        pending.setdefault(section, {})[key] = value
    eol = "\r\n" if "\r\n" in text else "\n"
    lines = text.splitlines(keepends=True)
    section: str | None = ""
    last_line: dict[str, int] = {}  # section -> its last non-blank, non-comment line (or its header)
    for i, line in enumerate(lines):
        body = line.rstrip("\r\n")
        if header := _HEADER.match(body):
            section = _table_name(header["name"])
            last_line[section] = i
            continue
        if _ARRAY_HEADER.match(body):
            section = None  # an array of tables: never ours
            continue
        if section is None:
            continue
        if body.strip() and not body.lstrip().startswith("#"):
            last_line[section] = i
        match = _KEY_LINE.match(body)
        if not match or section not in pending:
            continue
        key = _unquote(match["key"])
        if key not in pending[section]:
            continue
        scalar = _SCALAR.match(match["rest"])
        if not scalar:
            where = f"{section}.{key}" if section else key
            raise ValueError(f"line {i + 1}: {where} is not a one-line scalar value and cannot be rewritten")
        value = pending[section].pop(key)
        lines[i] = f"{match['lead']}{format_toml_value(value)}{scalar['tail']}{line[len(body) :]}"
    inserts: list[tuple[int, str]] = []
    appended: list[str] = []
    for section_name, rest in pending.items():
        new = "".join(f"{k} = {format_toml_value(v)}{eol}" for k, v in rest.items())
        if not new:
            continue
        if section_name in last_line:
            inserts.append((last_line[section_name] + 1, new))
        elif not section_name:
            inserts.append((0, new))  # top-level keys must come before the first table
        else:
            appended.append(f"{eol}[{section_name}]{eol}{new}")
    for position, new in sorted(inserts, reverse=True):
        if position > 0 and not lines[position - 1].endswith(("\n", "\r")):
            lines[position - 1] += eol
        lines.insert(position, new)
    out = "".join(lines)
    if appended:
        out = (out if not out or out.endswith("\n") else out + eol) + "".join(appended)
    return out


def _table_name(raw: str) -> str:
    return ".".join(_unquote(part.strip()) for part in raw.split("."))


def _unquote(key: str) -> str:
    return key[1:-1] if len(key) >= 2 and key[0] == key[-1] and key[0] in "\"'" else key
