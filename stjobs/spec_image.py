"""The ``build:`` block of the job spec: how the job's container image is built (``spec.image`` names it).

Every version the image installs is pinned here, so the same spec always renders the same Dockerfiles and the
image matches what the job was tested with. The defaults are the versions stjobs itself is tested against.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from stjobs import __version__
from stjobs.errors import SpecError
from stjobs.fields import Choice, Integer, Nullable, Text, Words, spec_field

IMAGE_REF = r"[a-z0-9][a-z0-9._/:-]*"
DIGEST = r"sha256:[0-9a-f]{64}"
# One exact pin per line: name, optional [extras], '==', a version. Ranges would make two builds differ.
PINNED = r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[A-Za-z0-9.+!_-]+"
APT_PACKAGE = r"[a-z0-9][a-z0-9.+-]*(=[A-Za-z0-9.+:~_-]+)?"
TORCH_VERSION = "2.13.0"
DEFAULT_PACKAGES = (f"stjobs=={__version__}", "sentence-transformers==6.2.0", "transformers==5.24.0",
                    "accelerate==1.15.0", "datasets==5.2.0")
IMAGE_WORKDIR = "/workspace"  # where the code is (copied or mounted); the k8s pods and SLURM containers start here
CPU_BASE = "python:3.11-slim-bookworm"


class Variant(str, Enum):
    auto = "auto"  # gpu when the job asks for GPUs, else cpu
    gpu = "gpu"
    cpu = "cpu"


class CodeMode(str, Enum):
    copy = "copy"  # the project is copied into the image at build time (Kubernetes)
    mount = "mount"  # the project is mounted when the job runs (HPC: pyxis / Apptainer bind the submit dir)


@dataclass(frozen=True)
class BuildOptions:
    variant: Variant = spec_field(Choice(Variant), Variant.auto)
    base: str | None = spec_field(Nullable(Text("a base image reference, e.g. nvcr.io/nvidia/pytorch:25.01-py3",
                                                IMAGE_REF, 512)), None,
                                  doc="default: for gpu the pytorch/pytorch runtime image of build.torch whose CUDA "
                                      f"build has kernels for gpu_type (stjobs.gpus); for cpu {CPU_BASE}")
    base_digest: str | None = spec_field(Nullable(Text("a digest sha256:<64 hex digits>", DIGEST, 71)), None)
    torch: str = spec_field(Text("an exact torch version, e.g. 2.13.0", r"[0-9]+\.[0-9]+\.[0-9]+", 32),
                            TORCH_VERSION)
    packages: tuple[str, ...] = spec_field(
        Words("a list of exact pins name==version", Text("one exact pin name[extras]==version, e.g. "
                                                         "sentence-transformers==6.2.0", PINNED, 200), unique=True),
        DEFAULT_PACKAGES)
    apt_packages: tuple[str, ...] = spec_field(
        Words("a list of Debian package names (name or name=version)",
              Text("a Debian package name, optionally =version", APT_PACKAGE, 200), unique=True), ())
    code: CodeMode = spec_field(Choice(CodeMode), CodeMode.copy)
    uid: int = spec_field(Integer(1, 2**31 - 1, "a non-root numeric user id (1 or more)"), 1000,
                          doc="the image's USER and the pods' runAsUser")

    @staticmethod
    def _resolve(values: dict[str, Any]) -> None:
        for index, pin in enumerate(values["packages"]):
            if re.match(r"torch(\[|==)", pin):
                raise SpecError(f"build.packages[{index}]", pin, "no torch here: set build.torch (the base image "
                                "and the CPU index must agree on it)")
