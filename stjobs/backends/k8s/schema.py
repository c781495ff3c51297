"""The official CRD schema of a Kubeflow job, applied to a rendered manifest in strict mode.

``schema_errors`` walks a rendered PyTorchJob or TrainJob (a plain dict) against the CRD's structural schema as the
API server would, refusing unknown fields as ``fieldValidation=Strict`` does. The CRDs come from a directory
(``--k8s-schemas``); ``load_schema`` returns None when the file is absent, so the caller can say the check was
skipped.

Limitations, on purpose (the validator is ours, so no jsonschema dependency):
- ``x-kubernetes-validations`` (CEL) are not evaluated: TrainJob's storageUri form, managedBy values, immutability.
  The TrainJob name rules it carries in CEL are mirrored in checks.py's rules.
- ``format`` is checked for int32/int64 only (date-time appears in status alone); ``not`` is not supported.
- Stricter than the server where the difference means a renderer bug: an explicit null on a non-nullable field is
  an error (the server would prune it) and a float is not an integer. Defaults are applied to list-map keys only.
- Root ``metadata`` is checked as a small ObjectMeta subset (name, namespace, generateName, labels, annotations).
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any

import yaml

from stjobs.errors import RenderError

CRD_FILES: dict[tuple[str, str], str] = {
    ("kubeflow.org/v1", "PyTorchJob"): "kubeflow.org_pytorchjobs.yaml",
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): "trainer.kubeflow.org_trainjobs.yaml",
}

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml parses the 600 kB CRDs ~10x faster
_CRDS: dict[Path, tuple[int, int, Any]] = {}  # path -> (mtime_ns, size, parsed document)
_PATTERNS: dict[str, re.Pattern[str]] = {}
_TYPES: dict[str, tuple[type, ...]] = {"object": (dict,), "array": (list,), "string": (str,), "integer": (int,),
                                       "number": (int, float), "boolean": (bool,)}
_TYPE_NAMES = {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
               dict: "object"}
_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_NUMBER = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
_QUANTITY = rf"^(\+|-)?{_NUMBER}(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?{_NUMBER}))?$"  # the CRDs' Quantity pattern
_PATTERN_HINTS = {_QUANTITY: "is not a Kubernetes quantity (such as 8Gi, 500m or 2)"}
_RE2_TOKENS = re.compile(r"\\.|\[(?:\\.|[^\]])*\]|\$")  # escapes and classes are skipped whole, a bare $ is caught
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
# The API server checks ObjectMeta itself (the CRD says only `type: object`); this is the part a renderer may set.
_OBJECT_META = {"type": "object", "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                "generateName": {"type": "string"}, "labels": _STRING_MAP, "annotations": _STRING_MAP}}
_EMBEDDED = ("apiVersion", "kind", "metadata")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def load_schema(schemas_dir: Path, api_version: str, kind: str) -> dict[str, Any] | None:
    """The openAPIV3Schema of ``api_version``'s version in the CRD for ``kind``; None when the file is absent."""
    if (api_version, kind) not in CRD_FILES:
        known = ", ".join(f"{k} {v}" for v, k in CRD_FILES)
        raise RenderError(f"k8s: no CRD known for {kind} {api_version}; known: {known}")
    path = schemas_dir / CRD_FILES[api_version, kind]
    try:
        stat = path.stat()
    except OSError:
        return None
    cached = _CRDS.get(path)
    if cached is None or cached[:2] != (stat.st_mtime_ns, stat.st_size):  # parsing costs ~0.1 s: once per process
        try:
            with path.open("rb") as stream:
                cached = _CRDS[path] = (stat.st_mtime_ns, stat.st_size, yaml.load(stream, Loader=_LOADER))
        except (OSError, yaml.YAMLError) as error:
            raise RenderError(f"k8s schema {path}: unreadable ({' '.join(str(error).split())[:160]})") from error
    group, _, version = api_version.rpartition("/")
    document = _dict(cached[2])
    spec = _dict(document.get("spec"))
    if (document.get("kind"), spec.get("group"), _dict(spec.get("names")).get("kind")) != (
            "CustomResourceDefinition", group, kind):
        raise RenderError(f"k8s schema {path}: not the CustomResourceDefinition of {kind} ({group})")
    versions = spec.get("versions")
    for entry in map(_dict, versions if isinstance(versions, list) else ()):
        schema = _dict(entry.get("schema")).get("openAPIV3Schema")
        if entry.get("name") == version and entry.get("served") and isinstance(schema, dict):
            return schema
    raise RenderError(f"k8s schema {path}: no served version {version} with an openAPIV3Schema")


def schema_errors(obj: Any, schema: dict[str, Any]) -> list[str]:
    """Strict structural validation: one ``'<path>: <problem>'`` line per error, in document order."""
    errors: list[str] = []
    _walk(obj, schema, "", errors, True)
    return ["(root)" + error if error.startswith(":") else error for error in errors]


def _walk(value: Any, node: dict[str, Any], path: str, errors: list[str], strict: bool) -> None:
    # `strict` is False inside anyOf/oneOf/allOf: there only values are checked, the skeleton owns unknown fields.
    if value is None:
        if not node.get("nullable"):
            errors.append(f"{path}: null is not allowed (leave the field out instead)")
        return
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    if int_or_string:  # its anyOf is just integer | string, checked here once
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            errors.append(f"{path}: expected an integer or a string, got {_typed(value)}")
            return
    elif "type" in node:
        expected = node["type"]
        if not isinstance(value, _TYPES.get(expected, object)) or (isinstance(value, bool) and expected != "boolean"):
            errors.append(f"{path}: expected {expected}, got {_typed(value)}")
            return
    if isinstance(value, dict):
        _walk_object(value, node, path, errors, strict)
    elif isinstance(value, list):
        _walk_array(value, node, path, errors, strict)
    elif isinstance(value, str):
        _check_string(value, node, path, errors)
    elif not isinstance(value, bool):
        _check_number(value, node, path, errors)
    if "enum" in node and value not in node["enum"]:
        errors.append(f"{path}: {_show(value)} is not one of {', '.join(map(str, node['enum']))}")
    for branch in node.get("allOf", ()):
        _walk(value, branch, path, errors, False)
    if "anyOf" in node and not int_or_string and not any(_passes(value, sub, path) for sub in node["anyOf"]):
        errors.append(f"{path}: {_show(value)} matches none of the anyOf forms")
    if "oneOf" in node and sum(_passes(value, sub, path) for sub in node["oneOf"]) != 1:
        errors.append(f"{path}: {_show(value)} does not match exactly one of the oneOf forms")


def _passes(value: Any, branch: dict[str, Any], path: str) -> bool:
    trial: list[str] = []
    _walk(value, branch, path, trial, False)
    return not trial


def _walk_object(value: dict[Any, Any], node: dict[str, Any], path: str, errors: list[str], strict: bool) -> None:
    if path == "metadata" and "properties" not in node and "additionalProperties" not in node:
        node = _OBJECT_META
    properties = node.get("properties") or {}
    extra = node.get("additionalProperties")
    open_ended = extra is True or node.get("x-kubernetes-preserve-unknown-fields") is True or not strict
    embedded = node.get("x-kubernetes-embedded-resource") is True
    prefix = path + "." if path else ""
    for key, item in value.items():
        if not isinstance(key, str):
            errors.append(f"{path}: key {_typed(key)} is not a string")
        elif key in properties:
            _walk(item, properties[key], prefix + key, errors, strict)
        elif isinstance(extra, dict):
            _walk(item, extra, _key(path, key), errors, strict)
        elif not (open_ended or (embedded and key in _EMBEDDED)):
            close = difflib.get_close_matches(key, list(properties), n=1)
            errors.append(f'{path}: unknown field "{key}"' + (f' (did you mean "{close[0]}"?)' if close else ""))
    for name in node.get("required", ()):
        if name not in value:
            errors.append(f'{path}: missing required field "{name}"')
    _check_size(len(value), node.get("minProperties", 0), node.get("maxProperties"), "fields", path, errors)


def _walk_array(value: list[Any], node: dict[str, Any], path: str, errors: list[str], strict: bool) -> None:
    items = node.get("items")
    if isinstance(items, dict):
        for index, item in enumerate(value):
            _walk(item, items, f"{path}[{index}]", errors, strict)
    _check_size(len(value), node.get("minItems", 0), node.get("maxItems"), "items", path, errors)
    list_type = node.get("x-kubernetes-list-type")
    if list_type not in ("map", "set"):
        return
    # A missing map key counts as its default (ports: protocol TCP), as it will once the server has defaulted it.
    fields = _dict(_dict(items).get("properties"))
    defaults = [(name, _dict(fields.get(name)).get("default")) for name in node.get("x-kubernetes-list-map-keys", ())]
    seen: set[str] = set()
    for index, item in enumerate(value):
        if list_type == "set":
            key = _json(item)
        elif isinstance(item, dict):
            key = ", ".join(f"{name}={_json(item.get(name, default))}" for name, default in defaults)
        else:
            continue
        if key in seen:
            errors.append(f"{path}[{index}]: duplicate entry {key}")
        seen.add(key)


def _check_string(value: str, node: dict[str, Any], path: str, errors: list[str]) -> None:
    _check_size(len(value), node.get("minLength", 0), node.get("maxLength"), "characters", path, errors)
    pattern = node.get("pattern")
    if pattern is not None and _pattern(pattern).search(value) is None:
        errors.append(f"{path}: {_show(value)} {_PATTERN_HINTS.get(pattern) or 'does not match ' + pattern}")


def _check_size(size: int, low: int, high: int | None, unit: str, path: str, errors: list[str]) -> None:
    if size < low:
        errors.append(f"{path}: has {size} {unit}; needs at least {low}")
    elif high is not None and size > high:
        errors.append(f"{path}: has {size} {unit}; allows at most {high}")


def _check_number(value: float, node: dict[str, Any], path: str, errors: list[str]) -> None:
    limits = _INT_RANGES.get(node.get("format", ""))
    if limits is not None and isinstance(value, int) and not limits[0] <= value <= limits[1]:
        errors.append(f"{path}: {value} is out of range for {node['format']}")
    low, high = node.get("minimum"), node.get("maximum")
    if low is not None and (value < low or (value == low and node.get("exclusiveMinimum"))):
        errors.append(f"{path}: got {value}; must be {'>' if node.get('exclusiveMinimum') else '>='} {low}")
    if high is not None and (value > high or (value == high and node.get("exclusiveMaximum"))):
        errors.append(f"{path}: got {value}; must be {'<' if node.get('exclusiveMaximum') else '<='} {high}")


def _pattern(pattern: str) -> re.Pattern[str]:
    compiled = _PATTERNS.get(pattern)
    if compiled is None:
        # RE2's $ (and \z) match only at the very end; Python's $ also matches before a final newline.
        python = _RE2_TOKENS.sub(lambda token: {"$": r"\Z", r"\z": r"\Z"}.get(token[0], token[0]), pattern)
        try:
            compiled = _PATTERNS[pattern] = re.compile(python)
        except re.error as error:
            raise RenderError(f"k8s schema: pattern {pattern!r} is not usable here ({error})") from error
    return compiled



def _dict(value: Any) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}


def _key(path: str, key: str) -> str:
    """A map key in a path: ``.Master`` when plain, ``[nvidia.com/gpu]`` when it holds dots or slashes."""
    if _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key}]"


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _show(value: Any) -> str:
    text = _json(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _typed(value: Any) -> str:
    return f"{_TYPE_NAMES.get(type(value), type(value).__name__)} {_show(value)}"
