"""Rendering: golden files for every artifact, purity, atomic writes, and what the render path imports."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import stjobs
from stjobs.errors import RenderError
from stjobs.plan import write_plan
from tests.conftest import EXAMPLES, REPO, as_golden, offline_env, stjobs_bin

# Where each backend's golden examples live: one directory per example spec under examples/.
GOLDEN_ROOTS = {"local": EXAMPLES / "local", "slurm": REPO / "slurm" / "examples", "k8s": REPO / "k8s" / "examples",
                "image": REPO / "images" / "examples"}  # image: `stjobs image render`, not a backend
BACKENDS = ("local", "slurm", "k8s")
SPECS = sorted(EXAMPLES.glob("*.yaml"))
# examples/k8s-*.yaml are Kubernetes shapes (an image, elastic sizes); the others run on local and SLURM.
K8S_SPECS = [spec for spec in SPECS if spec.stem.startswith("k8s-")]
UPDATE = os.environ.get("STJOBS_UPDATE_GOLDEN") == "1"


def specs_for(backend: str) -> list[Path]:
    if backend == "image":  # every example that names an image gets its build files
        return [spec for spec in SPECS if stjobs.load_spec(spec).image is not None]
    return K8S_SPECS if backend == "k8s" else [spec for spec in SPECS if spec not in K8S_SPECS]


def render_for(backend: str, spec_path: Path) -> stjobs.Plan:
    spec = stjobs.load_spec(spec_path)
    plan = stjobs.render_image(spec) if backend == "image" else stjobs.render(spec, backend)
    files = tuple(dataclasses.replace(item, content=as_golden(item.content))
                  for item in plan.files)
    return dataclasses.replace(plan, files=files)


def golden_cases(backends: tuple[str, ...] = tuple(GOLDEN_ROOTS)) -> list[tuple[str, Path]]:
    return [(backend, spec) for backend in backends for spec in specs_for(backend)]


def test_there_are_examples() -> None:
    assert all(len(specs_for(backend)) >= 3 for backend in GOLDEN_ROOTS)


def test_golden_directories_match_the_examples() -> None:
    """A removed or renamed example must not leave a stale golden directory behind."""
    for backend, root in GOLDEN_ROOTS.items():
        assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [s.stem for s in specs_for(backend)], root


@pytest.mark.parametrize("backend,spec_path", golden_cases(), ids=lambda v: getattr(v, "stem", v))
def test_golden_files(backend: str, spec_path: Path) -> None:
    """The files under examples/<backend>/ are exactly what the templates produce; regenerate with
    STJOBS_UPDATE_GOLDEN=1 pytest tests/test_render.py."""
    plan = render_for(backend, spec_path)
    golden = GOLDEN_ROOTS[backend] / spec_path.stem
    if UPDATE:
        if golden.exists():
            shutil.rmtree(golden)
        write_plan(plan, golden)
    on_disk = sorted(str(p.relative_to(golden)) for p in golden.rglob("*") if p.is_file())
    assert on_disk == sorted(item.path for item in plan.files), f"{golden} has other files than the plan"
    for item in plan.files:
        path = golden / item.path
        assert path.read_text(encoding="utf-8") == item.content, f"{path} drifted; regenerate the goldens"
        assert bool(path.stat().st_mode & 0o100) == item.executable, path


@pytest.mark.parametrize("backend,spec_path", golden_cases(("local", "slurm")), ids=lambda v: getattr(v, "stem", v))
def test_rendered_shell_parses(backend: str, spec_path: Path) -> None:
    scripts = [p for p in (GOLDEN_ROOTS[backend] / spec_path.stem).rglob("*") if p.suffix in (".sh", ".sbatch")]
    assert scripts
    for path in scripts:
        subprocess.run(["bash", "-n", str(path)], check=True)


def test_render_is_byte_identical_across_processes(tmp_path: Path) -> None:
    """Same spec, two separate processes (different hash seeds, clocks and cwd): identical bytes."""
    spec_path = EXAMPLES / "two-nodes.yaml"
    outputs = []
    for index, seed in enumerate(("1", "2")):
        out = tmp_path / f"out{index}"
        subprocess.run([stjobs_bin(), "render", str(spec_path), "-o", str(out)], check=True, cwd=tmp_path,
                       env=offline_env(PYTHONHASHSEED=seed), capture_output=True)
        outputs.append({p.name: p.read_bytes() for p in out.iterdir()})
    assert outputs[0] == outputs[1]


def test_write_is_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = stjobs.render(stjobs.load_spec(EXAMPLES / "accelerate.yaml"))
    target = tmp_path / "out"
    real_chmod = os.chmod
    calls = {"n": 0}

    def failing_chmod(path: str | os.PathLike[str], mode: int) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the second file: one is already written
            raise OSError(28, "No space left on device")
        real_chmod(path, mode)

    monkeypatch.setattr(os, "chmod", failing_chmod)
    with pytest.raises(OSError):
        write_plan(plan, target)
    assert list(tmp_path.iterdir()) == [], "neither the target nor a staging directory may remain"


def test_non_empty_output_needs_force(tmp_path: Path) -> None:
    plan = stjobs.render(stjobs.load_spec(EXAMPLES / "tiny-ddp.yaml"))
    target = tmp_path / "out"
    target.mkdir()
    (target / "mine.txt").write_text("keep")
    with pytest.raises(RenderError, match="not empty"):
        write_plan(plan, target)
    assert (target / "mine.txt").read_text() == "keep"
    write_plan(plan, target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == sorted(item.path for item in plan.files)


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    done = subprocess.run([stjobs_bin(), "render", str(EXAMPLES / "two-nodes.yaml"), "--dry-run"], cwd=tmp_path,
                          capture_output=True, text=True, env=offline_env(), check=True)
    assert "--rdzv-backend c10d" in done.stdout and "launch.sh" in done.stdout
    assert list(tmp_path.iterdir()) == []


def test_secret_values_never_reach_rendered_files(tmp_path: Path) -> None:
    spec = stjobs.load_spec(EXAMPLES / "custom-script.yaml")
    assert "HF_TOKEN" in spec.secrets
    env = offline_env(HF_TOKEN="hf_top_secret_value")
    out = tmp_path / "out"
    subprocess.run([stjobs_bin(), "render", str(EXAMPLES / "custom-script.yaml"), "-o", str(out)], check=True,
                   env=env, capture_output=True)
    for path in out.rglob("*"):
        assert "hf_top_secret_value" not in path.read_text()


HEAVY = ("torch", "sentence_transformers", "accelerate", "transformers", "kubernetes", "submitit", "datasets")


@pytest.mark.parametrize("backend", BACKENDS)
def test_render_imports_nothing_heavy(backend: str, tmp_path: Path) -> None:
    spec = specs_for(backend)[0] if backend == "k8s" else EXAMPLES / "two-nodes.yaml"
    probe = (
        "import json, sys\n"
        "from stjobs.cli import main\n"
        f"code = main(['render', {str(spec)!r}, '-b', {backend!r},"
        f" '-o', {str(tmp_path / 'o')!r}])\n"
        "assert code == 0, code\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO,
                          env=offline_env())
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    assert (tmp_path / "o" / ("kustomization.yaml" if backend == "k8s" else "launch.sh")).is_file()


def test_schema_command_prints_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    from stjobs.cli import main

    main(["schema"])
    schema = json.loads(capsys.readouterr().out)
    assert schema["additionalProperties"] is False
    assert {"name", "nodes", "procs_per_node", "strategy", "rendezvous"} <= set(schema["properties"])


def test_rendered_script_passes_every_string_through_unchanged(tmp_path: Path) -> None:
    """Run the rendered node script with an interpreter that records what it got: argv and env must arrive
    exactly as written in the spec, nothing expanded or split by the shell."""
    workdir = tmp_path / "my work dir"
    workdir.mkdir()
    recorder = tmp_path / "record-python"
    recorder.write_text("#!/bin/sh\nexec " + sys.executable + " -c 'import json, os, sys; json.dump({\"argv\": "
                        "sys.argv[1:], \"env\": dict(os.environ), \"cwd\": os.getcwd()}, "
                        "open(os.environ[\"RECORD_TO\"], \"w\"))' \"$@\"\n")
    recorder.chmod(0o755)
    out = tmp_path / "out"
    stjobs.render_to(stjobs.load_spec(EXAMPLES / "custom-script.yaml", [("workdir", str(workdir))]), out)
    record = tmp_path / "record.json"
    env = {"PATH": os.environ["PATH"], "STJOBS_PYTHON": str(recorder), "RECORD_TO": str(record),
           "HF_TOKEN": "x"}
    subprocess.run(["bash", str(out / "launch.sh")], check=True, env=env, cwd=tmp_path)
    got = json.loads(record.read_text())
    spec = stjobs.load_spec(EXAMPLES / "custom-script.yaml")
    assert got["argv"][-5:] == ["my train.py", *spec.entrypoint.args]
    assert got["env"]["RUN_NOTE"] == spec.env["RUN_NOTE"]
    assert got["env"]["STJOBS_OUTPUT_DIR"] == spec.output_dir
    assert got["cwd"] == str(workdir)
    assert got["env"]["STJOBS_LOG_DIR"] == str(out / "logs")


def test_rendered_script_refuses_a_missing_secret(tmp_path: Path) -> None:
    out = tmp_path / "out"
    stjobs.render_to(stjobs.load_spec(EXAMPLES / "custom-script.yaml", [("workdir", str(tmp_path))]), out)
    done = subprocess.run(["bash", str(out / "launch.sh")], env={"PATH": os.environ["PATH"]},
                          capture_output=True, text=True)
    assert done.returncode == 64
    assert "secret HF_TOKEN is not in the environment" in done.stderr


def test_multi_node_script_refuses_missing_rendezvous(tmp_path: Path) -> None:
    out = tmp_path / "out"
    stjobs.render_to(stjobs.load_spec(EXAMPLES / "two-nodes.yaml"), out)
    done = subprocess.run(["bash", str(out / "launch.sh")], env={"PATH": os.environ["PATH"]},
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 64
    assert "STJOBS_RDZV_HOST is not set" in done.stderr


def test_plan_states_the_batch_per_process_and_per_step() -> None:
    def note(**changes: object) -> list[str]:
        spec = stjobs.load_spec(EXAMPLES / "gpu-2x8.yaml", overrides=list(changes.items()))
        return [n for n in stjobs.render(spec, "slurm").notes if n.startswith("batch:")]

    # No --loss: the data's kind decides at run time, so the note says which losses gather the rows.
    assert note() == ["batch: 64 per device x 16 process(es) = 1024 per step; losses with in-batch negatives (the "
                      "default for pairs and triplets data) see all 1024 rows; the others score each row alone"]
    assert note(**{"entrypoint.args": ["--model", "m", "--train-data", "t", "--global-batch-size", "512",
                                       "--loss", "mnrl"]}) == [
        "batch: 32 per device x 16 process(es) = 512 per step; MultipleNegativesRankingLoss sees all 512 rows as "
        "in-batch negatives"]
    # Losses that score each row alone get no such statement, whether named by --loss or per dataset.
    assert note(**{"entrypoint.args": ["--train-data", "t", "--loss", "CoSENTLoss"]}) == [
        "batch: 16 per device x 16 process(es) = 256 per step"]
    assert note(**{"entrypoint.args": ["--train-data", "nli=n.jsonl:softmax", "--train-data=stsb=s.jsonl:cosine"]}) \
        == ["batch: 16 per device x 16 process(es) = 256 per step"]
    assert note(**{"entrypoint.args": ["--train-data", "nli=n.jsonl:softmax", "--train-data", "qa=q.jsonl",
                                       "--loss", "mnrl"]}) == [
        "batch: 16 per device x 16 process(es) = 256 per step; qa's MultipleNegativesRankingLoss sees all 256 rows "
        "of its steps as in-batch negatives"]
    assert note(**{"entrypoint.args": ["--train-data", "t", "--loss", "mnrl", "--no-gather-across-devices"]}) == [
        "batch: 16 per device x 16 process(es) = 256 per step"]
    assert note(**{"entrypoint.args": ["--per-device-batch-size=8"]})[0].startswith("batch: 8 per device x 16 ")
    dp = note(**{"strategy": "dp", "nodes": 1, "procs_per_node": 1, "entrypoint.args": ["--per-device-batch-size",
                                                                                         "8"]})
    assert dp == ["batch: 8 per device x 8 GPU(s), one process = 64 per step"]
    single = stjobs.load_spec(EXAMPLES / "tiny-ddp.yaml", overrides=[("procs_per_node", 1), ("strategy", "single")])
    assert [n for n in stjobs.render(single, "local").notes if n.startswith("batch:")][0].endswith("per step")


def test_a_global_batch_the_processes_cannot_share_is_refused_at_render() -> None:
    from stjobs.errors import SpecError

    spec = stjobs.load_spec(EXAMPLES / "tiny-ddp.yaml", overrides=[
        ("procs_per_node", 4), ("entrypoint.args", ["--model", "tiny-bert", "--train-data", "t",
                                                    "--global-batch-size", "66"])])
    with pytest.raises(SpecError) as refused:
        stjobs.render(spec, "local")
    assert str(refused.value) == ("entrypoint.args: got '--global-batch-size 66'; expected a multiple of the 4 "
                                  "process(es) that share it (each takes an equal share), e.g. 64 or 68")


def test_a_spec_file_with_a_value_ending_in_newlines_reads_back() -> None:
    """The spec file is written an entry at a time; a block scalar that keeps its trailing newlines makes PyYAML
    end the document there ("..."), so such a spec is written whole (hypothesis found it in test_injection)."""
    from stjobs import yamlio
    from stjobs.backends.common import spec_file

    spec = stjobs.validate_spec({"name": "open", "env": {"NOTE": "two\n\n"}, "output_dir": "out\n"})
    read = yamlio.read(spec_file(spec).content)
    assert read["env"] == {"NOTE": "two\n\n"} and read["output_dir"] == "out\n" and read["rendezvous"]
    assert stjobs.validate_spec(read).to_data() == spec.to_data()
