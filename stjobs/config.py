"""File + overrides → :class:`JobSpec`. The only place raw user input becomes a spec."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
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


# A spec file is a few kilobytes; this bounds what a wrong path (a log, /dev/zero) can make us read.
MAX_SPEC_BYTES = 1 << 20
# Expanded through YAML aliases, a spec has a few hundred values and nests a dozen deep; anything far larger is
# an alias bomb or a mistake, refused before a renderer or an error message walks it.
MAX_VALUES = 100_000
MAX_DEPTH = 64


def read_spec_file(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    try:
        with file.open("rb") as handle:
            raw = handle.read(MAX_SPEC_BYTES + 1)
    except OSError as error:
        raise SpecError("spec file", str(file), f"a readable YAML file ({error.strerror})") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError("spec file", str(file), f"a YAML file of at most {MAX_SPEC_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise SpecError("spec file", str(file), f"UTF-8 text (byte {raw[error.start]:#04x} on line {line} is "
                        "not UTF-8)") from None
    data = yamlin.load(text)  # plain spec files, without importing PyYAML
    if data is None:
        data = _pyyaml_load(text, str(file))
        _check_size(data, "spec file", str(file))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError("spec file", data, "a YAML mapping of spec fields at the top level (key: value lines)")
    return data


def _pyyaml_load(text: str, file: str) -> Any:
    import yaml

    try:
        return yaml.load(text, Loader=_unique_key_loader())
    except RecursionError:  # PyYAML's pure-Python composer recurses once per nesting level
        raise SpecError("spec file", file, f"valid YAML nested at most {MAX_DEPTH} deep") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise SpecError("spec file", file, f"valid YAML ({where}{' '.join(str(problem).split())})") from None


@lru_cache(maxsize=1)
def _unique_key_loader() -> Any:
    """PyYAML's safe loader (libyaml's when built with it: several times faster) that refuses a key given twice
    in one mapping: YAML says keys are unique, PyYAML keeps the last one without a word, and a spec whose
    second ``nodes:`` silently wins is a spec the user did not mean."""
    import yaml

    base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    def unique_mapping(loader: Any, node: Any) -> Any:
        seen: set[tuple[str, str]] = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if (key.tag, key.value) in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key.value!r} is given twice in one mapping; each key once",
                        key.start_mark)
                seen.add((key.tag, key.value))
        yield from yaml.constructor.SafeConstructor.construct_yaml_map(loader, node)

    loader: Any = type("UniqueKeyLoader", (base,), {})
    loader.add_constructor("tag:yaml.org,2002:map", unique_mapping)
    return loader


def _check_size(data: Any, field: str, shown: object) -> None:
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
            value = yaml.load(raw, Loader=_unique_key_loader())
        except (yaml.YAMLError, RecursionError):
            value = raw  # not YAML: take it as the plain string the user typed
        _check_size(value, f"--set {key.strip()}", raw)
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
