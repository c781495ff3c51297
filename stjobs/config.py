"""File + overrides → :class:`JobSpec`. The only place raw user input becomes a spec."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from stjobs import yamlin
from stjobs.errors import SpecError
from stjobs.spec import JobSpec, parse_spec

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
    data = yamlin.load(text)  # plain spec files, without importing PyYAML
    if data is None:
        data = _pyyaml_load(text, str(file))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError("spec file", type(data).__name__, "a YAML mapping of spec fields at the top level")
    return data


def _pyyaml_load(text: str, file: str) -> Any:
    import yaml

    # libyaml's loader when PyYAML was built with it: the same safe subset, several times faster.
    loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise SpecError("spec file", file, f"valid YAML{where}") from None


def parse_set(item: str) -> Override:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise SpecError("--set", item, "KEY=VALUE with a dotted key, e.g. slurm.partition=gpu")
    if not raw.strip():
        return key.strip(), ""
    value = yamlin.load_value(raw)
    if value is None:
        import yaml

        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw  # not YAML: take it as the plain string the user typed
    return key.strip(), value


def validate_spec(data: Mapping[str, Any]) -> JobSpec:
    return parse_spec(dict(data))


def _assign(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(".".join(parts[: depth + 1]), child, f"a mapping, to set {dotted}")
        node = child
    node[parts[-1]] = value
