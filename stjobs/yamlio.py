"""PyYAML, configured once: the loader every spec is read with and the dumper every manifest is written with.

The C (libyaml) classes when this PyYAML was built with them, the pure-Python ones otherwise; both read and
write the same data (a test renders every golden file with both dumpers and compares the bytes).

Reading refuses what PyYAML would accept without a word: a key given twice in one mapping (PyYAML keeps the last
one), and documents that expand, through aliases, far beyond what a spec holds (the "billion laughs").
Writing is block style in the key order we built, one line per scalar however long, and it quotes every string
that some YAML reader would take for something else: PyYAML's own YAML 1.1 resolver decides most of them
(``no``, ``on``, ``0755``, ``~``, ``1_000``), and a second pattern adds what YAML 1.2 readers (kubectl, Go's
yaml.v3) or yaml.v2 read differently (``1e3``, ``0o17``, ``y``, ``n``).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from stjobs.errors import SpecError

_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_BaseDumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
STR_TAG = "tag:yaml.org,2002:str"
# Spec files are a few kilobytes: expanded through aliases they hold a few hundred values a dozen deep. Far
# more is an alias bomb or a mistake, refused before a renderer or an error message walks it.
MAX_VALUES = 100_000
MAX_DEPTH = 64
# Scalars a YAML 1.2 core-schema reader, or Go's yaml.v2, reads as a number, boolean or null although PyYAML's
# YAML 1.1 resolver calls them strings: exponent floats without a dot, 0o octal, y/n booleans, 1.2's null forms.
_OTHER_READERS = re.compile(
    r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|0o[0-7]+|0x[0-9a-fA-F]+|[-+]?\.(inf|Inf|INF)"
    r"|\.(nan|NaN|NAN)|[yYnN]|null|Null|NULL|~|true|True|TRUE|false|False|FALSE")


class _UniqueKeyLoader(_BaseLoader):  # type: ignore[misc]  # PyYAML's classes are untyped
    """The safe loader, refusing a key given twice in one mapping: YAML says keys are unique, PyYAML keeps the
    last one, and a spec whose second ``nodes:`` silently wins is a spec the user did not mean."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        # The C loader builds its mappings here too: its constructor is PyYAML's Python code.
        seen: set[tuple[str, str]] = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if (key.tag, key.value) in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key.value!r} is given twice in one mapping; each key once",
                        key.start_mark)
                seen.add((key.tag, key.value))
        return super().construct_mapping(node, deep)


# What reading a document that is not valid YAML raises (the pure-Python composer recurses per nesting level).
INVALID = (yaml.YAMLError, RecursionError)


def read(text: str) -> Any:
    """``text`` as one YAML document, or one of INVALID; sizes unchecked (see :func:`check_size`)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def load(text: str, field: str, shown: object) -> Any:
    """``text`` read as one YAML document. Bad YAML, a repeated key or an oversized expansion is a SpecError
    naming ``field`` and ``shown`` (the file, or the ``--set`` value) with PyYAML's line and column."""
    try:
        data = read(text)
    except RecursionError:  # the pure-Python composer recurses once per nesting level
        raise SpecError(field, shown, f"valid YAML nested at most {MAX_DEPTH} deep") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise SpecError(field, shown, f"valid YAML ({where}{' '.join(str(problem).split())})") from None
    check_size(data, field, shown)
    return data


def check_size(data: Any, field: str, shown: object) -> None:
    """Counts values the way a renderer sees them (an alias counts each time it is used), without recursion."""
    count = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise SpecError(field, shown, f"at most {MAX_VALUES} values once YAML aliases are expanded "
                            "(an alias that repeats a large anchor?)")
        if depth > MAX_DEPTH:
            raise SpecError(field, shown, f"values nested at most {MAX_DEPTH} deep")
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for pair in value.items() for item in pair)
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)


class _Dumper(_BaseDumper):  # type: ignore[misc]
    """Safe types only (anything else is a RepresenterError), never anchors for repeated values."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: Any, value: str) -> Any:
    style = None
    if "\n" in value:
        style = "|"  # scripts in manifests read as scripts; the emitter falls back to quotes when it must
    elif dumper.resolve(yaml.ScalarNode, value, (True, False)) != STR_TAG or _OTHER_READERS.fullmatch(value):
        style = '"'
    return dumper.represent_scalar(STR_TAG, value, style=style)


def _represent_float(dumper: Any, value: float) -> Any:
    if value != value or value in (float("inf"), float("-inf")):
        raise yaml.representer.RepresenterError(f"cannot write {value} as YAML data: no JSON or YAML 1.2 "
                                                "reader agrees on it")
    return yaml.representer.SafeRepresenter.represent_float(dumper, value)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(float, _represent_float)
_Dumper.add_representer(tuple, yaml.representer.SafeRepresenter.represent_list)


# Block style, our key order, unicode as text, and no line ever folded (PyYAML folds at 80 columns by default).
DUMP_OPTIONS: dict[str, Any] = {"Dumper": _Dumper, "default_flow_style": False, "sort_keys": False,
                                "allow_unicode": True, "width": 1 << 30}


def dump(data: Any) -> str:
    """``data`` (dicts, lists, tuples and scalars) as one block-style YAML document, keys in insertion order."""
    text: str = yaml.dump(data, **DUMP_OPTIONS)
    return text
