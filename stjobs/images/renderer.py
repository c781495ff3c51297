"""Container images for a job: a GPU and a CPU Dockerfile and an Apptainer definition, rendered from the spec.

``spec.image`` is the one name every backend uses (pyxis, Apptainer, the Kubernetes manifests); ``spec.build``
pins what goes into it. The files are meant for ``images/`` in the project, with the project root as the build
context, so the code copied into the image is the code the job runs. Rendering is pure: the one side effect,
building, is in build.py.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from typing import Any

from stjobs import __version__, gpus
from stjobs.errors import SpecError
from stjobs.plan import Plan, RenderedFile
from stjobs.spec import JobSpec
from stjobs.spec_image import CPU_BASE, IMAGE_WORKDIR, CodeMode, Variant
from stjobs.templating import docker_quote, render_file

CACHE_ROOT = "/cache"
HF_HOME = f"{CACHE_ROOT}/huggingface"  # a volume: model downloads survive the container and stay out of layers
VENV = "/opt/venv"
FILES_DIR = "images"  # where `stjobs image render` puts these files, relative to the build context
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"  # PyPI's Linux torch wheels are CUDA builds (GBs)
SOURCE_URL = "https://github.com/stjobs/stjobs"
BUILDERS = ("docker", "podman", "buildah")
# Kept out of the build context: caches, venvs, VCS data, outputs, and anything that smells of a secret.
DOCKERIGNORE = """\
# Rendered by stjobs: what never goes into the image's code layer.
.git
**/__pycache__
**/*.pyc
.venv
**/.venv*
.mypy_cache
.pytest_cache
.ruff_cache
outputs
.stjobs
dist
build
*.egg-info
.env
**/.env
**/*.pem
**/*.key
**/id_rsa*
**/.netrc
**/.aws
**/.kube
"""


def variant_of(spec: JobSpec) -> Variant:
    if spec.build.variant is not Variant.auto:
        return spec.build.variant
    return Variant.gpu if spec.gpus_per_node else Variant.cpu


def base_image(spec: JobSpec, variant: Variant) -> str:
    """The spec's base, or the one for the variant: for GPUs, the PyTorch image whose CUDA build has kernels for
    the spec's gpu_type (stjobs.gpus). An explicit base whose tag names a CUDA that cannot serve it is refused."""
    capability = gpus.capability_of(spec.gpu_type)
    if spec.build.base is None:
        base = (gpus.base_image(spec.build.torch, gpus.build_for(capability)) if variant is Variant.gpu
                else CPU_BASE)
    else:
        base = spec.build.base
        cuda = gpus.cuda_of_base(base) if variant is Variant.gpu else None
        build = gpus.build_of_cuda(cuda) if cuda else None
        if capability is not None and cuda is not None and (build is None or not build.serves(capability)):
            fit = gpus.build_for(capability)
            raise SpecError("build.base", base, f"a base with kernels for gpu_type {spec.gpu_type} "
                            f"({gpus.describe(capability)}), which CUDA {cuda} builds of torch lack: e.g. "
                            f"{gpus.base_image(spec.build.torch, fit)}, or leave build.base unset")
    return f"{base}@{spec.build.base_digest}" if spec.build.base_digest else base


def arch_check(spec: JobSpec) -> str:
    """A build step's Python that fails the image build when the installed torch has no kernels for the GPU.

    torch.cuda.get_arch_list() is empty without a visible GPU (an image build has none); the compiled-in arch
    flags it reads are there regardless."""
    capability = gpus.capability_of(spec.gpu_type)
    wanted = list(gpus.arch_flags_serving(capability)) if capability else []
    need = f"{spec.gpu_type} ({gpus.describe(capability)})" if capability else "a GPU"
    return ("import sys, torch; "
            "have = torch._C._cuda_getArchFlags().split() if torch.version.cuda else []; "
            f"want = {json.dumps(wanted)}; "
            "ok = bool(set(have) & set(want)) if want else bool(have); "
            'sys.exit(0 if ok else "stjobs: torch " + torch.__version__ + " has kernels for " + '
            f'(" ".join(have) or "no GPU at all") + ", none for {need}: choose a base whose CUDA build has them '
            '(README: GPUs)")')



def dockerfile_name(variant: Variant) -> str:
    return f"Dockerfile.{variant.value}"


def is_sif(image: str) -> bool:
    return image.endswith(".sif") or image.startswith("/")


def image_name(spec: JobSpec) -> str:
    """The registry name the image is built as and pushed to (what pyxis and Kubernetes pull)."""
    if spec.image is None:
        raise SpecError("image", None, "an image name to build: pass --image REF or set image: in the spec (e.g. "
                        "ghcr.io/org/train:1.0)")
    if is_sif(spec.image):
        raise SpecError("image", spec.image, "a registry image name to build (a .sif is built from apptainer.def)")
    return spec.image


def sif_path(spec: JobSpec) -> str:
    return spec.image if spec.image and is_sif(spec.image) else f"{spec.name}.sif"


def build_command(spec: JobSpec, variant: Variant, builder: str = "docker") -> list[str]:
    """The command that builds the image from the project root (also printed in the Dockerfile's header)."""
    name = dockerfile_name(variant)
    ignore = ([f"--ignorefile={FILES_DIR}/{name}.dockerignore"] if builder in ("podman", "buildah") else [])
    tag = spec.image if spec.image and not is_sif(spec.image) else f"{spec.name}:latest"
    return [builder, "build", "-f", f"{FILES_DIR}/{name}", *ignore, "-t", tag, "."]


def _labels(spec: JobSpec) -> list[tuple[str, str]]:
    return [("org.opencontainers.image.title", spec.name),
            ("org.opencontainers.image.source", SOURCE_URL),
            ("org.opencontainers.image.version", __version__),
            ("org.opencontainers.image.description", f"stjobs job {spec.name}"),
            ("org.opencontainers.image.base.name", base_image(spec, variant_of(spec)))]


def _context(spec: JobSpec, variant: Variant) -> dict[str, Any]:
    venv = variant is Variant.cpu  # the PyTorch base ships its own Python with torch; the slim one needs a venv
    # Run-time tuning (threads, tokenizers) comes from the launch plan's env, not from the image.
    env: dict[str, str] = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "PIP_NO_CACHE_DIR": "1",
                           "HF_HOME": HF_HOME}
    docker_env = [(key, docker_quote(value)) for key, value in env.items()]
    if venv:
        docker_env = [("VIRTUAL_ENV", docker_quote(VENV)), ("PATH", f'"{VENV}/bin:${{PATH}}"'), *docker_env]
    torch_note = ("the base image's own build" if variant is Variant.gpu
                  else "CPU wheels from the PyTorch index; PyPI's are CUDA builds")
    return {
        "name": spec.name, "variant": variant.value, "base_image": base_image(spec, variant),
        # A SIF is read-only: apptainer.def sets its own HF_HOME, on a bound path.
        "labels": _labels(spec), "env": sorted(item for item in env.items() if item[0] != "HF_HOME"),
        # One instruction, one line per item: Python lays these out so the template stays a plain shape.
        "label_block": " \\\n      ".join(f"{key}={docker_quote(value)}" for key, value in _labels(spec)),
        "env_block": " \\\n    ".join(f"{key}={value}" for key, value in docker_env),
        "apt_packages": list(spec.build.apt_packages), "venv": venv, "venv_dir": VENV, "torch": spec.build.torch,
        "torch_note": torch_note, "torch_index_url": CPU_TORCH_INDEX if variant is Variant.cpu else "",
        "files_dir": FILES_DIR, "workdir": IMAGE_WORKDIR, "hf_home": HF_HOME, "cache_root": CACHE_ROOT,
        "uid": spec.build.uid, "copy_code": spec.build.code is CodeMode.copy,
        "build_command": shlex.join(build_command(spec, variant)),
        "pip": f"{VENV}/bin/pip" if venv else "pip", "python": f"{VENV}/bin/python" if venv else "python",
        "sif": sif_path(spec), "arch_check": arch_check(spec) if variant is Variant.gpu else "",
    }


def image_files(spec: JobSpec) -> list[RenderedFile]:
    """Both Dockerfiles (the spec's variant is the one `stjobs image build` uses), their ignore files, the
    Apptainer definition (from the spec's variant), and the pinned requirements and constraints."""
    files = []
    for variant in (Variant.gpu, Variant.cpu):
        name = dockerfile_name(variant)
        files.append(render_file(name, "Dockerfile.j2", spec, **_context(spec, variant)))
        files.append(RenderedFile(f"{name}.dockerignore", DOCKERIGNORE))
    files.append(render_file("apptainer.def", "apptainer.def.j2", spec, **_context(spec, variant_of(spec))))
    header = "# Rendered by stjobs from the job spec (build.packages): exact pins only.\n"
    files.append(RenderedFile("requirements.txt", header + "".join(f"{pin}\n" for pin in spec.build.packages)))
    files.append(RenderedFile("constraints.txt", f"# Rendered by stjobs (build.torch): never another torch.\n"
                                                 f"torch=={spec.build.torch}\n"))
    return files


def render(spec: JobSpec) -> Plan:
    """The image files as a plan of their own (``stjobs image render``)."""
    variant = variant_of(spec)
    command = tuple(build_command(spec, variant))
    notes = (f"variant: {variant.value} (base {base_image(spec, variant)}); render into ./{FILES_DIR} and build "
             "from the project root",)
    return Plan(backend="image", job_name=spec.name, files=tuple(image_files(spec)), command=command,
                launch=None, spec=spec, notes=notes)


def with_image_files(plan: Plan) -> Plan:
    """``plan`` plus the image's build files under images/ (for a backend that runs the job in the image)."""
    extra = tuple(dataclasses.replace(item, path=f"{FILES_DIR}/{item.path}") for item in image_files(plan.spec))
    note = f"image: build files in {FILES_DIR}/ (`{shlex.join(build_command(plan.spec, variant_of(plan.spec)))}`)"
    return dataclasses.replace(plan, files=plan.files + extra, notes=(*plan.notes, note))
