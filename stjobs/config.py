"""File + overrides → :class:`JobSpec`. The only place raw user input becomes a spec."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from stjobs.errors import SpecError
from stjobs.spec import JobSpec

Override = tuple[str, Any]


def load_spec(path: str | Path | None = None, overrides: Iterable[Override] = (),
              sets: Sequence[str] = ()) -> JobSpec:
    """Read a spec file (optional), apply ``overrides`` (dotted key, value) then ``--set key=value`` strings.

    Flags such as ``--nodes 2`` arrive as overrides; ``--set a.b=value`` values are parsed as YAML scalars or flow
    collections, so ``--set nodes=2`` is a number and ``--set entrypoint.args=[--x, 1]`` a list.
    """
    data: dict[str, Any] = read_spec_file(path) if path is not None else {}
    for key, value in overrides:
        _assign(data, key, value)
    for item in sets:
        key, value = parse_set(item)
        _assign(data, key, value)
    return validate_spec(data)


def read_spec_file(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise SpecError("spec file", str(file), f"a readable YAML file ({error.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise SpecError("spec file", str(file), f"valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError("spec file", type(data).__name__, "a YAML mapping of spec fields at the top level")
    return data


def parse_set(item: str) -> Override:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise SpecError("--set", item, "KEY=VALUE with a dotted key, e.g. slurm.partition=gpu")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML: take it as the plain string the user typed
    return key.strip(), value


def validate_spec(data: Mapping[str, Any]) -> JobSpec:
    try:
        return JobSpec.model_validate(dict(data))
    except ValidationError as error:
        raise _to_spec_error(error, data) from None


def _assign(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(".".join(parts[: depth + 1]), child, f"a mapping, to set {dotted}")
        node = child
    node[parts[-1]] = value


def _to_spec_error(error: ValidationError, data: Mapping[str, Any]) -> SpecError:
    first = error.errors()[0]
    loc = tuple(first["loc"])
    field = _dotted(loc)
    if first["type"] == "extra_forbidden":
        model = _model_at(JobSpec, loc[:-1])
        known = sorted(model.model_fields) if model is not None else []
        guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean '{guess[0]}'? " if guess else ""
        where = _dotted(loc[:-1]) or "the spec"
        return SpecError(field, _value_at(data, loc), f"a known field ({hint}known in {where}: {', '.join(known)})")
    if first["type"] == "missing":
        return SpecError(field, None, f"a value (required): {_expected_at(loc) or 'see stjobs schema'}")
    expected_text = _expected_at(loc) or first["msg"]
    return SpecError(field, first.get("input"), expected_text)


def _dotted(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _model_at(model: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _expected_at(loc: Sequence[Any]) -> str | None:
    # Walk down to the innermost named field; list indexes and dict keys keep the field's own text.
    model: type[BaseModel] | None = JobSpec
    text: str | None = None
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            break
        field = model.model_fields[part]
        extra = field.json_schema_extra
        if isinstance(extra, dict) and isinstance(extra.get("expected"), str):
            text = str(extra["expected"])
        annotation = field.annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return text


def _value_at(data: Mapping[str, Any], loc: Sequence[Any]) -> Any:
    node: Any = data
    for part in loc:
        in_mapping = isinstance(node, Mapping) and part in node
        in_list = isinstance(node, (list, tuple)) and isinstance(part, int) and part < len(node)
        if in_mapping or in_list:
            node = node[part]
        else:
            return None
    return node
