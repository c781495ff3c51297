"""Rendering a SLURM job: the batch script for plain ``sbatch``, and the mapping submitit gets too.

One srun task per node runs the shared node launch script (torchrun with ``--nproc-per-node`` = processes per
node): never one task per GPU plus torchrun, which makes every GPU visible to several agents. The rendezvous host
is resolved in the batch script, outside any container, from ``SLURM_JOB_NODELIST``; an empty answer fails the
job at once instead of falling back to localhost (each node would form a world of its own and hang).
"""

from __future__ import annotations

import math
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import replace
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
from stjobs.backends.slurm.jobfiles import EXIT_RECORD
from stjobs.backends.slurm.task import OUT_OF_REQUEUES_EXIT
from stjobs.errors import SpecError
from stjobs.launch import Arg, Ref, build_launch
from stjobs.plan import Plan, RenderedFile
from stjobs.spec import Container, GpuRequest, JobSpec
from stjobs.sweep import POINTS_DIR
from stjobs.templating import render_file

if TYPE_CHECKING:
    from stjobs.sweep import Point

NAME = "slurm"
SBATCH_FILE = "job.sbatch"
LAUNCH = Ref("${STJOBS_JOB_DIR}/" + NODE_SCRIPT)
SUBMIT_DIR = "${SLURM_SUBMIT_DIR}"
# The job's workdir as the batch script exports it (for container mounts): the spec file's, else the submit dir.
WORKDIR = "${STJOBS_WORKDIR}"
OUTPUT_PATTERN = "%x-%j.out"
ARRAY_OUTPUT_PATTERN = "%x-%A_%a.out"  # a job array's tasks: the array's id and the task's index
ARRAY_TASK_ID = "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"  # how sacct and squeue name a task


def sbatch_parameters(spec: JobSpec) -> dict[str, str | int | bool]:
    """The one mapping from spec to SLURM: the rendered ``#SBATCH`` lines and submitit both come from here.

    Keys are sbatch long options with '_' for '-' (submitit's spelling); True means a flag without value.
    """
    slurm = spec.slurm
    params: dict[str, str | int | bool] = {
        "job_name": spec.name,
        "nodes": spec.nodes,
        "ntasks_per_node": 1,  # one torchrun agent per node; it starts the per-GPU workers itself
        "cpus_per_task": spec.cpus_per_task,  # the agent's task holds the CPUs of all its workers
        "time": spec.time_min,
        "open_mode": "append",  # a requeued run adds to the same log instead of truncating it
    }
    params.update(gpu_parameters(spec))
    if spec.mem_gb is not None:
        params["mem"] = f"{int(spec.mem_gb)}G" if spec.mem_gb == int(spec.mem_gb) else \
            f"{math.ceil(spec.mem_gb * 1024)}M"
    for field in ("partition", "account", "qos", "constraint"):
        value = getattr(slurm, field)
        if value is not None:
            params[field] = value
    if spec.gpu_type and slurm.gpu_request is GpuRequest.constraint:
        # The type as a node feature, and-ed with the spec's own expression.
        params["constraint"] = f"({slurm.constraint})&{spec.gpu_type}" if slurm.constraint else spec.gpu_type
    if slurm.exclusive:
        params["exclusive"] = True
    if preemption_lead_s(spec):
        # B: the batch shell gets USR2 and forwards it (USR1 belongs to NCCL); then it requeues the job.
        params["signal"] = f"B:USR2@{slurm.signal_lead_s}"
        params["requeue"] = True
    elif not spec.entrypoint.resumable:
        # A site's JobRequeue default would otherwise restart a node-failed or preempted run from step 0.
        params["no_requeue"] = True
    return params


def preemption_lead_s(spec: JobSpec) -> int:
    """Seconds of warning before the limit, when the job can use them: only a resumable entrypoint saves on
    USR2 and is requeued (0: no signal, no requeue)."""
    return spec.slurm.signal_lead_s if spec.entrypoint.resumable else 0


def gpu_parameters(spec: JobSpec) -> dict[str, str | int]:
    """The GPU request in the site's form (``slurm.gpu_request``): typed when the spec names a gpu_type."""
    gpus, kind = spec.gpus_per_node, spec.gpu_type
    if not gpus:
        return {}
    request = spec.slurm.gpu_request
    if request is GpuRequest.gres:
        return {"gres": f"gpu:{kind}:{gpus}" if kind else f"gpu:{gpus}"}
    if request is GpuRequest.constraint or not kind:
        return {"gpus_per_node": gpus}
    return {"gpus_per_node": f"{kind}:{gpus}"}


def refuse_short_limit(spec: JobSpec) -> None:
    """A time limit at or under the preemption lead would send the checkpoint signal as every run starts, and
    the job would requeue itself until slurm.max_requeues ran out."""
    lead = preemption_lead_s(spec)
    if lead and spec.time_min * 60 <= lead:
        raise SpecError("time_min", spec.time_min, f"more than slurm.signal_lead_s ({lead} s = "
                        f"{lead / 60:g} min): SLURM warns that many seconds before the limit, so the job would be "
                        "told to checkpoint and requeue as soon as it starts (raise time_min, or lower "
                        "slurm.signal_lead_s; 0 turns the warning off)")


def sbatch_option(key: str, value: str | int | bool) -> str:
    flag = "--" + key.replace("_", "-")
    return flag if value is True else f"{flag}={value}"


def job_setup(spec: JobSpec) -> list[str]:
    """Shell lines run in the batch script before srun: job id, logs and the rendezvous. submitit runs the same
    lines (its ``setup``), so both paths meet at the same host and port."""
    lines = [
        'export STJOBS_JOB_ID="${SLURM_JOB_ID}"',
        'export STJOBS_LOG_DIR="${STJOBS_JOB_DIR}/logs/${SLURM_JOB_ID}"',
    ]
    if spec.slurm.container is not Container.none:
        workdir = spec.workdir_path
        lines.append(f"export STJOBS_WORKDIR={shlex.quote(workdir)}" if os.path.isabs(workdir)
                     else f'export STJOBS_WORKDIR="{SUBMIT_DIR}"')
    if spec.nodes == 1:
        return lines
    low, high = spec.rendezvous.port_range
    port = (str(spec.rendezvous.port) if spec.rendezvous.port is not None
            # Derived from the job id: two jobs sharing a node get different ports (no EADDRINUSE).
            else f"$(( {low} + SLURM_JOB_ID % {high - low + 1} ))")
    return lines + [
        'STJOBS_RDZV_HOST="$(scontrol show hostnames "${SLURM_JOB_NODELIST:-}" | head -n 1)"',
        'if [[ -z "${STJOBS_RDZV_HOST}" ]]; then',
        '  echo "stjobs: no first host in SLURM_JOB_NODELIST=\'${SLURM_JOB_NODELIST:-}\'; refusing to fall back to'
        ' localhost" >&2',
        "  exit 65",
        "fi",
        "export STJOBS_RDZV_HOST",
        f"export STJOBS_RDZV_PORT={port}",
        'export STJOBS_RDZV_ID="${SLURM_JOB_ID}"',
    ]


def srun_options(spec: JobSpec) -> list[Arg]:
    """srun's own flags: a dead node ends the step (--kill-on-bad-exit) and the others stop waiting after
    srun_wait_s (--wait) instead of hanging until the time limit."""
    slurm = spec.slurm
    options: list[Arg] = ["--kill-on-bad-exit=1", f"--wait={slurm.srun_wait_s}", "--ntasks-per-node=1",
                          # srun of SLURM 22.05-23.02 does not inherit the batch job's --cpus-per-task (srun(1)):
                          # without it each node's task may be bound to one CPU.
                          f"--cpus-per-task={spec.cpus_per_task}"]
    if slurm.mpi:
        options.append(f"--mpi={slurm.mpi}")  # only when asked: forcing pmix breaks sites without it
    if slurm.container is Container.pyxis:
        # A mount the spec repeats is mounted once, as Apptainer's binds below.
        mounts = ",".join(dict.fromkeys(["${STJOBS_JOB_DIR}:${STJOBS_JOB_DIR}", f"{WORKDIR}:{WORKDIR}",
                                         *slurm.container_mounts]))
        options += [f"--container-image={pyxis_image(spec.image or '')}", Ref(f"--container-mounts={mounts}"),
                    Ref(f"--container-workdir={WORKDIR}"), "--no-container-mount-home"]
    return options


def node_command(spec: JobSpec) -> list[Arg]:
    """What each srun task runs: the node launch script, inside Apptainer when asked."""
    if spec.slurm.container is not Container.apptainer:
        return ["bash", LAUNCH]
    # The SIF is read-only: bind what the job writes outside the job dir and the workdir (an absolute output_dir,
    # an HF_HOME the spec sets; the default HF_HOME is under $HOME, which Apptainer binds itself).
    written = [path for path in (spec.output_dir, spec.env.get("HF_HOME")) if path and path.startswith("/")]
    for field, path in (("output_dir", spec.output_dir), ("env.HF_HOME", spec.env.get("HF_HOME"))):
        if path in written and not re.fullmatch(r"[A-Za-z0-9._/@+-]+", path or ""):
            raise SpecError(field, path, "an absolute path of letters, digits and ._/@+- that Apptainer can bind "
                            "(or a path relative to the workdir, which is bound)")
    binds = ",".join(dict.fromkeys(["${STJOBS_JOB_DIR}", WORKDIR, *written, *spec.slurm.container_mounts]))
    image = spec.image or ""
    source = image if image.endswith(".sif") or image.startswith(("docker://", "oras://", "/")) \
        else f"docker://{image}"
    gpu = ["--nv"] if spec.gpus_per_node else []
    return ["apptainer", "exec", *gpu, "--bind", Ref(binds), "--pwd", Ref(WORKDIR), source, "bash", LAUNCH]


def pyxis_image(image: str) -> str:
    """pyxis/enroot name a registry with '#': ghcr.io/org/img:1 -> ghcr.io#org/img:1 (Docker Hub names stay)."""
    head, sep, rest = image.partition("/")
    if sep and ("." in head or ":" in head or head == "localhost") and "#" not in image:
        return f"{head}#{rest}"
    return image


def batch_file(spec: JobSpec, points: int = 0, max_running: int | None = None) -> RenderedFile:
    """The batch script; with ``points``, the job array of a sweep whose task N runs points/N/ (the tasks share
    this one script, so every point must ask SLURM for the same: :func:`render_sweep` checks)."""
    params = sbatch_parameters(spec)
    options = [sbatch_option(key, value) for key, value in params.items()]
    if points:
        limit = f"%{max_running}" if max_running else ""
        options.append(f"--array=0-{points - 1}{limit}")
    options.append(f"--output={ARRAY_OUTPUT_PATTERN if points else OUTPUT_PATTERN}")
    options += list(spec.slurm.extra_sbatch)  # the one escape hatch, last so it can override
    return render_file(
        SBATCH_FILE, "sbatch.sh.j2", spec, executable=True,
        name=spec.name, nodes=spec.nodes, procs_per_node=spec.procs_per_node, sbatch_file=SBATCH_FILE,
        sbatch_options=options, node_script=NODE_SCRIPT, job_setup=job_setup(spec),
        user_setup=spec.slurm.setup, signal_lead_s=preemption_lead_s(spec),
        max_requeues=spec.slurm.max_requeues, out_of_requeues_exit=OUT_OF_REQUEUES_EXIT,
        exit_record=EXIT_RECORD.format(job=ARRAY_TASK_ID if points else "${SLURM_JOB_ID}"),
        points_dir=POINTS_DIR if points else None,
        srun=["srun", *srun_options(spec), *node_command(spec)],
    )


def render_sweep(spec: JobSpec, points: Sequence[Point], k8s_schemas: Path | None = None) -> Plan:
    """A sweep as one job array: task N is point N, a whole multi-node job with its own rendezvous id and port
    (both from the task's own SLURM_JOB_ID), log, events and output_dir. A point has no batch file of its own:
    the array's is the tasks' one."""
    plans = [_render(point.spec, k8s_schemas, batch=False) for point in points]
    first = plans[0].spec
    allocation = _allocation(first)
    for point, plan in zip(points, plans, strict=True):
        differs = next((key for key, value in _allocation(plan.spec).items() if allocation.get(key) != value), None)
        if differs is not None:
            raise SpecError(f"sweep point {point.index} ({point.label})", differs, "the same SLURM request in every "
                            "point (a job array's tasks share one batch script): sweep training arguments and "
                            "values of the launch, or submit a sweep per allocation")
    notes = [f"one job array of {len(points)} task(s)"
             + (f", at most {spec.sweep.max_running} running at once" if spec.sweep.max_running else "")
             + f"; output: {ARRAY_OUTPUT_PATTERN} in the directory you submit from"]
    return sweep_plan(spec, points, plans, ("sbatch", SBATCH_FILE), files=[batch_file(replace(first, name=spec.name),
                                                                                     len(points),
                                                                                     spec.sweep.max_running)],
                      notes=notes)


def _allocation(spec: JobSpec) -> dict[str, object]:
    """Everything of a point that reaches the batch script rather than its own launch.sh."""
    params = {key: value for key, value in sbatch_parameters(spec).items() if key != "job_name"}  # NAME-p<index>
    return {**params, "slurm.extra_sbatch": spec.slurm.extra_sbatch,
            "slurm.setup": spec.slurm.setup, "srun": tuple(map(str, srun_options(spec))),
            "node command": tuple(map(str, node_command(spec))), "job setup": tuple(job_setup(spec))}


def render(spec: JobSpec, k8s_schemas: Path | None = None) -> Plan:
    return _render(spec, k8s_schemas, batch=True)


def _render(spec: JobSpec, k8s_schemas: Path | None, batch: bool) -> Plan:
    refuse_schemas(k8s_schemas, NAME)
    refuse_elastic(spec, NAME)
    refuse_short_limit(spec)
    launch = build_launch(spec)
    files = (*([batch_file(spec)] if batch else []), node_script(spec, launch), spec_file(spec),
             *launch_files(launch))
    notes = [f"output: {OUTPUT_PATTERN} in the directory you submit from"] if batch else []
    if spec.slurm.signal_lead_s and not spec.entrypoint.resumable:
        notes.append("preemption: not requeued (--no-requeue): the script is not marked resumable; add "
                     "stjobs.train.callbacks.PreemptionCallback and set entrypoint.resumable: true")
    if spec.secrets:
        notes.append(f"sbatch passes the submitting environment: export {', '.join(spec.secrets)} first")
    if spec.slurm.remote:
        notes.append(f"remote: stjobs submit copies the job's files and code to {spec.slurm.remote} (under "
                     "${STJOBS_HOME:-~/.stjobs}/jobs there) and runs plain sbatch there; the job starts in that copy")
    return Plan(backend=NAME, job_name=spec.name, files=files, command=("sbatch", SBATCH_FILE), launch=launch,
                spec=spec, notes=tuple(notes))


def uses_image(spec: JobSpec) -> bool:
    """A SLURM job runs in the spec's image when pyxis or Apptainer starts it (then its build files come along)."""
    return spec.image is not None and spec.slurm.container is not Container.none
