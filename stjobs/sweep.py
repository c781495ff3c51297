"""A sweep's points: the spec's ``sweep:`` block (:mod:`stjobs.spec_sweep`) made into one whole job spec per point.

Pure and cheap (a 1,000-point sweep is 1,000 validations of a small mapping): the grid's combinations first, the
first key varying slowest, then the explicit points, each applied over the base spec (never over the grid). Every
point gets an output directory of its own, ``<output_dir>/p<index>``, so points never share checkpoints and a
resubmitted sweep finds each point's finished model where it left it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from stjobs.config import assign
from stjobs.errors import SpecError
from stjobs.spec import NAME_MAX, JobSpec, parse_spec
from stjobs.spec_sweep import Scalar

POINTS_DIR = "points"  # in a sweep's directory: one job directory per point, points/<index>/
SWEEP_FILE = "sweep.json"  # beside them: the points and their values, for people and `stjobs status`


@dataclass(frozen=True)
class Point:
    index: int
    values: tuple[tuple[str, Scalar], ...]
    spec: JobSpec

    @property
    def label(self) -> str:
        """``--learning-rate=2e-05 --loss=GISTEmbedLoss``: what sets this point apart."""
        return " ".join(f"{key}={_text(value)}" for key, value in self.values)

    @property
    def directory(self) -> str:
        return f"{POINTS_DIR}/{self.index}"


def expand(spec: JobSpec) -> tuple[Point, ...]:
    """Every point of ``spec``'s sweep as a spec of its own (without the sweep block); () when it has none."""
    sweep = spec.sweep
    if not sweep.enabled:
        return ()
    base = spec.to_data()
    del base["sweep"]
    combos: list[tuple[tuple[str, Scalar], ...]] = []
    if sweep.grid:
        keys = list(sweep.grid)
        combos += [tuple(zip(keys, values, strict=True)) for values in itertools.product(*sweep.grid.values())]
    combos += [tuple(point.items()) for point in sweep.points]
    room = NAME_MAX - len(f"-p{len(combos) - 1}")
    if len(spec.name) > room:
        raise SpecError("name", spec.name, f"at most {room} characters for a sweep of {len(combos)} points (each "
                        "point's job is named NAME-p<index>)")
    return tuple(_point(spec, base, index, values) for index, values in enumerate(combos))


def _point(spec: JobSpec, base: dict[str, Any], index: int, values: tuple[tuple[str, Scalar], ...]) -> Point:
    data = json.loads(json.dumps(base))  # a deep copy of plain data
    data["name"] = f"{base['name']}-p{index}"
    data["output_dir"] = f"{base['output_dir'].rstrip('/')}/p{index}"
    for key, value in values:
        if key.startswith("--"):
            data["entrypoint"]["args"] = set_option(data["entrypoint"]["args"], key, value)
        else:
            assign(data, key, value)
    label = " ".join(f"{key}={_text(value)}" for key, value in values)
    try:
        point = parse_spec(data)
    except SpecError as error:
        raise SpecError(f"sweep point {index} ({label}): {error.field}", error.value, error.expected) from None
    return Point(index, values, replace(point, spec_dir=spec.spec_dir, defaults_from=spec.defaults_from))


def set_option(args: Sequence[str], option: str, value: Scalar) -> list[str]:
    """``args`` with ``option`` given ``value``: its value replaced where it is (``--opt V`` or ``--opt=V``; a
    repeated option keeps its first place only), else added at the end; a boolean puts a flag in (true) or takes
    it out (false)."""
    out: list[str] = []
    placed = False
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg != option and not arg.startswith(option + "="):
            out.append(arg)
            continue
        if arg == option and not isinstance(value, bool) and index < len(args) and not args[index].startswith("--"):
            index += 1  # its value goes with it
        if not placed and not isinstance(value, bool):
            out += [option, _text(value)]
        placed = True
    if isinstance(value, bool):
        return out + [option] if value else out
    return out if placed else [*out, option, _text(value)]


def fingerprint(points: Sequence[Point], backend: str) -> str:
    """What makes two submissions the same sweep: the backend and every point's spec (a resubmit of an unchanged
    sweep finds its earlier points by it)."""
    text = json.dumps([backend, *(point.spec.to_data() for point in points)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def table(points: Sequence[Point]) -> list[dict[str, Any]]:
    """The points as ``sweep.json`` lists them."""
    return [{"index": point.index, "values": dict(point.values), "output_dir": point.spec.output_dir}
            for point in points]


def _text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
