"""A wheel built from the repo carries the templates and renders from a fresh venv, away from the checkout."""

from __future__ import annotations

import filecmp
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, REPO, as_golden

pytestmark = pytest.mark.slow


def test_wheel_in_fresh_venv_renders_the_goldens(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(REPO)],
                   check=True, capture_output=True)
    (wheel,) = dist.glob("stjobs-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    templates = sorted(p.name for p in (REPO / "templates").rglob("*") if p.is_file())
    assert templates, "the repo has templates"
    for name in templates:
        assert f"stjobs/templates/{name}" in names, f"{name} missing from the wheel"
    assert "stjobs/py.typed" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-c", str(REPO / "constraints.txt"), str(wheel)], check=True, capture_output=True)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(python), "-c", "import stjobs, stjobs.templating as t; print(stjobs.__file__); "
                            "print(t.templates_dir())"], check=True, capture_output=True, text=True,
                           cwd=elsewhere).stdout.split()
    assert all(str(venv) in path for path in where), where

    for spec, backend, golden in (("tiny-ddp", "local", EXAMPLES / "local" / "tiny-ddp"),
                                  ("accelerate", "local", EXAMPLES / "local" / "accelerate"),
                                  ("k8s-pytorchjob", "k8s", REPO / "k8s" / "examples" / "k8s-pytorchjob")):
        out = elsewhere / spec
        subprocess.run([str(venv / "bin" / "stjobs"), "render", str(EXAMPLES / f"{spec}.yaml"), "-b", backend,
                        "-o", str(out)], check=True, capture_output=True, cwd=elsewhere)
        for rendered in out.rglob("*"):
            if rendered.is_file():
                rendered.write_text(as_golden(rendered.read_text(encoding="utf-8")), encoding="utf-8")
        files = sorted(p.name for p in golden.iterdir())
        match, mismatch, errors = filecmp.cmpfiles(golden, out, files, shallow=False)
        assert (mismatch, errors) == ([], []), f"wheel output differs from {golden}"
        if backend == "k8s":  # a container job: the image's build files come along, from the wheel's templates
            images = REPO / "images" / "examples" / spec
            image_files = sorted(p.name for p in images.iterdir())
            match, mismatch, errors = filecmp.cmpfiles(images, out / "images", image_files, shallow=False)
            assert (mismatch, errors) == ([], []), f"wheel output differs from {images}"
            assert sorted(p.name for p in (out / "images").iterdir()) == image_files
            files = sorted([*files, "images"])
        assert sorted(p.name for p in out.iterdir()) == files
