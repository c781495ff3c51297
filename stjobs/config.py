"""File + overrides → :class:`JobSpec`. The only place raw user input becomes a spec."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from stjobs import yamlio
from stjobs.errors import SpecError, UsageError
from stjobs.spec import JobSpec, parse_spec

Override = tuple[str, Any]
TEMPLATES_ENV = "STJOBS_TEMPLATES"
DEFAULT_SPEC = "stjobs.yaml"  # read from the current directory when a command names no spec file


def _nodes(text: str) -> int | str:
    return int(text) if text.strip().isdigit() else text  # "2:4" stays text: an elastic range


def _number(text: str) -> int | float | str:
    """A number when it reads as one, else the text: the spec's own check then names the field, the value and
    the range (argparse's "invalid int value" names neither the range nor the spec field)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# Command-line flags that are plain overrides of one spec field: (flag, spec field, how its text becomes a value).
SPEC_FLAGS: tuple[tuple[str, str, Callable[[str], Any]], ...] = (
    ("--name", "name", str),
    ("--nodes", "nodes", _nodes),
    ("--procs-per-node", "procs_per_node", _number),
    ("--gpus-per-node", "gpus_per_node", _number),
    ("--cpus-per-task", "cpus_per_task", _number),
    ("--mem-gb", "mem_gb", _number),
    ("--time-min", "time_min", _number),
    ("--strategy", "strategy", str),
    ("--launcher", "launcher", str),
    ("--image", "image", str),
    # A path given on the command line is taken from the current directory, as every shell user expects.
    ("--templates", "templates", os.path.abspath),
)


def spec_file(given: str | None, overrides: Sequence[Override], sets: Sequence[str], command: str) -> str | None:
    """The spec file a command reads: the one it was given, else ./stjobs.yaml when there is one. With neither,
    a job named by the flags alone (--name or --set name=...) is still a spec; anything else is refused here,
    before its first missing field (``name: got None``) hides that no spec was read at all."""
    if given is not None:
        return given
    if Path(DEFAULT_SPEC).is_file():
        return DEFAULT_SPEC
    if any(key == "name" for key, _ in overrides) or any(item.partition("=")[0].strip() == "name" for item in sets):
        return None
    raise UsageError(f"no job spec: give a spec file (stjobs {command} job.yaml) or put {DEFAULT_SPEC} in this "
                     f"directory ({os.getcwd()} has none)")


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
    site = os.environ.get(TEMPLATES_ENV)
    if data.get("templates") is None and site:
        # A site's default templates (set in its module file or profile), below anything the spec or flags say;
        # taken from the current directory, as any path in the environment is.
        data["templates"] = os.path.abspath(site)
    spec = validate_spec(data)
    # Relative paths in a spec file are taken from the file's directory (compose files and kustomize do so).
    return replace(spec, spec_dir=os.path.abspath(Path(path).parent)) if path is not None else spec


# A spec file is a few kilobytes; this bounds what a wrong path (a log, /dev/zero) can make us read.
MAX_SPEC_BYTES = 1 << 20


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
    data = yamlio.load(text, "spec file", str(file))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError("spec file", data, "a YAML mapping of spec fields at the top level (key: value lines)")
    return data


def parse_set(item: str) -> Override:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise SpecError("--set", item, "KEY=VALUE with a dotted key, e.g. slurm.partition=gpu")
    if not raw.strip():
        return key.strip(), ""
    try:
        value = yamlio.read(raw)
    except yamlio.INVALID:
        value = raw  # not YAML: take it as the plain string the user typed
    yamlio.check_size(value, f"--set {key.strip()}", raw)  # an alias bomb on the command line too
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
