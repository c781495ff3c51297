"""Small typed parsers for spec fields: each turns raw YAML into a value or raises a one-line SpecError.

We validate by hand instead of with a model library because ``stjobs render`` must start fast (it is measured
against TorchX's dry run and against ``import submitit``), and because every message must name the field, the
value and the expected form. Each parser also describes itself as JSON Schema for ``stjobs schema``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, Generic, TypeVar

from stjobs.errors import SpecError

T = TypeVar("T")
MISSING: Any = dataclasses.MISSING


class Parser(Generic[T]):
    """Checks and converts one field's raw value. ``expected`` is the text users see when it is wrong."""

    expected: str = "a valid value"

    def parse(self, value: Any, field: str) -> T:
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def fail(self, field: str, value: Any) -> SpecError:
        return SpecError(field, value, self.expected)


def writable(value: str, field: str) -> str:
    """``value`` if every backend can pass it on as written, else a SpecError.

    A NUL can be in no argv, environment value or path (and bash refuses to run a script holding one); a lone
    surrogate (YAML's "\\ud800" escape reads as one) has no UTF-8 form, so the rendered files could not be
    written. Both are refused here, once for every string field, instead of failing later in bash or the kubelet.
    """
    if "\x00" in value:
        raise SpecError(field, value, "text without NUL characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise SpecError(field, value, "text without lone surrogates (it must be valid UTF-8)") from None
    return value


class Integer(Parser[int]):
    def __init__(self, low: int, high: int, expected: str) -> None:
        self.low, self.high, self.expected = low, high, expected

    def parse(self, value: Any, field: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not self.low <= value <= self.high:
            raise self.fail(field, value)
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": self.low, "maximum": self.high}


class Number(Parser[float]):
    def __init__(self, above: float, high: float, expected: str) -> None:
        self.above, self.high, self.expected = above, high, expected

    def parse(self, value: Any, field: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.above < value <= self.high:
            raise self.fail(field, value)
        return float(value)

    def schema(self) -> dict[str, Any]:
        return {"type": "number", "exclusiveMinimum": self.above, "maximum": self.high}


class Text(Parser[str]):
    def __init__(self, expected: str, pattern: str | None = None, max_length: int = 4096) -> None:
        # The source, not a compiled pattern: re compiles (and caches) it when a spec sets the field, so the
        # spec's patterns are not all compiled at import by every command.
        self.expected, self.max_length, self.pattern = expected, max_length, pattern

    def parse(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or not value or len(value) > self.max_length:
            raise self.fail(field, value)
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise self.fail(field, value)
        return writable(value, field)

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": self.max_length}
        if self.pattern is not None:
            out["pattern"] = self.pattern
        return out


class Boolean(Parser[bool]):
    expected = "true or false"

    def parse(self, value: Any, field: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(field, value)
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


E = TypeVar("E", bound=Enum)


class Choice(Parser[E]):
    def __init__(self, enum: type[E]) -> None:
        self.enum = enum
        self.expected = "one of " + ", ".join(str(member.value) for member in enum)

    def parse(self, value: Any, field: str) -> E:
        for member in self.enum:
            if value == member.value or value is member:
                return member
        if isinstance(value, str):
            import difflib  # the error path only, as for unknown keys

            guess = difflib.get_close_matches(value, [str(member.value) for member in self.enum], n=1)
            if guess:
                raise SpecError(field, value, f"{self.expected} (did you mean '{guess[0]}'?)")
        raise self.fail(field, value)

    def schema(self) -> dict[str, Any]:
        return {"enum": [member.value for member in self.enum]}


class Nullable(Parser["T | None"]):
    def __init__(self, inner: Parser[T]) -> None:
        self.inner, self.expected = inner, inner.expected

    def parse(self, value: Any, field: str) -> T | None:
        return None if value is None else self.inner.parse(value, field)

    def schema(self) -> dict[str, Any]:
        return {"anyOf": [self.inner.schema(), {"type": "null"}]}


class Words(Parser[tuple[str, ...]]):
    """A list of strings; YAML numbers are taken as their text (``--max-steps 300`` arrives as an int)."""

    def __init__(self, expected: str, item: Parser[str] | None = None, unique: bool = False) -> None:
        self.expected, self.item, self.unique = expected, item, unique

    def parse(self, value: Any, field: str) -> tuple[str, ...]:
        if not isinstance(value, (list, tuple)):
            raise self.fail(field, value)
        out: list[str] = []
        for index, item in enumerate(value):
            where = f"{field}[{index}]"
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise SpecError(where, item, "a string or a number")
            text = item if isinstance(item, str) else str(item)
            out.append(self.item.parse(text, where) if self.item is not None else writable(text, where))
        if self.unique and len(set(out)) != len(out):
            raise SpecError(field, list(value), "each entry once")
        return tuple(out)

    def schema(self) -> dict[str, Any]:
        item = self.item.schema() if self.item is not None else {"type": ["string", "number"]}
        return {"type": "array", "items": item}


class Table(Parser[dict[str, str]]):
    """A mapping of names to strings (environment variables); ``check_key`` vets each name."""

    def __init__(self, expected: str, check_key: Callable[[str, Any, str], None]) -> None:
        self.expected, self.check_key = expected, check_key

    def parse(self, value: Any, field: str) -> dict[str, str]:
        if not isinstance(value, Mapping):
            raise self.fail(field, value)
        out: dict[str, str] = {}
        for key, item in value.items():
            where = f"{field}.{key}"
            self.check_key(str(key), item, where)
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise SpecError(where, item, "a string or a number")
            out[str(key)] = writable(item, where) if isinstance(item, str) else str(item)
        return out

    def schema(self) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": {"type": ["string", "number"]}}


class Nested(Parser[T]):
    def __init__(self, block: type[T]) -> None:
        self.block = block
        self.expected = f"a mapping of {block.__name__} fields"

    def parse(self, value: Any, field: str) -> T:
        return build(self.block, value, field)

    def schema(self) -> dict[str, Any]:
        return block_schema(self.block)


def spec_field(parser: Parser[Any], default: Any = MISSING, doc: str = "") -> Any:
    """A dataclass field carrying its parser; ``default`` MISSING means required."""
    metadata = {"parser": parser, "doc": doc or parser.expected}
    if default is MISSING and isinstance(parser, Nested):
        # A block left out of the spec is built from an empty mapping: its own defaults.
        block = parser.block
        return dataclasses.field(default_factory=lambda: build(block, {}), metadata=metadata)
    if default is MISSING:
        return dataclasses.field(metadata=metadata)
    if isinstance(default, (dict, list)):
        frozen_default = default
        return dataclasses.field(default_factory=lambda: type(frozen_default)(frozen_default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def internal_field(default: Any) -> Any:
    """A dataclass field that is not part of the spec language: no parser, not in the schema or the spec's data
    (e.g. where the spec file was read from), nor compared: two specs of the same fields are equal. :func:`build`
    leaves it at its default."""
    return dataclasses.field(default=default, compare=False, metadata={"internal": True})


def _spec_fields(block: Any) -> list[dataclasses.Field[Any]]:
    return [field for field in dataclasses.fields(block) if "internal" not in field.metadata]


B = TypeVar("B")


def check_keys(block: type[Any], data: Any, where: str = "") -> dict[str, dataclasses.Field[Any]]:
    """``block``'s spec fields by name, once every key of the mapping ``data`` is one of them (an unknown key is
    refused with the nearest known one, a moved key with where it went)."""
    if not isinstance(data, Mapping):
        raise SpecError(where or "spec", data, f"a mapping of {block.__name__} fields")
    fields = {field.name: field for field in _spec_fields(block)}
    moved: dict[str, str] = getattr(block, "_moved", {})
    for key in data:
        if key in moved:
            raise SpecError(_join(where, str(key)), data[key], moved[key])
        if key not in fields:
            known = sorted(fields)
            import difflib  # imported on the error path only: every render would pay for it

            guess = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean '{guess[0]}'? " if guess else ""
            scope = where or "the spec"
            raise SpecError(_join(where, str(key)), data[key],
                            f"a known field ({hint}known in {scope}: {', '.join(known)})")
    return fields


def build(block: type[B], data: Any, where: str = "") -> B:
    """Parse ``data`` into the dataclass ``block``: unknown keys refused with a suggestion, each field by its
    parser. A block's optional ``_resolve(values)`` then fills derived defaults and checks cross-field rules."""
    if data is None:
        data = {}
    fields = check_keys(block, data, where)
    values: dict[str, Any] = {}
    for name, field in fields.items():
        parser: Parser[Any] = field.metadata["parser"]
        path = _join(where, name)
        if name in data and not (data[name] is None and isinstance(parser, Nested)):
            values[name] = parser.parse(data[name], path)
        elif isinstance(parser, Nested):
            values[name] = build(parser.block, {}, path)
        elif field.default is not MISSING:
            values[name] = field.default
        elif field.default_factory is not MISSING:
            values[name] = field.default_factory()  # type: ignore[operator]  # not MISSING: checked just above
        else:
            raise SpecError(path, None, f"a value (required): {parser.expected}")
    resolve = getattr(block, "_resolve", None)
    if resolve is not None:
        resolve(values)
    return block(**values)


def block_schema(block: type[Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in _spec_fields(block):
        parser: Parser[Any] = field.metadata["parser"]
        entry = parser.schema()
        entry["description"] = field.metadata["doc"]
        properties[field.name] = entry
        if field.default is MISSING and field.default_factory is MISSING and not isinstance(parser, Nested):
            required.append(field.name)
    out: dict[str, Any] = {"type": "object", "title": block.__name__, "properties": properties,
                           "additionalProperties": False}
    if required:
        out["required"] = required
    return out


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_SCALARS = (str, int, float, bool, type(None))


def to_data(value: Any) -> Any:
    """A spec value as plain YAML/JSON data (enums by value, tuples as lists)."""
    kind = type(value)
    if kind in _SCALARS:  # most values: checked first, rendering calls this for every field of every render
        return value
    names = _FIELD_NAMES.get(kind)
    if names is None and dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = _FIELD_NAMES[kind] = tuple(field.name for field in _spec_fields(value))
    if names is not None:
        return {name: to_data(getattr(value, name)) for name in names}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [to_data(item) for item in value]
    if isinstance(value, dict):
        return {key: to_data(item) for key, item in value.items()}
    return value


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name
