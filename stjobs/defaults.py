"""Site and user defaults every spec inherits, and where each value of a spec came from.

A defaults file is a partial spec (partition, account, ``slurm.setup``, containers, ``k8s.namespace``, image,
env, ...). Merge order, lowest first: the packaged defaults (each field's own), the site file, the user file, the
spec file, then flags and ``--set``. Mappings merge key by key; a list or any other value replaces what is below
it (``slurm.setup`` in a spec replaces the site's lines: ``stjobs render --explain`` shows whose lines run).
The files are read by :mod:`stjobs.config`, as the spec file is; this module checks, merges and explains them.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stjobs.errors import EnvError, SpecError
from stjobs.fields import Nested, Parser, check_keys
from stjobs.spec import JobSpec

SITE_ENV = "STJOBS_SITE_DEFAULTS"  # the site file's path (set empty: no site file)
USER_ENV = "STJOBS_DEFAULTS"  # the user file's path (set empty: no user file)
SITE_FILE = "/etc/stjobs/defaults.yaml"
USER_FILE = "stjobs/defaults.yaml"  # under $XDG_CONFIG_HOME, else ~/.config
# What one job is: a value here in a defaults file would make every job the same job, or write where another does.
IDENTITY = ("name", "entrypoint", "workdir", "output_dir")
# What `stjobs init --defaults` writes to a defaults file: where a user's or a site's jobs all run, not their shape.
SITE_WIDE = (("slurm", "partition"), ("slurm", "account"), ("slurm", "qos"), ("k8s", "namespace"))
NOTE_FIELDS = 6  # fields a plan's note names per file before "and N more"
FieldPath = tuple[str, ...]


def files_from_env(environ: Mapping[str, str] | None = None,
                   instead: Mapping[str, Path] | None = None) -> list[tuple[str, Path]]:
    """The defaults files to read, lowest first, as (kind, path): the site file and the user file. A path in
    STJOBS_SITE_DEFAULTS or STJOBS_DEFAULTS replaces the usual place and must exist; set empty it means none.
    At the usual places (/etc/stjobs/defaults.yaml, $XDG_CONFIG_HOME or ~/.config/stjobs/defaults.yaml) a
    missing file is simply no defaults. ``instead``: a file to read for a kind in place of its own (``stjobs init``
    checks the one it is about to write)."""
    env = os.environ if environ is None else environ
    found: list[tuple[str, Path]] = []
    for kind, name, usual in (("site", SITE_ENV, _site_file), ("user", USER_ENV, _user_file)):
        given = env.get(name)
        if instead and kind in instead:
            found.append((kind, instead[kind]))
        elif given is None:
            path = usual(env)
            if path is not None and path.is_file():
                found.append((kind, path))
        elif given:
            if not Path(given).exists():
                raise EnvError(name, given, f"a {kind} defaults YAML file (there is none there; set {name} empty "
                               "to read none)")
            found.append((kind, Path(given)))
    return found


def file_for(kind: str, environ: Mapping[str, str] | None = None) -> Path:
    """Where the ``kind`` (site or user) defaults file is read from, so there it is written: the path in its
    variable, else the usual place."""
    env = os.environ if environ is None else environ
    name, usual = (SITE_ENV, _site_file) if kind == "site" else (USER_ENV, _user_file)
    given = env.get(name)
    if given == "":
        raise EnvError(name, "", f"a path for the {kind} defaults file, or unset for the usual place (set empty it "
                       f"means no {kind} defaults file, so there is none to write)")
    path = Path(given) if given else usual(env)
    if path is None:
        raise EnvError(USER_ENV, None, "a path for the user defaults file (there is no home directory to hold "
                       "~/.config/stjobs/defaults.yaml)")
    return path


def site_wide(values: Mapping[str, Any]) -> dict[str, Any]:
    """The values of ``values`` (a flat map: partition, account, qos, namespace) that every job of a user or site
    shares, as a defaults file's data: what ``stjobs init --defaults`` writes there."""
    data: dict[str, Any] = {}
    for block, key in SITE_WIDE:
        if values.get(key):
            data.setdefault(block, {})[key] = values[key]
    return data


def _site_file(env: Mapping[str, str]) -> Path | None:
    return Path(SITE_FILE)


def _user_file(env: Mapping[str, str]) -> Path | None:
    config = env.get("XDG_CONFIG_HOME", "")
    if os.path.isabs(config):  # the XDG rule: a relative value is ignored
        return Path(config, USER_FILE)
    try:
        return Path.home() / ".config" / USER_FILE
    except RuntimeError:  # no home directory: no user file
        return None


def check(data: Mapping[str, Any], kind: str, path: Path) -> dict[str, Any]:
    """A defaults file's data, checked as a spec's fields are (each error names the file), with its relative
    paths taken from the file's directory. Rules across fields are checked once everything is merged."""
    where = f"{kind} defaults {path}"
    for key in IDENTITY:
        if key in data:
            raise SpecError(f"{where}: {key}", data[key], "no per-job value in a defaults file (name, entrypoint, "
                            "workdir and output_dir belong in each job's spec)")
    try:
        _check_block(JobSpec, data, "")
    except SpecError as error:
        raise SpecError(f"{where}: {error.field}", error.value, error.expected) from None
    return _anchored(copy.deepcopy(dict(data)), os.path.dirname(os.path.abspath(path)))


def _check_block(block: type[Any], data: Any, where: str) -> None:
    fields = check_keys(block, data, where)
    for key, value in data.items():
        parser: Parser[Any] = fields[key].metadata["parser"]
        path = f"{where}.{key}" if where else str(key)
        if isinstance(parser, Nested):
            if value is not None:
                _check_block(parser.block, value, path)
        else:
            parser.parse(value, path)


def _anchored(data: dict[str, Any], base: str) -> dict[str, Any]:
    """Relative paths taken from ``base``, as a spec file's are taken from its directory: templates, a .sif
    image, a python path with a '/', and the sources of slurm.container_mounts."""

    def anchor(value: str) -> str:
        return value if os.path.isabs(value) else os.path.normpath(os.path.join(base, value))

    if isinstance(data.get("templates"), str):
        data["templates"] = anchor(data["templates"])
    image = data.get("image")
    if isinstance(image, str) and image.endswith(".sif") and "://" not in image:
        data["image"] = anchor(image)
    python = data.get("python")
    if isinstance(python, str) and "/" in python:
        data["python"] = anchor(python)
    slurm = data.get("slurm")
    if isinstance(slurm, dict) and isinstance(slurm.get("container_mounts"), list):
        mounts = []
        for mount in slurm["container_mounts"]:
            src, sep, rest = str(mount).partition(":")
            mounts.append(f"{anchor(src)}:{rest}" if sep else mount)
        slurm["container_mounts"] = mounts
    return data


@dataclass(frozen=True)
class Origin:
    """Where one value of a spec came from: ``source`` is ``site: PATH``, ``user: PATH``, ``defaults: PATH``,
    ``spec: PATH``, ``flag: --FLAG``, ``--set``, ``override`` (an API override) or ``env: STJOBS_TEMPLATES``."""

    field: str
    value: Any
    source: str

    def line(self) -> str:
        shown = self.value if isinstance(self.value, str) and "\n" not in self.value else \
            json.dumps(self.value, ensure_ascii=False, default=str)
        return f"{self.field} = {shown}  ({self.source})"


class Provenance:
    """The source of every value set above the packaged defaults, kept while the layers merge."""

    def __init__(self) -> None:
        self._origins: dict[FieldPath, tuple[Any, str]] = {}

    def merge(self, target: MutableMapping[str, Any], layer: Mapping[str, Any], source: str,
              under: FieldPath = ()) -> None:
        """``layer`` merged into ``target``: mappings key by key, anything else replaced."""
        for key, value in layer.items():
            path = (*under, str(key))
            if isinstance(value, Mapping) and isinstance(target.get(key), dict):
                self.merge(target[key], value, source, path)
            else:
                target[key] = copy.deepcopy(dict(value) if isinstance(value, Mapping) else value)
                self.replaced(path, target[key], source)

    def replaced(self, path: FieldPath, value: Any, source: str) -> None:
        """``value`` now stands at ``path``, whatever was there or below it before."""
        for known in [known for known in self._origins if known[:len(path)] == path or path[:len(known)] == known]:
            del self._origins[known]
        if isinstance(value, Mapping) and value:
            for key, item in value.items():
                self.replaced((*path, str(key)), item, source)
        else:
            self._origins[path] = (value, source)

    def rows(self) -> tuple[Origin, ...]:
        return tuple(Origin(".".join(path), value, source)
                     for path, (value, source) in sorted(self._origins.items(), key=lambda item: _rank(item[0])))

    def from_files(self, sources: list[str]) -> tuple[str, ...]:
        """For the plan's note: each defaults file that gave a value, with the fields it gave."""
        out = []
        for source in sources:
            fields = [row.field for row in self.rows() if row.source == source]
            if fields:
                more = f", and {len(fields) - NOTE_FIELDS} more" if len(fields) > NOTE_FIELDS else ""
                out.append(f"{source.replace(': ', ' ', 1)} gave {', '.join(fields[:NOTE_FIELDS])}{more}")
        return tuple(out)

    def blame(self, error: SpecError) -> SpecError:
        """``error`` saying which defaults file set the value it names, when one did (a rule across fields)."""
        path = tuple(error.field.split("[")[0].split("."))
        found = next((source for known, (_, source) in self._origins.items()
                      if known[:len(path)] == path or path[:len(known)] == known), None)
        if found is None or found.split(":")[0] not in ("site", "user", "defaults"):
            return error
        return SpecError(error.field, error.value, f"{error.expected} (the value is from {found})")


def _rank(path: FieldPath) -> tuple[tuple[int, str], ...]:
    """The spec's own field order (as ``stjobs schema`` lists it), then keys of a mapping by name."""
    block: Any = JobSpec
    out = []
    for part in path:
        fields = [field for field in dataclasses.fields(block) if "parser" in field.metadata] if block else []
        names = [field.name for field in fields]
        if part in names:
            parser = fields[names.index(part)].metadata["parser"]
            out.append((names.index(part), ""))
            block = parser.block if isinstance(parser, Nested) else None
        else:
            out.append((len(names), part))
            block = None
    return tuple(out)


def note(spec: JobSpec) -> str | None:
    """The plan's note when a defaults file gave the spec values."""
    if not spec.defaults_from:
        return None
    return f"defaults: {'; '.join(spec.defaults_from)} (stjobs render --explain: where each value came from)"
