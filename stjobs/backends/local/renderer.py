"""Rendering a local job: the node launch script and the resolved spec; several "nodes" meet at 127.0.0.1."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from stjobs.backends.common import (
    NODE_SCRIPT,
    launch_files,
    node_script,
    refuse_elastic,
    refuse_schemas,
    spec_file,
    sweep_plan,
)
from stjobs.errors import SpecError
from stjobs.launch import build_launch
from stjobs.plan import Plan
from stjobs.spec import JobSpec

if TYPE_CHECKING:
    from stjobs.sweep import Point

NAME = "local"


def render(spec: JobSpec, k8s_schemas: Path | None = None) -> Plan:
    refuse_schemas(k8s_schemas, NAME)
    refuse_elastic(spec, NAME)
    launch = build_launch(spec)
    files = (node_script(spec, launch), spec_file(spec), *launch_files(launch))
    notes: list[str] = []
    if spec.nodes > 1:
        notes.append(f"{spec.nodes} torchrun agents on this machine meet at 127.0.0.1; `stjobs submit` sets "
                     "STJOBS_RDZV_HOST, STJOBS_RDZV_PORT, STJOBS_RDZV_ID (and STJOBS_NODE_RANK) for each")
    if spec.gpus_per_node:
        # Said here, decided at submit: rendering never looks at this machine's GPUs (backends.local.gpus).
        notes.append(f"each node sees exactly {spec.gpus_per_node} GPU(s): `stjobs submit` sets CUDA_VISIBLE_DEVICES "
                     "to its own slice of the submitting shell's CUDA_VISIBLE_DEVICES (else of the GPUs "
                     "nvidia-smi -L lists), and refuses a job this machine cannot give them to")
    return Plan(backend=NAME, job_name=spec.name, files=files, command=("bash", NODE_SCRIPT), launch=launch,
                spec=spec, notes=tuple(notes))


def uses_image(spec: JobSpec) -> bool:
    """A local job runs on this machine's Python, never in an image."""
    return False


def render_sweep(spec: JobSpec, points: Sequence[Point], k8s_schemas: Path | None = None) -> Plan:
    """A sweep on this machine: the points' jobs, run one after another (or sweep.max_running at once)."""
    plans = [render(point.spec, k8s_schemas) for point in points]
    at_once = spec.sweep.max_running or 1
    if at_once > 1 and spec.gpus_per_node:
        raise SpecError("sweep.max_running", at_once, "1 for a local sweep of GPU jobs (its points run one after "
                        "another, each on the GPUs this machine gives a job)")
    return sweep_plan(spec, points, plans, ("bash", "points/<index>/" + NODE_SCRIPT),
                      notes=[f"`stjobs submit` runs {at_once} point(s) at a time, each as soon as the one "
                             f"{at_once} before it has ended"])
