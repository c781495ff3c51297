"""Hostile and bad input beyond the spec fields (tests/test_spec_validation.py has those): spec files that are not
what they claim, CLI flags, --set, options that contradict each other, and the environment stjobs reads.

Every row goes through the real CLI (in-process; a sample also as a real process) and must give exactly one line
on stderr naming the field, the offending value and the expected form, exit code 2, no traceback, nothing on
stdout, and no file written: not the output directory, not a job directory, nothing else in the test's directory.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from stjobs.cli import main
from tests.conftest import offline_env, stjobs_bin

SPEC = "job.yaml"
OUT = "out"
GOOD: dict[str, Any] = {"name": "job", "image": "ghcr.io/org/train:1.0",
                        "entrypoint": {"module": "stjobs.train", "args": ["--max-steps", 3]}}


def _alias_bomb() -> str:
    """Nine anchors, each a list of nine aliases of the one before: ~600 bytes that expand to 9**9 values. It
    sits in k8s.affinity, the one spec field passed through as a whole into the manifest."""
    levels = ['l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    levels += [f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]" for n in range(1, 9)]
    body = "\n".join(f"      {line}" for line in levels)
    return f"name: job\nimage: ghcr.io/org/train:1.0\nk8s:\n  affinity:\n    nodeAffinity:\n{body}\n"


def _deep(levels: int) -> str:
    return "name: job\nenv: {A: " + "[" * levels + "x" + "]" * levels + "}\n"


def _make_dir(name: str) -> Callable[[Path], None]:
    return lambda where: (where / name).mkdir()


def _make_file(name: str, text: str = "x\n") -> Callable[[Path], None]:
    return lambda where: (where / name).write_text(text)


@dataclass(frozen=True)
class Bad:
    id: str
    argv: tuple[str, ...]
    field: str  # the field the message names first
    value: str  # the offending value as the message shows it
    expected: str  # words of the expected form
    spec: dict[str, Any] | str | bytes | None = None  # merged over GOOD (dict), or the file's bytes; None: GOOD
    env: dict[str, str] = field(default_factory=dict)
    setup: Callable[[Path], None] | None = None
    prefix: str = "stjobs: error: "
    shaped: bool = True  # "<field>: got <value>; expected <form>"; argparse's own wording otherwise


def render(*extra: str, backend: str = "local") -> tuple[str, ...]:
    return ("render", SPEC, "-b", backend, *extra, "-o", OUT)


def submit(*extra: str) -> tuple[str, ...]:
    return ("submit", SPEC, *extra)


R = "stjobs render: error: "
TABLE: list[Bad] = [
    # The spec file itself.
    Bad("yaml-unclosed-list", render(), "spec file", "'job.yaml'", "valid YAML (line 3", "name: job\nnodes: [1\n"),
    Bad("yaml-tab-indent", render(), "spec file", "'job.yaml'", "valid YAML (line 3",
        "name: job\nentrypoint:\n\tmodule: m\n"),
    Bad("yaml-duplicate-key", render(), "spec file", "'job.yaml'", "the key 'nodes' is given twice",
        "name: job\nnodes: 1\nnodes: 4\n"),
    Bad("yaml-duplicate-nested-key", render(), "spec file", "'job.yaml'", "(line 4, column 3: the key 'module'",
        "name: job\nentrypoint:\n  module: a\n  module: b\n"),
    Bad("yaml-top-level-list", render(), "spec file", "['name', 'job']", "a YAML mapping", "- name\n- job\n"),
    Bad("yaml-top-level-text", render(), "spec file", "'just some words'", "a YAML mapping", "just some words\n"),
    Bad("yaml-python-tag", render(), "spec file", "'job.yaml'", "could not determine a constructor",
        "name: !!python/object/apply:os.system [echo pwned]\n"),
    Bad("yaml-nul-byte", render(), "spec file", "'job.yaml'", "valid YAML (", "name: jo\x00b\n"),
    Bad("yaml-alias-bomb", render(backend="k8s"), "spec file", "'job.yaml'", "at most 100000 values", _alias_bomb()),
    Bad("yaml-nested-too-deep", render(), "spec file", "'job.yaml'", "nested at most 64 deep", _deep(80)),
    Bad("spec-invalid-utf8", render(), "spec file", "'job.yaml'", "UTF-8 text (byte 0xff on line 2",
        b"name: job\nimage: caf\xff\n"),
    Bad("spec-is-a-directory", ("render", "specs", "-o", OUT), "spec file", "'specs'", "(Is a directory)",
        setup=_make_dir("specs")),
    Bad("spec-missing", ("render", "nosuch.yaml", "-o", OUT), "spec file", "'nosuch.yaml'",
        "(No such file or directory)"),
    Bad("spec-too-large", render(), "spec file", "'job.yaml'", "at most 1048576 bytes",
        "name: job\n" + "# padding\n" * 120_000),
    # Wrong types and impossible values the spec table does not have.
    Bad("nodes-fraction", render(), "nodes", "1.5", "whole number of nodes", {"nodes": 1.5}),
    Bad("gpus-negative", render(), "gpus_per_node", "-1", "from 0 to 16", {"gpus_per_node": -1}),
    Bad("gpus-fraction", render(), "gpus_per_node", "0.5", "whole number of GPUs", {"gpus_per_node": 0.5}),
    Bad("time-as-words", render(), "time_min", "'an hour'", "whole minutes", {"time_min": "an hour"}),
    Bad("secrets-not-a-list", render(), "secrets", "'HF_TOKEN'", "a list of environment variable names",
        {"secrets": "HF_TOKEN"}),
    Bad("env-not-a-mapping", render(), "env", "['A=1']", "a mapping of environment variable names", {"env": ["A=1"]}),
    Bad("entrypoint-a-string", render(), "entrypoint", "'train.py'", "a mapping of Entrypoint fields",
        {"entrypoint": "train.py"}),
    Bad("elastic-on-local", render(), "nodes", "'2:4'", "a fixed node count on the local backend", {"nodes": "2:4"}),
    # Names Kubernetes would refuse.
    Bad("k8s-service-account-space", render(backend="k8s"), "k8s.service_account", "'ml runner'",
        "service account name", {"k8s": {"service_account": "ml runner"}}),
    Bad("k8s-relative-workdir", render(backend="k8s"), "workdir", "'src'", "an absolute path in the image",
        {"workdir": "src"}),
    Bad("trainjob-workdir", render(backend="k8s"), "workdir", "'/code'", "no working-directory field",
        {"workdir": "/code", "k8s": {"kind": "trainjob"}}),
    Bad("k8s-pvc-underscore", render(backend="k8s"), "k8s.pvc", "'ckpt_pvc'", "PersistentVolumeClaim name",
        {"k8s": {"pvc": "ckpt_pvc"}}),
    Bad("k8s-pull-secret-upper", render(backend="k8s"), "k8s.image_pull_secrets[0]", "'GHCR'", "DNS-1123",
        {"k8s": {"image_pull_secrets": ["GHCR"]}}),
    Bad("k8s-label-key", render(backend="k8s"), "k8s.node_selector.gpu type", "'gpu type'", "a label key",
        {"k8s": {"node_selector": {"gpu type": "a100"}}}),
    Bad("k8s-without-image", render(backend="k8s"), "image", "None", "a container image for the k8s backend",
        {"image": None}),
    # Flags: each is an override of a spec field, checked like the file's.
    Bad("flag-nodes-zero", render("--nodes", "0"), "nodes", "0", "from 1 to 1024"),
    Bad("flag-nodes-negative", render("--nodes", "-3"), "nodes", "'-3'", "from 1 to 1024"),
    Bad("flag-procs-word", render("--procs-per-node", "two"), "procs_per_node", "'two'", "from 1 to 64"),
    Bad("flag-gpus-impossible", render("--gpus-per-node", "1000"), "gpus_per_node", "1000", "from 0 to 16"),
    Bad("flag-mem-nan", render("--mem-gb", "nan"), "mem_gb", "nan", "greater than 0"),
    Bad("flag-time-fraction", render("--time-min", "1.5"), "time_min", "1.5", "whole minutes"),
    Bad("flag-strategy-unknown", render("--strategy", "deepspeed"), "strategy", "'deepspeed'", "one of ddp, dp"),
    Bad("flag-dp-two-nodes", render("--strategy", "dp", "--nodes", "2"), "nodes", "2", "DataParallel is single-node"),
    Bad("flag-fsdp-evaluator", render("--strategy", "fsdp", "--set", "entrypoint.args=[--eval-data, e.jsonl]"),
        "entrypoint.args", "'--eval-data'", "no evaluator with strategy fsdp"),
    Bad("flag-name-for-k8s", render("--name", "Team.Job", backend="k8s"), "name", "'Team.Job'", "lowercase"),
    Bad("flag-image-space", render("--image", "my image"), "image", "'my image'", "container image reference"),
    Bad("flag-backend-unknown", render(backend="aws"), "argument --backend/-b", "'aws'", "choose from", prefix=R,
        shaped=False),
    Bad("flag-unknown-option", render("--nodez", "3"), "arguments", "'--nodez 3'", "only the options of stjobs render",
        prefix=R),
    Bad("flag-rank-word", ("logs", "job-1", "--rank", "first"), "argument --rank", "'first'", "invalid int value",
        prefix="stjobs logs: error: ", shaped=False),
    # --set.
    Bad("set-without-equals", render("--set", "nodes"), "--set", "'nodes'", "KEY=VALUE"),
    Bad("set-empty-key", render("--set", "=3"), "--set", "'=3'", "KEY=VALUE"),
    Bad("set-through-a-scalar", render("--set", "name.first=x"), "name", "'job'", "a mapping, to set name.first"),
    Bad("set-unknown-key", render("--set", "slurm.partiton=gpu"), "slurm.partiton", "'gpu'", "did you mean"),
    Bad("set-broken-flow", render("--set", "nodes=[1"), "nodes", "'[1'", "whole number of nodes"),
    Bad("set-block-to-scalar", render("--set", "slurm=gpu"), "slurm", "'gpu'", "a mapping of SlurmOptions fields"),
    Bad("set-alias-bomb", render("--set", "env.A=[&a [x, x, x, x, x, x, x, x, x, x], " + ", ".join(
        f"&{chr(98 + n)} [{', '.join([f'*{chr(97 + n)}'] * 10)}]" for n in range(5)) + "]"),
        "--set env.A", "'[&a [x, x", "at most 100000 values"),
    # Options that contradict each other.
    Bad("dry-run-and-output", ("render", SPEC, "--dry-run", "-o", OUT), "--dry-run", "-o 'out' as well",
        "one of them", prefix=R),
    Bad("force-and-dry-run", ("render", SPEC, "--dry-run", "--force"), "--force", "--force with --dry-run",
        "-o DIR", prefix=R),
    Bad("render-without-output", ("render", SPEC), "--output", "nothing", "-o DIR", prefix=R),
    Bad("k8s-schemas-not-k8s", render("--k8s-schemas", "crds"), "--k8s-schemas", "'crds' with --backend local",
        "--backend k8s", prefix=R, setup=_make_dir("crds")),
    Bad("k8s-schemas-missing", render("--k8s-schemas", "nowhere", backend="k8s"), "--k8s-schemas", "'nowhere'",
        "a directory holding the Kubeflow CRD files", prefix=R),
    Bad("sbatch-not-slurm", submit("--sbatch"), "--sbatch", "--sbatch with --backend local", "--backend slurm",
        prefix="stjobs submit: error: "),
    # Where the output goes.
    Bad("output-is-a-file", ("render", SPEC, "-o", "taken"), "output", "'taken'", "a directory",
        setup=_make_file("taken")),
    Bad("output-not-empty", ("render", SPEC, "-o", "full"), "output", "'full'", "pass --force",
        setup=lambda where: (_make_dir("full")(where), _make_file("full/mine.txt")(where))),
    Bad("output-under-a-file", ("render", SPEC, "-o", "taken/out"), "output", "'taken/out'",
        "a directory stjobs can create", setup=_make_file("taken")),
    # Submitting: what only this machine can tell, checked before a job directory exists.
    Bad("missing-script", submit(), "entrypoint.script", "'nosuch.py'", "a file that exists",
        {"entrypoint": {"script": "nosuch.py"}}),
    Bad("missing-workdir", submit(), "workdir", "'nowhere'", "an existing directory", {"workdir": "nowhere"}),
    Bad("missing-interpreter", submit(), "python", "'/nonexistent/python3'", "an executable Python",
        {"python": "/nonexistent/python3"}),
    # An interpreter without torch (the distribution's, as on a login node whose venv is not activated).
    Bad("interpreter-without-torch", submit(), "python", "'/usr/bin/python3'",
        "an interpreter that can import torch, stjobs (it cannot import torch", {"python": "/usr/bin/python3"}),
    Bad("moved-local-python", ("render", SPEC, "--dry-run"), "local", "{'python': 'python3'}",
        "python: at the top of the spec", {"local": {"python": "python3"}}),
    Bad("secret-not-exported", submit(), "secrets[0]", "'STJOBS_TEST_UNSET_SECRET'", "a variable set where you submit",
        {"secrets": ["STJOBS_TEST_UNSET_SECRET"]}),
    Bad("unknown-job-logs", ("logs", "job-that-never-was"), "job", "'job-that-never-was'", "the id of a job"),
    Bad("unknown-job-cancel", ("cancel", "job-that-never-was"), "job", "'job-that-never-was'", "the id of a job"),
    # The environment.
    Bad("env-home-is-a-file", submit(), "STJOBS_HOME", "'home'", "a directory for stjobs' job records",
        env={"STJOBS_HOME": "home"}, setup=_make_file("home")),
    Bad("env-home-under-a-file", submit(), "STJOBS_HOME", "'home/stjobs'", "a directory stjobs can keep job records",
        env={"STJOBS_HOME": "home/stjobs"}, setup=_make_file("home")),
    Bad("env-home-is-a-file-status", ("status",), "STJOBS_HOME", "'home'", "a directory", env={"STJOBS_HOME": "home"},
        setup=_make_file("home")),
    Bad("env-k8s-schemas-nowhere", render(backend="k8s"), "STJOBS_K8S_SCHEMAS", "'nowhere'",
        "a directory holding the Kubeflow CRD files", env={"STJOBS_K8S_SCHEMAS": "nowhere"}),
    Bad("env-k8s-schemas-a-file", render(backend="k8s"), "STJOBS_K8S_SCHEMAS", "'crds.yaml'", "a directory",
        env={"STJOBS_K8S_SCHEMAS": "crds.yaml"}, setup=_make_file("crds.yaml")),
]


def spec_bytes(spec: dict[str, Any] | str | bytes | None) -> bytes:
    if isinstance(spec, bytes):
        return spec
    if isinstance(spec, str):
        return spec.encode()
    data = dict(GOOD)
    for key, value in (spec or {}).items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return yaml.safe_dump(data).encode()


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and mtime: a file written, touched or removed shows up."""
    if not root.exists():
        return {}
    return {str(path.relative_to(root)): (path.lstat().st_size, path.lstat().st_mtime_ns)
            for path in sorted(root.rglob("*"))}


def prepare(case: Bad, where: Path) -> None:
    (where / SPEC).write_bytes(spec_bytes(case.spec))
    if case.setup is not None:
        case.setup(where)


def check_refusal(case: Bad, code: int, out: str, err: str) -> None:
    assert code == 2, (code, out, err)
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), err
    line = lines[0]
    assert line.startswith(case.prefix + case.field + ": "), line
    if case.shaped:
        assert re.match(re.escape(f"{case.prefix}{case.field}: got {case.value}") + ".*; expected ", line), line
        assert case.expected in line.partition("; expected ")[2], line
    else:
        assert case.value in line and case.expected in line, line


def test_table_is_large_enough() -> None:
    assert len(TABLE) >= 40
    assert len({case.id for case in TABLE}) == len(TABLE)


@pytest.mark.parametrize("case", TABLE, ids=[case.id for case in TABLE])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case: Bad, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    prepare(case, work)
    monkeypatch.chdir(work)
    monkeypatch.delenv("STJOBS_K8S_SCHEMAS", raising=False)
    monkeypatch.delenv("STJOBS_TEST_UNSET_SECRET", raising=False)
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    home = Path(os.environ["STJOBS_HOME"])
    before, home_before = tree(work), tree(home)
    code = main(list(case.argv))
    captured = capsys.readouterr()
    check_refusal(case, code, captured.out, captured.err)
    assert not (work / OUT).exists()
    assert tree(work) == before, "nothing may be written next to the spec"
    assert tree(home) == home_before, "no job directory (nor the jobs root) may be created"


# A sample through the installed console script: the exit status and stderr of a real process.
REAL_PROCESS = ["yaml-duplicate-key", "spec-invalid-utf8", "flag-procs-word", "flag-backend-unknown",
                "dry-run-and-output", "missing-script", "env-home-is-a-file", "yaml-alias-bomb"]


@pytest.mark.parametrize("case", [case for case in TABLE if case.id in REAL_PROCESS],
                         ids=[case.id for case in TABLE if case.id in REAL_PROCESS])
def test_bad_input_in_a_real_process(case: Bad, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    prepare(case, work)
    home = tmp_path / "stjobs-home"
    before = tree(work)
    env = {**offline_env(STJOBS_HOME=str(home)), **case.env}
    env.pop("STJOBS_K8S_SCHEMAS", None)
    done = subprocess.run([stjobs_bin(), *case.argv], cwd=work, env=env, capture_output=True, text=True,
                          timeout=60)
    check_refusal(case, done.returncode, done.stdout, done.stderr)
    assert tree(work) == before
    assert not home.exists()
