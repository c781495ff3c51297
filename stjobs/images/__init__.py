"""Container images for a job, shaped like a backend: render (pure: Dockerfiles, an Apptainer definition and
pins from the spec) and build (the side effect). Below the public API: :mod:`stjobs.api` is the way in."""

from __future__ import annotations

from stjobs.images.build import build_image, find_builder
from stjobs.images.renderer import (
    FILES_DIR,
    build_command,
    image_files,
    render,
    variant_of,
    with_image_files,
)
from stjobs.spec_image import IMAGE_WORKDIR

__all__ = ["FILES_DIR", "IMAGE_WORKDIR", "build_command", "build_image", "find_builder", "image_files", "render",
           "variant_of", "with_image_files"]
