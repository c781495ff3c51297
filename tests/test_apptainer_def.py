"""Apptainer: a SIF is read-only, so the definition points HF_HOME at a bound, writable path, and the SLURM job
binds what the job writes."""

from __future__ import annotations

from typing import Any

import pytest

import stjobs
from stjobs.errors import SpecError
from stjobs.images.renderer import image_files
from tests.conftest import EXAMPLES

HF_HOME_LINE = 'export HF_HOME="${HF_HOME:-${HOME}/.cache/huggingface}"'


def definition(name: str, overrides: list[tuple[str, Any]]) -> str:
    spec = stjobs.load_spec(EXAMPLES / f"{name}.yaml", overrides)
    return next(item.content for item in image_files(spec) if item.path == "apptainer.def")


# spec values -> the definition's HF_HOME line and the directories %post makes in the image
@pytest.mark.parametrize("name,overrides", [
    ("apptainer", []),  # GPU
    ("apptainer", [("gpus_per_node", 0), ("procs_per_node", 2)]),  # CPU: a venv
    ("k8s-pytorchjob", []),
    ("apptainer", [("env", {"HF_HOME": "/scratch/hf"})]),  # the spec's env wins at run time (launch.sh exports it)
])
def test_hf_home_is_on_a_bound_writable_path(name: str, overrides: list[tuple[str, Any]]) -> None:
    text = definition(name, overrides)
    environment = text.split("%environment", 1)[1].split("%post", 1)[0]
    assert [line.strip() for line in environment.splitlines() if "HF_HOME" in line and "export" in line] == \
        [HF_HOME_LINE]
    post = text.split("%post", 1)[1].split("%runscript", 1)[0]
    assert "/cache" not in post, "nothing can write into the read-only image at run time"
    assert "mkdir -p /workspace" in post


def test_the_docker_image_keeps_its_cache_volume() -> None:
    spec = stjobs.load_spec(EXAMPLES / "apptainer.yaml")
    dockerfile = next(item.content for item in image_files(spec) if item.path == "Dockerfile.gpu")
    assert 'HF_HOME="/cache/huggingface"' in dockerfile and "VOLUME /cache/huggingface" in dockerfile


# spec values -> what the SLURM job binds: the job dir and the workdir (where a relative output_dir lands), always
@pytest.mark.parametrize("mounts,sets,binds", [
    ([], [], "${STJOBS_JOB_DIR},${STJOBS_WORKDIR}"),  # a relative output_dir is under the bound workdir
    (["/scratch/data:/data"], [], "${STJOBS_JOB_DIR},${STJOBS_WORKDIR},/scratch/data:/data"),
    ([], ["output_dir=/scratch/runs/a"], "${STJOBS_JOB_DIR},${STJOBS_WORKDIR},/scratch/runs/a"),
    ([], ["env.HF_HOME=/scratch/hf"], "${STJOBS_JOB_DIR},${STJOBS_WORKDIR},/scratch/hf"),
    ([], ["env.HF_HOME=hf-cache"], "${STJOBS_JOB_DIR},${STJOBS_WORKDIR}"),  # relative: under the workdir
    (["/scratch/hf:/scratch/hf"], ["env.HF_HOME=/scratch/hf"],
     "${STJOBS_JOB_DIR},${STJOBS_WORKDIR},/scratch/hf,/scratch/hf:/scratch/hf"),  # binding it twice is harmless
])
def test_the_slurm_job_binds_what_the_job_writes(mounts: list[str], sets: list[str], binds: str) -> None:
    spec = stjobs.load_spec(EXAMPLES / "apptainer.yaml", [], [f"slurm.container_mounts={mounts}", *sets])
    plan = stjobs.render(spec, "slurm")
    sbatch = next(item.content for item in plan.files if item.path == "job.sbatch")
    assert f'--bind "{binds}"' in sbatch


def test_an_absolute_path_apptainer_cannot_bind_is_refused_in_one_line() -> None:
    spec = stjobs.load_spec(EXAMPLES / "apptainer.yaml", [], ['output_dir=/x/$(id)"`q`'])
    with pytest.raises(SpecError) as caught:
        stjobs.render(spec, "slurm")
    assert str(caught.value).startswith("output_dir: got '/x/$(id)\"`q`'; expected an absolute path of letters")
