"""A reader for the plain YAML spec files are written in; anything else goes to PyYAML.

Why: importing PyYAML (its reader alone compiles a large Unicode regular expression) is a sixth of a whole
``stjobs render`` process. Spec files are block mappings and lists of words, numbers and quoted strings; for
those :func:`load` returns exactly what ``yaml.safe_load`` returns, and for anything it is not certain about it
returns ``None`` so that the caller asks PyYAML, which also reports the errors. It never guesses: a plain
scalar that YAML 1.1 could read as anything but a string, an int or a float written the obvious way (``010``,
``1_000``, ``2e-5``, ``12:30``, dates, ``.inf``, ``<<``) is left to PyYAML. The test suite compares the two
readers on generated documents, hostile ones included.
"""

from __future__ import annotations

import re
from typing import Any

# A plain scalar's first character (no YAML indicator, no sign or digit that could start a number) and the
# characters of the rest: outside flow collections anything printable but '#', which only starts a comment
# after a space (refused outright, to stay simple); inside them, no spaces and no flow indicators.
_BLOCK_PLAIN = re.compile(r"(?:[A-Za-z_/$]|-(?=[A-Za-z_-])|\.(?=[./]))[^\t#]*")
_FLOW_PLAIN = re.compile(r"(?:[A-Za-z_/$]|-(?=[A-Za-z_-])|\.(?=[./]))[A-Za-z0-9_./@+=$-]*")
_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_./-]*):(?: +|$)")
_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]*)\.[0-9]+")
_NUMBERISH = re.compile(r"[0-9+]|-[0-9.]")
# YAML 1.1's booleans and nulls, exactly as PyYAML's resolver spells them.
_WORDS: dict[str, Any] = {
    **{w: True for w in ("yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON")},
    **{w: False for w in ("no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF")},
    **{w: None for w in ("~", "null", "Null", "NULL")},
}


class _Unsure(Exception):
    """Not certain what YAML makes of this: PyYAML decides."""


def load(text: str) -> Any:
    """``yaml.safe_load(text)`` for the simple documents spec files are, or ``None``: then ask PyYAML."""
    if not (text.isascii() and text.replace("\n", "").isprintable()):  # no tabs, CRs or control characters
        return None
    lines = []
    for raw in text.split("\n"):
        stripped = raw.strip(" ")
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith(("---", "...", "%")) and len(raw) == len(stripped):
            return None  # document markers and directives
        lines.append((len(raw) - len(raw.lstrip(" ")), stripped))
    if not lines:
        return None  # empty: PyYAML says None, which callers treat apart
    try:
        value, end = _block(lines, 0, lines[0][0])
    except _Unsure:
        return None
    return value if end == len(lines) and isinstance(value, dict) else None


def load_value(text: str) -> Any:
    """One value as written after ``--set key=``: a scalar or a one-line flow list; ``None``: ask PyYAML."""
    stripped = text.strip(" ")
    if not (stripped.isascii() and stripped.isprintable()) or stripped.startswith(("---", "...", "%")):
        return None
    try:
        return _value(stripped, [], 0, -1)[0]
    except _Unsure:
        return None


def _is_item(line: str) -> bool:
    return line == "-" or line.startswith("- ")


def _block(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[Any, int]:
    if _is_item(lines[i][1]):
        return _sequence(lines, i, indent)
    out: dict[str, Any] = {}
    while i < len(lines) and lines[i][0] == indent:
        match = _KEY.match(lines[i][1])
        if match is None or match.group(1) in _WORDS or match.group(1) in out:
            raise _Unsure  # a key given twice: PyYAML's loader (stjobs.config) reports where
        rest = lines[i][1][match.end():]
        i += 1
        if rest and not rest.startswith("#"):
            out[match.group(1)], i = _value(rest, lines, i, indent)
        elif i < len(lines) and lines[i][0] > indent:
            out[match.group(1)], i = _block(lines, i, lines[i][0])
        elif i < len(lines) and lines[i][0] == indent and _is_item(lines[i][1]):
            out[match.group(1)], i = _sequence(lines, i, indent)  # a list may sit at its key's indent
        else:
            out[match.group(1)] = None
    if i < len(lines) and lines[i][0] > indent:
        raise _Unsure  # a continuation line (multi-line scalar) or a stray indent
    return out, i


def _sequence(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[list[Any], int]:
    out: list[Any] = []
    while i < len(lines) and lines[i][0] == indent and _is_item(lines[i][1]):
        rest = lines[i][1][1:].lstrip(" ")
        i += 1
        if rest.startswith("- ") or _KEY.match(rest):
            raise _Unsure  # nested lists and mappings inside lists: PyYAML's business
        if rest and not rest.startswith("#"):
            item, i = _value(rest, lines, i, indent)
        elif i < len(lines) and lines[i][0] > indent:
            item, i = _block(lines, i, lines[i][0])
        else:
            item = None
        out.append(item)
    if i < len(lines) and lines[i][0] > indent:
        raise _Unsure
    return out, i


def _value(text: str, lines: list[tuple[int, str]], i: int, indent: int) -> tuple[Any, int]:
    """The value after ``key: `` or ``- ``; a flow list may continue on more deeply indented lines."""
    if text.startswith("["):
        while text.count("[") != text.count("]") or not text.rstrip(" ").endswith("]"):
            if "#" in text or i >= len(lines) or lines[i][0] <= indent:
                raise _Unsure
            text, i = f"{text} {lines[i][1]}", i + 1
        return _flow(text.rstrip(" ")), i
    if text.startswith(("'", '"')):
        quote = text[0]
        close = text.find(quote, 1)
        tail = text[close + 1:].lstrip(" ") if close > 0 else "?"
        body = text[1:close]
        # Anything after the closing quote but a comment (e.g. the second quote of an escaped '') is refused.
        if close < 0 or (tail and not (tail.startswith("#") and text[close + 1] == " ")) or \
                (quote == '"' and "\\" in body):
            raise _Unsure
        return body, i
    comment = text.find(" #")
    return _plain(text[:comment] if comment >= 0 else text, _BLOCK_PLAIN), i


def _flow(text: str) -> list[Any]:
    inner = text[1:-1].strip(" ")
    if not inner:
        return []
    out = []
    for item in inner.split(","):
        item = item.strip(" ")
        if len(item) >= 2 and item[0] == item[-1] and item[0] in "'\"" and \
                not any(c in item[1:-1] for c in "'\"\\"):
            out.append(item[1:-1])
        else:
            out.append(_plain(item, _FLOW_PLAIN))
    return out


def _plain(text: str, pattern: re.Pattern[str]) -> Any:
    text = text.rstrip(" ")
    if text in _WORDS:
        return _WORDS[text]
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    if _NUMBERISH.match(text) or not pattern.fullmatch(text) or ": " in text or text.endswith(":"):
        raise _Unsure
    return text
