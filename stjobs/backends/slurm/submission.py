"""Submitting a rendered SLURM plan: plain ``sbatch`` of the rendered file, or submitit with the same mapping.

The only SLURM code with side effects. submitit is imported here, inside the function that needs it, and an
executor can be passed in (tests pass a real one with a chosen folder; nothing is faked).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stjobs.after import DEFAULT_IF_FAILS, After, slurm_dependency
from stjobs.backends import common
from stjobs.backends.slurm import renderer as slurm
from stjobs.errors import SubmitError, UsageError
from stjobs.jobs import JobRecord, jobs_root, new_job_id
from stjobs.launch import Arg, Ref
from stjobs.plan import Plan, write_plan
from stjobs.snapshot import CODE_DIR, copy_snapshot, plan_snapshot, snapshot_details
from stjobs.spec import Container, JobSpec

if TYPE_CHECKING:
    from stjobs.sweep_jobs import Sweeping


def check(plan: Plan, sbatch: bool = False, cwd: str | Path | None = None, executor: Any = None) -> None:
    """Before anything is written: the job takes this environment (sbatch --export=ALL), and a site's batch
    template only reaches SLURM through plain sbatch (submitit writes a batch script of its own)."""
    common.check_secrets(plan.spec)
    node_python(plan.points[0] if plan.points else plan, cwd)  # a sweep's first point stands for its points
    plan_snapshot(plan.spec, Path(cwd or os.getcwd()) / plan.spec.workdir_path)
    site = plan.file(slurm.SBATCH_FILE).site_template
    if site is not None and not sbatch and not plan.points:  # a sweep is its job array, always through sbatch
        raise UsageError(f"--sbatch: got a site batch template ({site}) without --sbatch; expected --sbatch "
                         "(submitit writes its own batch script, so the site's would be ignored)")


def node_python(plan: Plan, cwd: str | Path | None = None) -> str | None:
    """The interpreter the nodes run, checked on this login node (whose files the nodes share), or None when a
    container brings its own."""
    spec = plan.spec
    if spec.slurm.container is not Container.none:
        return None
    workdir = common.check_workdir(spec, cwd, "on the cluster's shared file system")
    return common.check_python(spec, plan.launch.python_modules if plan.launch else (), workdir)


def submit(plan: Plan, sbatch: bool = False, cwd: str | Path | None = None, executor: Any = None,
           after: Sequence[After] = (), if_dependency_fails: str = DEFAULT_IF_FAILS) -> JobRecord:
    """Write the plan into a new job directory and submit it; on any refusal nothing is left behind. ``after``:
    jobs SLURM holds this one for (--dependency), cancelling it or keeping it pending when one ends the wrong
    way (--kill-on-invalid-dep) as ``if_dependency_fails`` says."""
    waits = _dependency_options(after, if_dependency_fails)
    job_id = new_job_id(plan.job_name)
    job_dir = jobs_root() / job_id
    write_plan(plan, job_dir)
    workdir = Path(cwd or os.getcwd()).resolve()
    try:
        python = node_python(plan, cwd)
        snapshot = plan_snapshot(plan.spec, workdir / plan.spec.workdir_path)
        if snapshot is not None:
            copy_snapshot(snapshot, job_dir)
        if sbatch:
            slurm_id, details = _submit_sbatch(job_dir, workdir, python, waits)
        else:
            slurm_id, details = _submit_submitit(plan, job_dir, workdir, executor, python, waits)
    except BaseException:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise
    record = JobRecord(job_id=job_id, backend=slurm.NAME, name=plan.job_name, job_dir=str(job_dir),
                       submitted_at=time.time(), nodes=plan.spec.nodes, procs_per_node=plan.spec.procs_per_node,
                       details={"slurm_job_id": slurm_id, "cwd": str(workdir),
                                "max_requeues": plan.spec.slurm.max_requeues,
                                "snapshot": snapshot_details(snapshot), **details})
    if after:
        record.details.update(after=[item.to_json() for item in after], if_dependency_fails=if_dependency_fails)
    record.save()
    return record


def submit_sweep(plan: Plan, sweeping: Sweeping, sbatch: bool = False, cwd: str | Path | None = None,
                 executor: Any = None, after: Sequence[After] = (),
                 if_dependency_fails: str = DEFAULT_IF_FAILS) -> list[JobRecord]:
    """A sweep as the rendered job array, through sbatch (``sbatch``/``executor`` are for single jobs: the array
    is the batch file itself): task N runs point N; only ``sweeping.indices`` are submitted (``--array`` on the
    command line overrides the file's). One code copy serves every point."""
    job_dir, spec = sweeping.sweep_dir, plan.spec
    workdir = Path(cwd or os.getcwd()).resolve()
    python = node_python(plan.points[0], cwd)
    snapshot = plan_snapshot(spec, workdir / spec.workdir_path)
    if snapshot is not None:
        copy_snapshot(snapshot, job_dir)
    for index in sweeping.indices:
        write_plan(plan.points[index], sweeping.point_dir(index))
        if snapshot is not None:  # the launch script looks for the copy beside itself
            (sweeping.point_dir(index) / CODE_DIR).symlink_to(Path("..", "..", CODE_DIR))
    limit = f"%{spec.sweep.max_running}" if spec.sweep.max_running else ""
    waits = {"array": ",".join(map(str, sweeping.indices)) + limit, **_dependency_options(after, if_dependency_fails)}
    array_id, _ = _submit_sbatch(job_dir, workdir, python, waits, output=job_dir / "slurm-%A_%a.out")
    records = []
    for index in sweeping.indices:
        point = plan.points[index].spec
        task = f"{array_id}_{index}"
        record = JobRecord(job_id=sweeping.point_id(index), backend=slurm.NAME, name=point.name,
                           job_dir=str(sweeping.point_dir(index)), submitted_at=time.time(), nodes=point.nodes,
                           procs_per_node=point.procs_per_node,
                           details={"slurm_job_id": task, "cwd": str(workdir), "max_requeues": point.slurm.max_requeues,
                                    "snapshot": snapshot_details(snapshot), "mode": "sbatch",
                                    "output": str(job_dir / f"slurm-{task}.out"), "sweep_of": sweeping.sweep_id})
        record.save()
        records.append(record)
    return records


def _dependency_options(after: Sequence[After], if_fails: str) -> dict[str, str]:
    """sbatch's options for ``after`` (also submitit's additional parameters, without the dashes). The kill
    option is always given: the site's default (SchedulerParameters=kill_invalid_depend) is not the user's."""
    if not after:
        return {}
    return {"dependency": slurm_dependency(after), "kill-on-invalid-dep": "yes" if if_fails == "cancel" else "no"}


def _submit_sbatch(job_dir: Path, workdir: Path, python: str | None, waits: dict[str, str],
                   output: Path | None = None) -> tuple[str, dict[str, object]]:
    output = output or job_dir / "slurm-%j.out"
    argv = ["sbatch", "--parsable", f"--output={output}", *(f"--{key}={value}" for key, value in waits.items()),
            # ALL keeps the submitting environment (secrets); the job dir is told outright.
            f"--export=ALL,STJOBS_JOB_DIR={job_dir}", str(job_dir / slurm.SBATCH_FILE)]
    # The interpreter through the environment --export=ALL carries (a path may hold a comma, which --export
    # would split); a container's own python is left alone.
    env = {key: value for key, value in os.environ.items() if key != "STJOBS_PYTHON"}
    if python is not None:
        env["STJOBS_PYTHON"] = python
    done = _run(argv, workdir, env)
    slurm_id = done.stdout.strip().split(";")[0]
    if not slurm_id.isdigit():
        raise SubmitError(f"slurm: sbatch printed no job id ({done.stdout.strip()!r})")
    return slurm_id, {"mode": "sbatch", "output": str(output).replace("%j", slurm_id)}


def _submit_submitit(plan: Plan, job_dir: Path, workdir: Path, executor: Any, python: str | None,
                     waits: dict[str, str]) -> tuple[str, dict[str, object]]:
    from stjobs.backends.slurm.task import NodeTask

    spec = plan.spec
    if executor is None:
        import submitit

        executor = submitit.SlurmExecutor(folder=str(job_dir / "submitit"))
    values = {"STJOBS_JOB_DIR": str(job_dir), "SLURM_SUBMIT_DIR": str(workdir),
              "STJOBS_WORKDIR": str(workdir / spec.workdir_path)}
    params = submitit_parameters(spec, values)
    params["additional_parameters"].update({key.replace("-", "_"): value for key, value in waits.items()})
    if python is not None:
        params["setup"] = [f"export STJOBS_PYTHON={shlex.quote(python)}", *params["setup"]]
    else:
        params["setup"] = ["unset STJOBS_PYTHON", *params["setup"]]
    executor.update_parameters(**params)
    command = [_word(arg, values) for arg in slurm.node_command(spec)]
    task = NodeTask(command=command, cwd=str(workdir), max_requeues=spec.slurm.max_requeues)
    with _captured_stderr() as captured:
        try:
            job = executor.submit(task)
        except Exception as error:  # submitit wraps sbatch's refusal in its own error types
            raise SubmitError(f"slurm: {slurm_reason(captured() + str(error))}") from None
    folder = Path(str(executor.folder))
    return str(job.job_id), {"mode": "submitit", "output": str(folder / f"{job.job_id}_0_log.out"),
                             "folder": str(folder)}


def submitit_parameters(spec: JobSpec, values: dict[str, str]) -> dict[str, Any]:
    """submitit's parameters from the same mapping as the rendered #SBATCH lines (``values``: the job
    directory and submit directory, known here and not at render time)."""
    params = dict(slurm.sbatch_parameters(spec))
    # Under submitit the batch script is submitit's and traps nothing, so USR2 goes to the tasks (no 'B:'),
    # where NodeTask forwards it to torchrun and requeues.
    if "signal" in params:
        params["signal"] = str(params["signal"]).removeprefix("B:")
    for extra in spec.slurm.extra_sbatch:
        key, _, value = extra[2:].partition("=")
        params[key.replace("-", "_")] = value if value else True
    return {
        "additional_parameters": params,  # submitit lets these override its own defaults, key by key
        "setup": [f"export STJOBS_JOB_DIR={shlex.quote(values['STJOBS_JOB_DIR'])}", *slurm.job_setup(spec),
                  *spec.slurm.setup],
        "srun_args": [_word(arg, values) for arg in slurm.srun_options(spec)],
        "stderr_to_stdout": True,
    }


@contextlib.contextmanager
def _captured_stderr() -> Iterator[Callable[[], str]]:
    """submitit runs sbatch with our stderr: catch its lines so a refusal is reported once, as one line."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: (sink.seek(0), sink.read().decode(errors="replace"))[1]
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _word(arg: Arg, values: dict[str, str]) -> str:
    # submitit shell-quotes srun_args and the task runs without a shell: resolve run-time refs here.
    return arg.resolve(values) if isinstance(arg, Ref) else arg


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=120, env=env)
    except FileNotFoundError:
        raise SubmitError(f"slurm: {argv[0]} not found; run this on a SLURM login node") from None
    except subprocess.TimeoutExpired:
        raise SubmitError(f"slurm: {argv[0]} did not answer in 120 s; is slurmctld reachable?") from None
    if done.returncode != 0:
        raise SubmitError(f"slurm: {slurm_reason(done.stderr or done.stdout)}")
    return done


def slurm_reason(text: str) -> str:
    """SLURM's own words, one line: the last 'error:' line says why (e.g. 'Invalid partition name specified')."""
    errors = [line.split("error:", 1)[1].strip() for line in text.splitlines() if "error:" in line]
    if errors:
        reason = errors[-1]
        return re.sub(r"^Batch job submission failed:\s*", "submission refused: ", reason)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "sbatch failed without a message"
