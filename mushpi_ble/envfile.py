"""Settings files read strictly, the way systemd's ``EnvironmentFile=`` reads them.

The same file serves ``mushpi-ble serve`` in a terminal and the controller's
unit under systemd, so a line must mean the same to both, and a line that
means nothing must stop start-up: a lenient reader that drops
``MUSHPI_BLE_READ_ACCESS="bonded`` (no closing quote) leaves the room open.
Accepted: blank lines, whole-line comments (``#`` or ``;``), ``NAME=value``
with an optional ``export``, a value unquoted (trimmed) or wholly in single
quotes (literal) or double quotes (``\\"``, ``\\\\``, ``\\$`` and ``\\```
escaped). Pure: text in, values and every problem out.
"""

from __future__ import annotations

import re

import attrs

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_ASSIGNMENT = re.compile(rf"\s*(?:export\s+)?({_NAME})\s*=(.*)")
_BARE_NAME = re.compile(rf"\s*(?:export\s+)?({_NAME})\s*")
_INLINE_COMMENT = re.compile(r"\s#")
_DOUBLE_ESCAPES = re.compile(r'\\(["\\$`])')


@attrs.frozen
class LineProblem:
    """A line that cannot be read: its number, the variable if readable, what is wrong."""

    line: int
    name: str | None
    text: str
    problem: str


@attrs.frozen
class EnvFile:
    values: dict[str, str]
    problems: tuple[LineProblem, ...]


def parse(text: str, *, strict_prefix: str = "") -> EnvFile:
    """Every assignment and every problem. Inline comments are refused only for names
    starting with ``strict_prefix`` (the others' values are not ours to judge)."""
    values: dict[str, str] = {}
    problems: list[LineProblem] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        match = _ASSIGNMENT.fullmatch(line)
        if match is None:
            bare = _BARE_NAME.fullmatch(line)
            named = bare.group(1) if bare else None
            why = (f"no '=': write {named}= to leave it unset" if named
                   else "not a NAME=value line")
            problems.append(LineProblem(number, named, stripped, why))
            continue
        name, raw = match.group(1), match.group(2).strip()
        value, problem = _value(raw, ours=name.startswith(strict_prefix))
        if problem is not None:
            problems.append(LineProblem(number, name, stripped, problem))
        else:
            values[name] = value
    return EnvFile(values, tuple(problems))


def _value(raw: str, *, ours: bool) -> tuple[str, str | None]:
    if raw[:1] in ("'", '"'):
        quote = raw[0]
        body = raw[1:]
        end = _closing(body, quote)
        if end is None:
            return "", f"no closing {quote} (systemd would read the line differently)"
        rest = body[end + 1:].strip()
        if rest:
            return "", f"text after the closing {quote}: {rest!r}"
        inner = body[:end]
        return (_DOUBLE_ESCAPES.sub(r"\1", inner) if quote == '"' else inner), None
    if ours and _INLINE_COMMENT.search(raw):
        return "", ("an inline comment: systemd's EnvironmentFile keeps it as part of "
                    "the value; put the comment on a line of its own")
    return raw, None


def _closing(body: str, quote: str) -> int | None:
    """Where the value's closing quote is (a double-quoted value may escape one)."""
    i = 0
    while i < len(body):
        if quote == '"' and body[i] == "\\":
            i += 2
            continue
        if body[i] == quote:
            return i
        i += 1
    return None
