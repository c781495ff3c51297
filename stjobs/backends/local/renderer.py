"""Rendering a local job: the node launch script and the resolved spec; several "nodes" meet at 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

from stjobs.backends.common import NODE_SCRIPT, launch_files, node_script, refuse_elastic, refuse_schemas, spec_file
from stjobs.launch import build_launch
from stjobs.plan import Plan
from stjobs.spec import JobSpec

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
