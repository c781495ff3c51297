"""Bad spec fields: every case exits 2 with one line naming the field, the value and the expected form, and writes
nothing (table-driven, through the real CLI). tests/test_hostile_input.py covers files, flags and environment."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from stjobs.cli import main
from stjobs.config import load_spec, parse_set, validate_spec
from stjobs.errors import SpecError
from tests.conftest import offline_env, stjobs_bin

GOOD: dict[str, Any] = {"name": "job", "entrypoint": {"module": "stjobs.train", "args": ["--max-steps", 3]}}

# (id, spec fragment merged over GOOD (None deletes the key), the field the message must name, the value as the
# message shows it (repr), words of the expected form). tests/test_hostile_input.py holds the CLI, --set, file
# and environment cases.
BAD: list[tuple[str, dict[str, Any], str, str, str]] = [
    ("missing-name", {"name": None}, "name", "None", "required"),
    ("name-uppercase", {"name": "MyJob"}, "name", "'MyJob'", "lowercase"),
    ("name-underscore", {"name": "my_job"}, "name", "'my_job'", "lowercase"),
    ("name-too-long", {"name": "a" * 60}, "name", "'" + "a" * 60 + "'", "at most 42"),
    ("unknown-top-key", {"nodez": 2}, "nodez", "2", "did you mean 'nodes'"),
    ("unknown-nested-key", {"slurm": {"partiton": "gpu"}}, "slurm.partiton", "'gpu'", "did you mean 'partition'"),
    ("unknown-rdzv-key", {"rendezvous": {"timeout": 5}}, "rendezvous.timeout", "5", "did you mean 'timeout_s'"),
    ("nodes-zero", {"nodes": 0}, "nodes", "0", "from 1 to 1024"),
    ("nodes-text", {"nodes": "two"}, "nodes", "'two'", "whole number"),
    ("procs-negative", {"procs_per_node": -1}, "procs_per_node", "-1", "from 1 to 64"),
    ("gpus-too-many", {"gpus_per_node": 99}, "gpus_per_node", "99", "from 0 to 16"),
    ("mem-negative", {"mem_gb": -4}, "mem_gb", "-4", "greater than 0"),
    ("time-zero", {"time_min": 0}, "time_min", "0", "whole minutes"),
    ("strategy-unknown", {"strategy": "zero3"}, "strategy", "'zero3'", "one of ddp, dp, fsdp, single"),
    ("launcher-unknown", {"launcher": "mpirun"}, "launcher", "'mpirun'", "one of torchrun, accelerate"),
    ("dp-multi-node", {"strategy": "dp", "nodes": 2}, "nodes", "2", "DataParallel is single-node"),
    ("single-several-gpus", {"strategy": "single", "nodes": 1, "procs_per_node": 1, "gpus_per_node": 4},
     "gpus_per_node", "4", "0 or 1 with strategy single"),
    ("fsdp-with-evaluator", {"strategy": "fsdp", "entrypoint": {"module": "stjobs.train", "args": [
        "--model", "m", "--train-data", "t.jsonl", "--eval-data", "e.jsonl"]}}, "entrypoint.args",
     "'--eval-data'", "no evaluator with strategy fsdp"),
    ("dp-many-procs", {"strategy": "dp", "procs_per_node": 2}, "procs_per_node", "2", "one process drives"),
    ("single-many-procs", {"strategy": "single", "procs_per_node": 2}, "strategy", "'single'", "procs_per_node: 1"),
    ("gpus-procs-mismatch", {"gpus_per_node": 4, "procs_per_node": 2}, "procs_per_node", "2", "one process per GPU"),
    ("accelerate-dp", {"launcher": "accelerate", "strategy": "dp"}, "launcher", "'accelerate'", "no DataParallel"),
    ("cpus-below-procs", {"procs_per_node": 4, "cpus_per_task": 2}, "cpus_per_task", "2", "one CPU per process"),
    ("entry-both", {"entrypoint": {"module": "a", "script": "b.py"}}, "entrypoint",
     "{'module': 'a', 'script': 'b.py'}", "exactly one"),
    ("entry-bad-module", {"entrypoint": {"module": "not a module"}}, "entrypoint.module", "'not a module'",
     "dotted Python module"),
    ("entry-arg-mapping", {"entrypoint": {"module": "m", "args": [{"a": 1}]}}, "entrypoint.args[0]", "{'a': 1}",
     "string"),
    ("env-bad-name", {"env": {"1FOO": "x"}}, "env.1FOO", "'1FOO'", "variable name"),
    ("env-reserved", {"env": {"WORLD_SIZE": "8"}}, "env.WORLD_SIZE", "'WORLD_SIZE'", "launcher does not own"),
    ("env-secret-value", {"env": {"HF_TOKEN": "hf_abc"}}, "env.HF_TOKEN", "'<hidden>'", "list HF_TOKEN under secrets"),
    ("env-list-value", {"env": {"FOO": [1, 2]}}, "env.FOO", "[1, 2]", "a string or a number"),
    ("secret-bad-name", {"secrets": ["my-token"]}, "secrets[0]", "'my-token'", "environment variable name"),
    ("secret-in-env", {"secrets": ["FOO"], "env": {"FOO": "1"}}, "env.FOO", "'<hidden>'", "not both"),
    ("port-low", {"rendezvous": {"port": 80}}, "rendezvous.port", "80", "1024 to 65535"),
    ("port-ephemeral", {"rendezvous": {"port": 40000}}, "rendezvous.port", "40000", "ephemeral"),
    ("range-ephemeral", {"rendezvous": {"port_range": "30000-40000"}}, "rendezvous.port_range", "[30000, 40000]",
     "32768-60999"),
    ("range-reversed", {"rendezvous": {"port_range": [29999, 29500]}}, "rendezvous.port_range", "[29999, 29500]",
     "low < high"),
    ("rdzv-timeout", {"rendezvous": {"timeout_s": 1}}, "rendezvous.timeout_s", "1", "10 to 86400"),
    ("restarts-many", {"max_restarts": 1000}, "max_restarts", "1000", "0 to 100"),
    ("image-space", {"image": "my image"}, "image", "'my image'", "container image reference"),
    ("partition-shell", {"slurm": {"partition": "gpu; rm -rf /"}}, "slurm.partition", "'gpu; rm -rf /'",
     "partition name"),
    ("namespace-upper", {"k8s": {"namespace": "Prod"}}, "k8s.namespace", "'Prod'", "DNS-1123"),
    ("exclusive-text", {"slurm": {"exclusive": "sometimes"}}, "slurm.exclusive", "'sometimes'", "true or false"),
]


def merged(fragment: dict[str, Any]) -> dict[str, Any]:
    data = dict(GOOD)
    for key, value in fragment.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def test_table_is_large_enough() -> None:
    assert len(BAD) >= 40


@pytest.mark.parametrize("case,fragment,field,value,words", BAD, ids=[row[0] for row in BAD])
def test_bad_spec_exits_2_naming_field_value_and_form(case: str, fragment: dict[str, Any], field: str, value: str,
                                                      words: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(merged(fragment)))
    monkeypatch.chdir(tmp_path)  # a relative write (a stray log, a default ./images) would show up here too
    out_dir = tmp_path / "out"
    assert main(["render", str(spec_path), "-o", str(out_dir)]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err  # one line, no traceback
    assert lines[0].startswith(f"stjobs: error: {field}: got {value}; expected "), lines[0]
    assert words in lines[0].partition("; expected ")[2], lines[0]
    assert captured.out == ""
    assert [path.name for path in tmp_path.iterdir()] == ["job.yaml"], "a rejected spec must not leave output behind"


def test_secret_value_is_never_echoed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SpecError) as error:
        validate_spec(merged({"env": {"WANDB_API_KEY": "sk-very-secret"}}))
    assert "sk-very-secret" not in str(error.value)


def test_cli_flags_and_sets_override_the_file(tmp_path: Path) -> None:
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(merged({"nodes": 1})))
    spec = load_spec(spec_path, [("nodes", 3)], ["slurm.partition=gpu", "env.FOO=1", "entrypoint.args=[--x, 2]"])
    assert spec.nodes == 3
    assert spec.slurm.partition == "gpu"
    assert spec.env == {"FOO": "1"}
    assert spec.entrypoint.args == ("--x", "2")


@pytest.mark.parametrize("text,field", [
    ("nodes: [1\n", "spec file"),
    ("- a\n- b\n", "spec file"),
])
def test_unreadable_yaml(tmp_path: Path, text: str, field: str) -> None:
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(text)
    with pytest.raises(SpecError) as error:
        load_spec(spec_path)
    assert str(error.value).startswith(field)


def test_bad_set_syntax() -> None:
    with pytest.raises(SpecError, match=r"^--set: got 'nodes'; expected KEY=VALUE"):
        parse_set("nodes")


def test_set_through_a_scalar_is_refused() -> None:
    with pytest.raises(SpecError, match=r"^name: got 'job'; expected a mapping"):
        load_spec(None, [("name", "job"), ("name.first", "x")])


def test_defaults_resolved_once() -> None:
    spec = validate_spec(merged({"gpus_per_node": 4}))
    assert (spec.procs_per_node, spec.cpus_per_task, spec.output_dir) == (4, 4, "outputs/job")
    dp = validate_spec(merged({"strategy": "dp", "gpus_per_node": 4}))
    assert dp.procs_per_node == 1


def test_spec_is_frozen() -> None:
    spec = validate_spec(GOOD)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.nodes = 4  # type: ignore[misc]


def test_real_process_exit_code(tmp_path: Path) -> None:
    """The installed console script, not only main(): exit status 2 and a one-line message."""
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(merged({"strategy": "dp", "nodes": 2})))
    done = subprocess.run([stjobs_bin(), "render", str(spec_path), "--dry-run"], capture_output=True, text=True,
                          env=offline_env())
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "stjobs: error: nodes: got 2; expected 1 with strategy dp (DataParallel is single-node; use ddp)"]
    assert done.stdout == ""
