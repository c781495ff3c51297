"""What the backends share, below all of them: the node launch script and the resolved spec every backend
renders the same way, and the refusals and checks several of them make."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from stjobs import yamlio
from stjobs.errors import SpecError, UsageError
from stjobs.launch import RUNTIME_VARS, LaunchPlan
from stjobs.plan import Plan, RenderedFile
from stjobs.snapshot import CODE_DIR
from stjobs.spec import JobSpec

if TYPE_CHECKING:
    from stjobs.sweep import Point

NODE_SCRIPT = "launch.sh"
SPEC_FILE = "stjobs.yaml"


def node_script(spec: JobSpec, launch: LaunchPlan, workdir: str | None = None) -> RenderedFile:
    """``workdir``: where the node starts, as this backend's machines see it (default: the spec's, as written)."""
    from stjobs.templating import render_file  # Jinja only where a template is rendered (not for k8s)

    return render_file(
        NODE_SCRIPT, "node_launch.sh.j2", spec, executable=True,
        name=spec.name,
        required=launch.required_vars,
        descriptions=RUNTIME_VARS,
        secrets=launch.secrets,
        env=launch.env,
        workdir=cd_target(workdir if workdir is not None else spec.workdir_path),
        python=spec.python,
        snapshot=spec.snapshot.enabled,
        code_dir=CODE_DIR,
        python_modules=launch.python_modules,
        argv=launch.argv,
    )


def cd_target(workdir: str) -> str:
    """The word the node script passes to ``cd`` for ``workdir``.

    A relative path goes out as ``./path``: bash's ``cd`` takes a leading '-' for an option (and a bare '-' for
    $OLDPWD), and looks a plain relative name up in $CDPATH first, which sbatch and the local supervisor pass on
    from the submitting shell. Paths that start with '/', '.' or '..' as a component are left as written.
    """
    if workdir in (".", "..") or workdir.startswith(("/", "./", "../")):
        return workdir
    return "./" + workdir


def spec_file(spec: JobSpec) -> RenderedFile:
    """The spec as validated, defaults filled in: what actually ran, next to what ran it."""
    data = spec.to_data()
    header = "# The job spec as stjobs validated it (defaults filled in). Secret names only, never values.\n"
    # One top-level entry at a time: a block-style mapping is its entries one after another, and the points of a
    # sweep share most of theirs (slurm, k8s, build, ...), which PyYAML then writes once instead of once a point.
    import json

    parts = [_entry(key, json.dumps(value)) for key, value in data.items()]
    # An entry that ends open (a block scalar keeping its trailing newlines) makes PyYAML close the document
    # ("..."), after which nothing may follow: such a spec is written in one piece.
    body = yamlio.dump(data) if any(part.endswith("\n...\n") for part in parts[:-1]) else "".join(parts)
    return RenderedFile(SPEC_FILE, header + body)


@functools.lru_cache(maxsize=1024)
def _entry(key: str, value: str) -> str:
    import json

    return yamlio.dump({key: json.loads(value)})


def sweep_plan(spec: JobSpec, points: Sequence[Point], plans: Sequence[Plan], command: tuple[str, ...],
               files: Sequence[RenderedFile] = (), notes: Sequence[str] = ()) -> Plan:
    """A sweep's plan on any backend: the sweep's spec and points table, each point's files under points/<index>/,
    and the backend's own ``files`` (a SLURM job array's batch file)."""
    import json

    from stjobs.sweep import SWEEP_FILE, table

    listed = json.dumps({"name": spec.name, "points": table(points)}, indent=2, sort_keys=True) + "\n"
    out = [*files, spec_file(spec), RenderedFile(SWEEP_FILE, listed)]
    for point, plan in zip(points, plans, strict=True):
        out += [replace(item, path=f"{point.directory}/{item.path}") for item in plan.files]
    said = [f"sweep: {len(points)} point(s), each a job of its own with its own output_dir "
            f"({plans[0].spec.output_dir} for point 0); the points and their values are in {SWEEP_FILE}",
            *notes, *plans[0].notes]
    return Plan(backend=plans[0].backend, job_name=spec.name, files=tuple(out), command=command, launch=None,
                spec=spec, notes=tuple(said), points=tuple(plans))


def launch_files(launch: LaunchPlan) -> list[RenderedFile]:
    return [RenderedFile(path, content) for path, content in launch.files]


def refuse_elastic(spec: JobSpec, backend: str) -> None:
    """Elastic training needs a scheduler that adds and removes nodes (Kubeflow's PyTorchJob does)."""
    if spec.elastic:
        raise SpecError("nodes", f"{spec.min_nodes}:{spec.nodes}", f"a fixed node count on the {backend} backend "
                        "(elastic 'MIN:MAX' runs as a k8s PyTorchJob)")


def refuse_schemas(k8s_schemas: Path | None, backend: str) -> None:
    """Only Kubernetes manifests are checked against CRD schemas; asking for it elsewhere is a mistake."""
    if k8s_schemas is not None:
        raise UsageError(f"k8s_schemas: only the k8s backend uses CRD schemas, not {backend}")


def check_secrets(spec: JobSpec) -> None:
    """Each secret the spec names is in this environment, for backends that hand the job this environment
    (local, and SLURM's sbatch --export=ALL). Only names are looked at and shown, never values; an empty
    value counts as set, as in the node script's own check (``${NAME+x}``)."""
    for index, name in enumerate(spec.secrets):
        if name not in os.environ:
            raise SpecError(f"secrets[{index}]", name, f"a variable set where you submit (export {name}=... "
                            "first; the job takes its value from this environment, never from a file)")


def check_workdir(spec: JobSpec, cwd: str | Path | None, where: str) -> Path:
    """The job's workdir (taken from ``cwd`` when relative) and its entrypoint script exist here; the workdir.
    ``where`` says why this machine's files are the job's (e.g. "on the cluster's shared file system")."""
    workdir = Path(cwd or os.getcwd()).resolve() / spec.workdir_path  # an absolute workdir replaces the base
    if not workdir.is_dir():
        raise SpecError("workdir", spec.workdir, f"an existing directory {where} ({workdir} is not one here)")
    script = spec.entrypoint.script
    if script is not None and not (workdir / script).is_file():
        raise SpecError("entrypoint.script", script, f"a file that exists: the job runs it from its workdir, and "
                        f"{workdir / script} is not a file")
    check_data(spec, workdir, where)
    return workdir


def check_data(spec: JobSpec, workdir: Path, where: str) -> None:
    """The built-in training's --train-data / --eval-data files exist here, when this machine sees the job's files:
    a typo otherwise fails only in the job, seconds after it starts, under every rank's traceback. A hub dataset
    name is not checked; neither is an absolute path whose directory this machine does not have (it may exist only
    on the compute nodes)."""
    from stjobs.train.args import data_paths

    if spec.entrypoint.module != "stjobs.train":
        return
    for option, source in data_paths(spec.entrypoint.args):
        raw = Path(source.path).expanduser()
        path = workdir / raw  # an absolute path replaces the workdir
        if path.exists() or (raw.is_absolute() and not path.parent.is_dir()):
            continue
        raise SpecError("entrypoint.args", f"{option} {source.text}",
                        f"a data file or saved dataset that exists {where} ({path} does not; relative paths "
                        "start at the workdir)")


# Finds top-level packages without importing them: cheap enough to run before every submit.
FIND_MODULES = ("import importlib.util as u, sys; m = [n for n in sys.argv[1:] if u.find_spec(n) is None]; "
                 "print(*m); sys.exit(1 if m else 0)")


def check_python(spec: JobSpec, modules: tuple[str, ...], workdir: Path) -> str:
    """The interpreter the job's nodes will run (the spec's ``python``, else this one) exists here and finds
    what the launch imports; the path to hand the job. For backends whose nodes see this machine's files (local,
    SLURM without a container): a missing torch then stops the submit instead of failing every rank."""
    import shutil
    import subprocess
    import sys

    python = spec.python or sys.executable
    # The node script runs it after `cd workdir`: a relative path is taken from there.
    found = str(workdir / python) if os.sep in python else shutil.which(python)
    if found is None or not (os.path.isfile(found) and os.access(found, os.X_OK)):
        raise SpecError("python", python, "an executable Python interpreter on this machine (a path, or a name "
                        "found on PATH); the job's nodes run it")
    try:
        done = subprocess.run([found, "-c", FIND_MODULES, *modules], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SpecError("python", python, f"a Python interpreter that starts ({error})") from None
    if done.returncode != 0:
        missing = done.stdout.strip() or (done.stderr.strip().splitlines() or ["?"])[-1]
        where = "this interpreter" if spec.python is None else "it"
        raise SpecError("python", python, f"an interpreter that can import {', '.join(modules)} ({where} cannot "
                        f"import {missing}: install stjobs[train] into it, or name another in the spec's python:)")
    return found if os.sep in python else python  # a bare name is looked up on each node's PATH
