"""File + overrides → :class:`JobSpec`. The only place raw user input becomes a spec."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from stjobs import defaults as site_defaults
from stjobs import yamlio
from stjobs.defaults import Origin, Provenance
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
              sets: Sequence[str] = (), defaults: Sequence[str | Path] | None = None) -> JobSpec:
    """Read a spec file (optional) over the defaults files, apply ``overrides`` (dotted key, value) then
    ``--set key=value`` strings.

    Flags such as ``--nodes 2`` arrive as overrides; ``--set a.b=value`` values are parsed as YAML scalars or flow
    collections, so ``--set nodes=2`` is a number and ``--set entrypoint.args=[--x, 1]`` a list. ``defaults``: the
    defaults files to inherit from, lowest first; None (the default) reads the site and user files
    (stjobs.defaults: /etc/stjobs/defaults.yaml or $STJOBS_SITE_DEFAULTS, then ~/.config/stjobs/defaults.yaml or
    $STJOBS_DEFAULTS), () none.
    """
    data, origins, files = _layered(path, overrides, sets, defaults)
    spec = _validated(data, origins)
    given = origins.from_files(files)
    if given:
        spec = replace(spec, defaults_from=given)
    # Relative paths in a spec file are taken from the file's directory (compose files and kustomize do so).
    return replace(spec, spec_dir=os.path.abspath(Path(path).parent)) if path is not None else spec


def explain_spec(path: str | Path | None = None, overrides: Iterable[Override] = (), sets: Sequence[str] = (),
                 defaults: Sequence[str | Path] | None = None) -> tuple[Origin, ...]:
    """Where each value of the spec :func:`load_spec` makes of the same inputs came from, one row per value that
    is not a packaged default, in the spec's field order (``stjobs render --explain`` prints them)."""
    data, origins, _ = _layered(path, overrides, sets, defaults)
    _validated(data, origins)
    return origins.rows()


def _layered(path: str | Path | None, overrides: Iterable[Override], sets: Sequence[str],
             defaults: Sequence[str | Path] | None) -> tuple[dict[str, Any], Provenance, list[str]]:
    """The merged data of defaults files, spec file, overrides and --set, with the source of each value."""
    origins = Provenance()
    data: dict[str, Any] = {}
    files = site_defaults.files_from_env() if defaults is None else [("defaults", Path(item)) for item in defaults]
    for kind, file in files:
        layer = site_defaults.check(read_spec_file(file, f"{kind} defaults file"), kind, file)
        origins.merge(data, layer, f"{kind}: {file}")
    if path is not None:
        origins.merge(data, read_spec_file(path), f"spec: {path}")
    flags = {field: flag for flag, field, _ in SPEC_FLAGS}
    for key, value in overrides:
        assign(data, key, value)
        origins.replaced(tuple(key.split(".")), value, f"flag: {flags[key]}" if key in flags else "override")
    for item in sets:
        key, value = parse_set(item)
        assign(data, key, value)
        origins.replaced(tuple(key.split(".")), value, "--set")
    site = os.environ.get(TEMPLATES_ENV)
    if data.get("templates") is None and site:
        # A site's default templates (set in its module file or profile), below anything the spec or flags say;
        # taken from the current directory, as any path in the environment is.
        data["templates"] = os.path.abspath(site)
        origins.replaced(("templates",), data["templates"], f"env: {TEMPLATES_ENV}")
    return data, origins, [f"{kind}: {file}" for kind, file in files]


def _validated(data: dict[str, Any], origins: Provenance) -> JobSpec:
    try:
        return validate_spec(data)
    except SpecError as error:
        blamed = origins.blame(error)
        if blamed is error:
            raise
        raise blamed from None


# A spec file is a few kilobytes; this bounds what a wrong path (a log, /dev/zero) can make us read.
MAX_SPEC_BYTES = 1 << 20


def read_spec_file(path: str | Path, what: str = "spec file") -> dict[str, Any]:
    """A spec file's (or, as ``what`` says, a defaults file's) top-level mapping; errors name ``what``."""
    file = Path(path)
    try:
        with file.open("rb") as handle:
            raw = handle.read(MAX_SPEC_BYTES + 1)
    except OSError as error:
        raise SpecError(what, str(file), f"a readable YAML file ({error.strerror})") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(what, str(file), f"a YAML file of at most {MAX_SPEC_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise SpecError(what, str(file), f"UTF-8 text (byte {raw[error.start]:#04x} on line {line} is "
                        "not UTF-8)") from None
    data = yamlio.load(text, what, str(file))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"{what} {file}" if what != "spec file" else what, data,
                        "a YAML mapping of spec fields at the top level (key: value lines)")
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


def assign(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(".".join(parts[: depth + 1]), child, f"a mapping, to set {dotted}")
        node = child
    node[parts[-1]] = value
