"""Building a job's image: the one side effect of images, with docker, podman or buildah from the project root."""

from __future__ import annotations

import shlex
from pathlib import Path

from stjobs.errors import SubmitError
from stjobs.images.renderer import BUILDERS, FILES_DIR, build_command, dockerfile_name, image_name, variant_of
from stjobs.spec import JobSpec


def find_builder(preferred: str | None = None) -> str:
    """The first of docker, podman, buildah on PATH (or the one asked for)."""
    import shutil  # builds only: renders stay free of process and PATH probing
    for name in ([preferred] if preferred else BUILDERS):
        if shutil.which(name):
            return name
    wanted = preferred or " or ".join(BUILDERS)
    raise SubmitError(f"image build: no {wanted} on PATH; install one, or build {FILES_DIR}/ elsewhere")


def build_image(spec: JobSpec, context: str | Path = ".", builder: str | None = None,
                extra_args: tuple[str, ...] = ()) -> list[str]:
    """Build the spec's image from ``context`` (which holds ``images/`` as rendered); returns the command run."""
    image_name(spec)
    tool = find_builder(builder)
    argv = build_command(spec, variant_of(spec), tool)
    argv[2:2] = list(extra_args)  # after `build`: e.g. --build-arg PIP_FIND_LINKS=... or --volume for buildah
    missing = [f for f in (f"{FILES_DIR}/{dockerfile_name(variant_of(spec))}",) if not (Path(context) / f).is_file()]
    if missing:
        raise SubmitError(f"image build: {missing[0]} is missing in {context}; run stjobs image render first")
    import subprocess

    done = subprocess.run(argv, cwd=context)
    if done.returncode != 0:
        raise SubmitError(f"image build: {tool} exited with {done.returncode} ({shlex.join(argv)})")
    return argv
