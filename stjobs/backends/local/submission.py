"""Submitting a local job: a new job directory and its supervisor, started in a session of its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from stjobs.after import DEFAULT_IF_FAILS, After
from stjobs.backends.common import check_secrets
from stjobs.backends.local.checks import check_local
from stjobs.backends.local.gpus import job_gpus
from stjobs.backends.local.jobdir import PID_FILE, SUPERVISOR_LOG, free_port, private_file
from stjobs.backends.local.renderer import NAME
from stjobs.jobs import JobRecord, new_job
from stjobs.plan import Plan, write_plan
from stjobs.snapshot import copy_snapshot, plan_snapshot, snapshot_details

if TYPE_CHECKING:
    from stjobs.sweep_jobs import Sweeping

SUPERVISOR = "stjobs.backends.local.supervisor"


def check(plan: Plan, cwd: str | Path | None = None) -> None:
    """What must hold on this machine before anything is written: the job takes this environment and runs here.
    A sweep's first point stands for its points."""
    plan = plan.points[0] if plan.points else plan
    check_secrets(plan.spec)
    check_local(plan.spec, plan.launch.python_modules if plan.launch else (), cwd)
    job_gpus(plan.spec)  # refuses a job that asks for more GPUs than this machine (or this shell) has
    plan_snapshot(plan.spec, Path(cwd or os.getcwd()) / plan.spec.workdir_path)


def submit(plan: Plan, cwd: str | Path | None = None, after: Sequence[After] = (),
           if_dependency_fails: str = DEFAULT_IF_FAILS, into: tuple[str, Path] | None = None) -> JobRecord:
    """Write the plan into a new job directory and start its supervisor in a session of its own; with ``after``,
    the supervisor starts the nodes once those jobs have ended as asked (:mod:`stjobs.after`). ``into``: the job
    id and directory to use (a sweep's point) instead of new ones."""
    spec = plan.spec
    gpus = job_gpus(spec)  # before anything is written: a job that cannot get its GPUs leaves nothing behind
    job_id, job_dir = new_job(plan.job_name, into)
    write_plan(plan, job_dir, dir_mode=0o700)  # the job's scripts and logs are the owner's alone
    workdir = Path(cwd or os.getcwd()).resolve()
    try:
        snapshot = plan_snapshot(spec, workdir / spec.workdir_path)
        if snapshot is not None:
            copy_snapshot(snapshot, job_dir)
    except BaseException:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise
    details: dict[str, object] = {
        "cwd": str(workdir),
        "snapshot": snapshot_details(snapshot),
        "python": spec.python or sys.executable,
        "cuda_visible_devices": gpus,  # per node; the supervisor sets it in each node's environment
    }
    if after:
        details.update(after=[item.to_json() for item in after], if_dependency_fails=if_dependency_fails)
    if spec.nodes > 1:
        details["rdzv_port"] = spec.rendezvous.port or free_port(spec.rendezvous.port_range, job_id)
        if after and not spec.rendezvous.port:  # free now, maybe not when the wait ends: picked again then
            details["rdzv_port_range"] = list(spec.rendezvous.port_range)
    record = JobRecord(job_id=job_id, backend=NAME, name=spec.name, job_dir=str(job_dir),
                       submitted_at=time.time(), nodes=spec.nodes, procs_per_node=spec.procs_per_node,
                       details=details)
    record.save()
    with os.fdopen(private_file(job_dir / SUPERVISOR_LOG), "ab") as log:
        # A new session: the job outlives this command and a Ctrl-C in the user's terminal.
        process = subprocess.Popen(
            [sys.executable, "-m", SUPERVISOR, str(job_dir)],
            cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    with os.fdopen(private_file(job_dir / PID_FILE), "w", encoding="utf-8", newline="\n") as pid_file:
        pid_file.write(f"{process.pid}\n")
    return record


def submit_sweep(plan: Plan, sweeping: Sweeping, cwd: str | Path | None = None, after: Sequence[After] = (),
                 if_dependency_fails: str = DEFAULT_IF_FAILS) -> list[JobRecord]:
    """A sweep's points as local jobs, sweep.max_running at a time (default one): each point waits for the one
    that many places before it to end, however it ends, so a failed point does not stop the others."""
    at_once = plan.spec.sweep.max_running or 1
    records: list[JobRecord] = []
    for count, index in enumerate(sweeping.indices):
        before = records[count - at_once] if count >= at_once else None
        chain = [After("any", before.job_id, before.job_dir)] if before is not None else []
        records.append(submit(plan.points[index], cwd, [*after, *chain], if_dependency_fails,
                              into=(sweeping.point_id(index), sweeping.point_dir(index))))
    return records
