"""The ``sweep:`` block of the job spec: a grid, and a list of explicit points, over training arguments and spec
fields. Each point becomes a whole job (:mod:`stjobs.sweep` makes their specs); on SLURM all of them are one job
array.

A key is either a training argument (``--learning-rate``: its value in ``entrypoint.args`` is replaced, or the
option added; ``true``/``false`` put a flag in or take it out) or a spec field as ``--set`` names it
(``nodes``, ``env.SEED``, ``slurm.qos``). Values are scalars: strings, numbers or booleans.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stjobs.errors import SpecError
from stjobs.fields import Integer, Nullable, Parser, spec_field

KEY_PATTERN = r"--[a-z0-9][a-z0-9-]*|[a-z_][a-z0-9_]*(\.[A-Za-z0-9_]+)*"
KEY_FORM = ("a training argument such as --learning-rate, or a spec field as --set names it, such as nodes or "
            "env.SEED")
# What a point may not change: what names the sweep and its points, and the sweep itself.
FIXED_KEYS = ("name", "sweep")
MAX_POINTS = 10000
Scalar = str | int | float | bool


def _key(key: Any, field: str) -> str:
    if not isinstance(key, str) or not re.fullmatch(KEY_PATTERN, key):
        raise SpecError(field, key, KEY_FORM)
    if key.split(".")[0] in FIXED_KEYS or key in ("--output-dir",):
        raise SpecError(field, key, f"{KEY_FORM}, other than name, sweep and the output directory (each point "
                        "gets its own under the spec's output_dir)")
    return key


def _scalar(value: Any, field: str) -> Scalar:
    if isinstance(value, (str, int, float, bool)):
        return value
    raise SpecError(field, value, "a string, a number or a boolean")


class SweepGrid(Parser[dict[str, tuple[Scalar, ...]]]):
    """``{key: [value, ...]}``: every combination of the values, the first key varying slowest."""

    expected = f"a mapping of keys ({KEY_FORM}) to non-empty lists of values"

    def parse(self, value: Any, field: str) -> dict[str, tuple[Scalar, ...]]:
        if not isinstance(value, Mapping):
            raise self.fail(field, value)
        out: dict[str, tuple[Scalar, ...]] = {}
        for key, values in value.items():
            where = f"{field}.{key}"
            _key(key, where)
            if not isinstance(values, (list, tuple)) or not values:
                raise SpecError(where, values, "a non-empty list of values, e.g. [1e-5, 3e-5]")
            items = tuple(_scalar(item, f"{where}[{index}]") for index, item in enumerate(values))
            if len(set(map(repr, items))) != len(items):
                raise SpecError(where, list(values), "each value once")
            out[key] = items
        return out

    def schema(self) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": {"type": "array", "minItems": 1,
                                                           "items": {"type": ["string", "number", "boolean"]}}}


class SweepPoints(Parser[tuple[dict[str, Scalar], ...]]):
    """``[{key: value, ...}, ...]``: points of their own, besides the grid's."""

    expected = f"a list of mappings of keys ({KEY_FORM}) to values"

    def parse(self, value: Any, field: str) -> tuple[dict[str, Scalar], ...]:
        if not isinstance(value, (list, tuple)):
            raise self.fail(field, value)
        out: list[dict[str, Scalar]] = []
        for index, point in enumerate(value):
            where = f"{field}[{index}]"
            if not isinstance(point, Mapping) or not point:
                raise SpecError(where, point, "a non-empty mapping of keys to values, e.g. {--learning-rate: 5e-5}")
            out.append({_key(key, f"{where}.{key}"): _scalar(item, f"{where}.{key}") for key, item in point.items()})
        return tuple(out)

    def schema(self) -> dict[str, Any]:
        return {"type": "array", "items": {"type": "object",
                                           "additionalProperties": {"type": ["string", "number", "boolean"]}}}


@dataclass(frozen=True)
class SweepOptions:
    grid: dict[str, tuple[Scalar, ...]] = spec_field(SweepGrid(), {})
    points: tuple[dict[str, Scalar], ...] = spec_field(SweepPoints(), ())
    max_running: int | None = spec_field(Nullable(Integer(1, MAX_POINTS, "how many points may run at once, from 1 "
                                                          "(default: SLURM as many as fit; local one at a time)")),
                                         None)

    @property
    def enabled(self) -> bool:
        return bool(self.grid or self.points)

    @property
    def size(self) -> int:
        grid = 1
        for values in self.grid.values():
            grid *= len(values)
        return (grid if self.grid else 0) + len(self.points)

    @staticmethod
    def _resolve(values: dict[str, Any]) -> None:
        options = SweepOptions(**values)
        if options.size > MAX_POINTS:
            raise SpecError("sweep", f"{options.size} points", f"at most {MAX_POINTS} points")
