"""A small, fast block-YAML writer for the data stjobs renders (dicts, lists, str, int, float, bool, None).

Why not PyYAML's dumper: even with the C emitter, PyYAML builds a node tree and resolves every scalar in Python,
about 1.2 ms for one PyTorchJob; rendering must stay well under a millisecond (the k8s render benchmark). This
writer never guesses: a string goes out plain only when it matches a conservative pattern that no YAML 1.1 or
1.2 reader can take for anything but a string, and otherwise double-quoted with escapes. The test suite checks
that PyYAML reads back exactly the data written, for ordinary and hostile strings alike.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any

# A letter first, or dashes and a letter (command-line flags), so never a number, a date or '.inf'; then nothing
# YAML gives a meaning to in a plain scalar (a ':' only between words, never ': ' or a trailing ':').
_PLAIN = re.compile(r"(-{1,2}[A-Za-z]|[A-Za-z_/])[A-Za-z0-9_./@+-]*(:[A-Za-z0-9_./@+-]+)*")
# Words YAML 1.1 readers (PyYAML, Go's yaml.v2) turn into booleans or null.
_SPECIAL = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null"})


@functools.lru_cache(maxsize=8192)  # keys and most values repeat across containers and renders
def _string(value: str) -> str:
    if _PLAIN.fullmatch(value) and value.lower() not in _SPECIAL:
        return value
    if value.isascii():
        return json.dumps(value)  # JSON's escapes are a subset of YAML's double-quoted ones
    out = []
    for char in value:
        code = ord(char)
        if code < 0x80:
            out.append(json.dumps(char)[1:-1])
        elif char.isprintable() and char != "\ufeff":
            out.append(char)
        else:  # line separators (U+2028/9, U+0085), controls, byte-order mark: escaped, never raw
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def _scalar(value: Any) -> str | None:
    if type(value) is str:  # the common case first: this runs for every leaf of every render
        return _string(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"cannot write {value} as YAML data")
        # YAML 1.1 floats need a '.' in the mantissa: 1e+20 would read back as a string.
        mantissa, e, exponent = repr(value).partition("e")
        return (mantissa if "." in mantissa else mantissa + ".0") + (e + exponent)
    if isinstance(value, str):
        return _string(value)
    return None


def _key(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"mapping keys must be strings, got {key!r}")
    return _string(key)


def _entry(key: str, item: Any, indent: str, lines: list[str], prefix: str = "") -> None:
    lead = prefix or indent
    kind = type(item)
    if kind is dict:
        if not item:
            lines.append(f"{lead}{key}: {{}}")
            return
        lines.append(f"{lead}{key}:")
        deeper = indent + "  "
        for sub_key, sub_item in item.items():
            _entry(_key(sub_key), sub_item, deeper, lines)
    elif kind is list or kind is tuple:
        if not item:
            lines.append(f"{lead}{key}: []")
            return
        lines.append(f"{lead}{key}:")  # list items sit at their key's level, as kubectl writes them
        for element in item:
            _item(element, indent, lines)
    else:
        text = _scalar(item)
        if text is None:
            raise TypeError(f"cannot write {kind.__name__} as YAML")
        lines.append(f"{lead}{key}: {text}")


def _item(item: Any, indent: str, lines: list[str]) -> None:
    kind = type(item)
    if kind is dict and item:
        prefix = f"{indent}- "
        deeper = indent + "  "
        for key, sub_item in item.items():
            _entry(_key(key), sub_item, deeper, lines, prefix=prefix)
            prefix = ""
    elif (kind is list or kind is tuple) and item:
        lines.append(f"{indent}-")
        for element in item:
            _item(element, indent + "  ", lines)
    elif kind is dict:
        lines.append(f"{indent}- {{}}")
    elif kind is list or kind is tuple:
        lines.append(f"{indent}- []")
    else:
        text = _scalar(item)
        if text is None:
            raise TypeError(f"cannot write {kind.__name__} as YAML")
        lines.append(f"{indent}- {text}")


def dump(data: Mapping[str, Any]) -> str:
    """``data`` (a mapping of dicts, lists, tuples and scalars) as a block-style YAML document, keys in insertion
    order. Other mapping or sequence types are refused rather than guessed at."""
    lines: list[str] = []
    for key, item in data.items():
        _entry(_key(key), item, "", lines)
    return "\n".join(lines) + "\n"
