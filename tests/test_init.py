"""``stjobs init``: sinfo's output read into partitions, values proposed that fit the site, the spec (and script)
written only once it loads back and renders; asked on a terminal, taken from flags otherwise; and, on the test
cluster, the real site read as its user sees it."""

from __future__ import annotations

import io
import os
import py_compile
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import stjobs
from stjobs import init, slurm_site
from stjobs.cli import main
from stjobs.slurm_site import NodeGroup, Partition, SiteFacts, parse_gres, parse_sinfo, parse_time_limit, propose
from tests.conftest import REPO
from tests.slurm_cluster import (
    ACCOUNT,
    CPUS_PER_NODE,
    GPU_TYPE,
    GPUS_PER_NODE,
    PARTITION,
    SITE_HOME,
    SITE_PYTHON,
    SITE_USER,
)

# `sinfo -h -o '%P|%a|%l|%D|%G|%c|%m'` as recorded: the test cluster (slurm-wlm 22.05.8, slurm/cluster/up.sh) ...
TEST_CLUSTER = "short*|up|5:00|2|gpu:v100:2|2|12052\ngpu|up|1:00:00|2|gpu:v100:2|2|12052\n"
# ... and shapes of real sites: a CPU default partition, GPU partitions of mixed nodes with socket affinity,
# a short debug partition, one that is down, one without a limit.
UNIVERSITY = """cpu*|up|7-00:00:00|120|(null)|64|256000
gpu|up|2-00:00:00|20|gpu:a100:4(S:0-1)|64|512000
gpu|up|2-00:00:00|4|gpu:v100:2(S:0,1)|32|192000+
debug|up|30:00|2|gpu:a100:4(S:0-1)|64|512000
"""
DOWN_AND_UNLIMITED = """big|down|infinite|8|gpu:h100:8(S:0-1)|112|2000000
long|up|infinite|16|gpu:l40s:4,shard:l40s:16|64+|512000
short|up|1:00:00|16|gpu:l40s:4|64|512000
"""
ONLY_DEBUG_GPUS = "cpu*|up|infinite|10|(null)|48|190000\ngpu-debug|up|30:00|1|gpu:t4:1|8|64000\n"
CPU_ONLY = "batch*|up|1-00:00:00|10|(null)|48|190000\n"


@pytest.mark.parametrize("text,minutes", [
    ("5:00", 5), ("30:00", 30), ("1:00:00", 60), ("12:30:00", 750), ("1-00:00:00", 1440), ("2-12", 3600),
    ("7-00:00", 10080), ("45", 45), ("infinite", None), ("UNLIMITED", None), ("n/a", None), ("", None),
])
def test_time_limits_in_slurms_forms(text: str, minutes: int | None) -> None:
    assert parse_time_limit(text) == minutes


@pytest.mark.parametrize("text,gres", [
    ("gpu:v100:2", [("gpu", "v100", 2)]),
    ("gpu:v100:2(S:0-1)", [("gpu", "v100", 2)]),
    ("gpu:a100:4(S:0,1),shard:8", [("gpu", "a100", 4), ("shard", None, 8)]),
    ("gpu:2", [("gpu", None, 2)]),
    ("gpu", [("gpu", None, 1)]),
    ("gpu:a100_3g.20gb:7(S:0)", [("gpu", "a100_3g.20gb", 7)]),
    ("mps:2K", [("mps", None, 2048)]),
    ("(null)", []), ("", []),
])
def test_gres_columns(text: str, gres: list[tuple[str, str | None, int]]) -> None:
    assert parse_gres(text) == gres


def test_sinfo_lines_become_partitions() -> None:
    parts = {part.name: part for part in parse_sinfo(UNIVERSITY + "garbage line\n\n|up|1|1|x|1|1\n")}
    assert list(parts) == ["cpu", "gpu", "debug"]
    assert parts["cpu"].default and not parts["gpu"].default and parts["cpu"].max_gpus == 0
    assert parts["gpu"].groups == (NodeGroup(20, 4, "a100", 64, 512000), NodeGroup(4, 2, "v100", 32, 192000))
    assert parts["gpu"].nodes == 24 and parts["gpu"].time_limit_min == 2880
    # the brief's format without %a reads too
    assert parse_sinfo("gpu|1:00:00|2|gpu:v100:2|2|12052") == (
        Partition("gpu", False, True, 60, (NodeGroup(2, 2, "v100", 2, 12052),)),)


def facts(listing: str, account: str | None = "ml-team") -> SiteFacts:
    return SiteFacts(parse_sinfo(listing), account)


@pytest.mark.parametrize("listing,answers,expected", [
    # the test cluster: its default partition allows 5 minutes, so the one that allows the hour is proposed
    (TEST_CLUSTER, {}, {"partition": "gpu", "gpus_per_node": 2, "gpu_type": "v100", "time_min": 60}),
    (TEST_CLUSTER, {"partition": "short"}, {"partition": "short", "gpus_per_node": 2, "time_min": 5}),
    (TEST_CLUSTER, {"time_min": 30}, {"partition": "gpu", "time_min": 30}),
    (UNIVERSITY, {}, {"partition": "gpu", "gpus_per_node": 4, "gpu_type": "a100", "time_min": 60}),
    (UNIVERSITY, {"gpu_type": "v100"}, {"partition": "gpu", "gpus_per_node": 2, "gpu_type": "v100"}),
    (UNIVERSITY, {"gpus_per_node": 0}, {"partition": "gpu", "gpus_per_node": 0, "gpu_type": None}),
    (UNIVERSITY, {"partition": "cpu"}, {"partition": "cpu", "gpus_per_node": 0, "gpu_type": None}),
    (UNIVERSITY, {"time_min": 5000}, {"partition": "gpu", "time_min": 5000}),  # none allows it: the user's call
    (DOWN_AND_UNLIMITED, {}, {"partition": "long", "gpus_per_node": 4, "gpu_type": "l40s", "time_min": 60}),
    (ONLY_DEBUG_GPUS, {}, {"partition": "gpu-debug", "gpus_per_node": 1, "gpu_type": "t4", "time_min": 30}),
    (CPU_ONLY, {}, {"partition": "batch", "gpus_per_node": 0, "gpu_type": None, "time_min": 60}),
    ("", {}, {"partition": None, "gpus_per_node": 0, "gpu_type": None, "time_min": 60, "nodes": 1}),
    (TEST_CLUSTER, {"partition": "nope", "nodes": 2}, {"partition": "nope", "gpus_per_node": 0, "nodes": 2}),
    (TEST_CLUSTER, {"account": None}, {"account": None}),
])
def test_proposals_fit_the_site(listing: str, answers: dict[str, Any], expected: dict[str, Any]) -> None:
    proposal = propose(facts(listing), answers)
    assert {key: proposal[key] for key in expected} == expected
    assert "account" in expected or proposal["account"] == "ml-team"


@pytest.mark.parametrize("values,says", [
    ({"partition": "gpu", "gpus_per_node": 2, "gpu_type": "v100", "nodes": 2, "time_min": 60}, []),
    ({"partition": "gpu", "nodes": 120}, ["partition gpu has 2 node(s)"]),
    ({"partition": "gpu", "gpus_per_node": 4, "gpu_type": "a100"},
     ["partition gpu has no GPU type 'a100' (v100)", "partition gpu has at most 2 GPU(s) per node"]),
    ({"partition": "short", "time_min": 60}, ["partition short allows 5 min"]),
    ({"partition": "gpus"}, ["partition 'gpus' is not one sinfo lists (short, gpu)"]),
    ({"partition": None}, []),
])
def test_values_the_site_cannot_give_are_said(values: dict[str, Any], says: list[str]) -> None:
    assert slurm_site.misfits(facts(TEST_CLUSTER), values) == says


class FakeSlurm:
    def __init__(self, answers: dict[str, str | None]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> str | None:
        self.calls.append(list(argv))
        return next((out for key, out in self.answers.items() if key in " ".join(argv)), None)


def test_the_site_is_read_with_one_sinfo_and_the_default_account() -> None:
    run = FakeSlurm({"sinfo": TEST_CLUSTER, "show user": "ml-team|ml-team|||normal\nml-team|root|||normal\n",
                     "scontrol": ""})
    site = slurm_site.read_slurm_site(run, user="alice")
    assert [part.name for part in site.partitions] == ["short", "gpu"] and site.account == "ml-team"
    assert run.calls == [["sinfo", "-h", "-o", slurm_site.SINFO_FORMAT],
                         ["sacctmgr", "-nP", "show", "user", "alice", "withassoc", slurm_site.SACCTMGR_FORMAT],
                         ["scontrol", "-o", "show", "partition"]]
    # no default account on the user record: the first association's
    assert slurm_site.read_slurm_site(FakeSlurm({"sinfo": "", "show user": "|proj-1|||\n|proj-2|||\n"}),
                                      user="bob").account == "proj-1"
    quiet = slurm_site.read_slurm_site(FakeSlurm({}), user="carol")
    assert quiet.partitions == () and quiet.account is None and "sinfo did not answer" in quiet.notes[0]


@pytest.fixture
def site(monkeypatch: pytest.MonkeyPatch) -> SiteFacts:
    recorded = facts(TEST_CLUSTER)
    monkeypatch.setattr(init, "read_slurm_site", lambda: recorded)
    return recorded


def test_flags_alone_write_a_local_spec_that_renders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "proj" / "stjobs.yaml"
    assert main(["init", "-b", "local", "-o", str(out), "--train-data", "pairs.jsonl"]) == 0  # stdin: no terminal
    spec = stjobs.load_spec(out)
    assert spec.name == "proj" and spec.entrypoint.module == "stjobs.train" and spec.gpus_per_node == 0
    assert spec.entrypoint.args == ("--model", init.DEFAULT_MODEL, "--train-data", "pairs.jsonl")
    assert stjobs.render(spec, "local").file("launch.sh")
    assert f"wrote {out} (local: 1 node(s))" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["stjobs.yaml"]  # no temporaries left
    assert b"\r\n" not in out.read_bytes() and out.read_text(encoding="utf-8").startswith("# Written by")


@pytest.mark.usefixtures("site")
def test_flags_alone_write_a_slurm_spec_from_the_site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "stjobs.yaml"
    assert main(["init", "-b", "slurm", "-o", str(out), "--name", "mpnet", "--nodes", "2"]) == 0
    spec = stjobs.load_spec(out)
    assert (spec.slurm.partition, spec.slurm.account, spec.gpus_per_node, spec.gpu_type, spec.nodes,
            spec.time_min) == ("gpu", "ml-team", 2, "v100", 2, 60)
    batch = stjobs.render(spec, "slurm").file("job.sbatch").content
    for line in ("--partition=gpu", "--account=ml-team", "--gpus-per-node=v100:2", "--nodes=2", "--time=60"):
        assert f"#SBATCH {line}\n" in batch
    assert "partition gpu, account ml-team" in capsys.readouterr().out
    assert main(["init", "-b", "slurm", "-o", str(out), "--force", "--nodes", "3"]) == 0
    assert "stjobs init: note: partition gpu has 2 node(s)\n" in capsys.readouterr().out


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.usefixtures("site")
def test_on_a_terminal_each_value_is_asked_with_the_proposal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # partition, GPUs per node, GPU type, nodes (a wrong answer first), time, CPUs, memory (a wrong answer first),
    # account, name, model, data; no QoS question: the recorded site has no accounting
    monkeypatch.setattr(sys, "stdin", Terminal("short\n\n\ntwo\n2\n\n\nlots\n7.5\nnone\nmy-job\n\n\n"))
    out = tmp_path / "stjobs.yaml"
    assert main(["init", "-b", "slurm", "-o", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "short (default): up, limit 5 min, 2 node(s) of 2 x v100, 2 CPUs, 12052 MB\n" in shown
    for prompt in ("Partition [gpu]: ", "GPUs per node [2]: ", "GPU type (as the site's GRES names it) [v100]: ",
                   "'two' is not a whole number", "Time limit in minutes [5]: ",
                   "CPUs per node (for all its processes) [2]: ", "Memory per node in GB [10]: ",
                   "'lots' is not a number", "Account [ml-team]: ",
                   f"Job name [{init.job_name(tmp_path)}]: ", f"Model (a name or directory) [{init.DEFAULT_MODEL}]: "):
        assert prompt in shown
    assert "QoS" not in shown
    spec = stjobs.load_spec(out)
    assert (spec.name, spec.slurm.partition, spec.slurm.account, spec.nodes, spec.time_min, spec.gpu_type,
            spec.cpus_per_task, spec.mem_gb, spec.slurm.qos) == ("my-job", "short", None, 2, 5, "v100", 2, 7.5, None)


def test_a_terminal_that_ends_takes_the_defaults_and_yes_asks_nothing(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", Terminal(""))
    assert main(["init", "-b", "local", "-o", str(tmp_path / "a.yaml")]) == 0
    monkeypatch.setattr(sys, "stdin", Terminal("never read\n"))
    assert main(["init", "-b", "local", "-o", str(tmp_path / "b.yaml"), "--yes"]) == 0
    assert stjobs.load_spec(tmp_path / "a.yaml").to_data() | {"spec_dir": None} == \
        stjobs.load_spec(tmp_path / "b.yaml").to_data() | {"spec_dir": None}
    assert sys.stdin.read() == "never read\n"


def test_existing_files_are_kept_and_a_bad_spec_leaves_nothing(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "stjobs.yaml"
    out.write_text("name: mine\n", encoding="utf-8", newline="\n")
    assert main(["init", "-b", "local", "-o", str(out)]) == 2
    assert "stjobs.yaml: exists; pass --force" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == "name: mine\n"
    assert main(["init", "-b", "local", "-o", str(out), "--script", str(tmp_path / "t.py"), "--force"]) == 0
    assert stjobs.load_spec(out).entrypoint.script == "t.py"
    fresh = tmp_path / "fresh"
    assert main(["init", "-b", "local", "-o", str(fresh / "s.yaml"), "--script", str(fresh / "t.py"),
                 "--name", "Not_A_Name"]) == 2
    assert "name: got 'Not_A_Name'" in capsys.readouterr().err
    assert list(fresh.iterdir()) == []  # neither file nor any temporary
    assert main(["init", "-b", "k8s", "-o", str(fresh / "k.yaml")]) == 2
    assert "--image: got nothing" in capsys.readouterr().err


def test_the_script_follows_the_docs_rule_and_the_spec_runs_it(tmp_path: Path) -> None:
    out, script = tmp_path / "proj" / "stjobs.yaml", tmp_path / "proj" / "src" / "train.py"
    assert main(["init", "-b", "local", "-o", str(out), "--script", str(script)]) == 0
    py_compile.compile(str(script), doraise=True)
    text = script.read_text(encoding="utf-8")
    assert "\ndef main() -> None:\n" in text and text.endswith('\nif __name__ == "__main__":\n    main()\n')
    assert "callbacks=[PreemptionCallback()]" in text and "resume_from_checkpoint=checkpoint" in text
    spec = stjobs.load_spec(out)
    assert (spec.entrypoint.script, spec.entrypoint.resumable) == ("src/train.py", True)
    assert "src/train.py" in stjobs.render(spec, "slurm").file("launch.sh").content
    assert (REPO / "templates" / init.SCRIPT_SOURCE).read_bytes() == script.read_bytes()


def test_render_does_not_load_init(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    assert main(["init", "-b", "local", "-o", str(spec)]) == 0
    code = ("import sys; from stjobs.cli import main; main(['render', sys.argv[1], '--dry-run']); "
            "print(sorted(m for m in sys.modules if m in ('stjobs.init', 'stjobs.slurm_site')))")
    done = subprocess.run([sys.executable, "-c", code, str(spec)], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "[]"


# ---- on the site-shaped test cluster ----------------------------------------------------------------------

@pytest.mark.slurm
def test_the_test_clusters_site_is_read_from_slurm(tmp_path: Path) -> None:
    """The real sinfo and sacctmgr of slurm/cluster/up.sh's cluster: its partition gpu (the default, short, allows
    5 minutes), two v100 per node from the GRES, and account ml-team, the default of root and of the site user."""
    from tests.slurm_cluster import ensure_cluster

    ensure_cluster()
    site = slurm_site.read_slurm_site()
    (node,) = {group for part in site.partitions for group in part.groups}
    # the whole node for its two GPUs: both CPUs, 90% of its memory in whole GB; QoS normal, the only one allowed
    expected = {"partition": PARTITION, "gpu_type": GPU_TYPE, "gpus_per_node": GPUS_PER_NODE, "account": ACCOUNT,
                "time_min": 60, "qos": "normal", "cpus_per_task": CPUS_PER_NODE,
                "mem_gb": int(node.mem_mb * 0.9 / 1024)}
    proposal = propose(site, {})
    assert {key: proposal[key] for key in expected} == expected and node.cpus == CPUS_PER_NODE
    # as the site's user would run it, from their venv (not activated) in their home
    if not SITE_PYTHON.exists():
        pytest.fail(f"{SITE_PYTHON} missing: slurm/cluster/up.sh makes it (STJOBS_PROJECT_SITE_PACKAGES)")
    project = SITE_HOME / "init-project"
    subprocess.run(["rm", "-rf", str(project)], check=True)
    subprocess.run(["runuser", "-u", SITE_USER, "--", "mkdir", "-p", str(project)], check=True)
    env = {"HOME": str(SITE_HOME), "USER": SITE_USER, "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    done = subprocess.run(["runuser", "-u", SITE_USER, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()),
                           str(SITE_PYTHON), "-m", "stjobs", "init", "--backend", "slurm", "--script", "train.py"],
                          cwd=project, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    spec = stjobs.load_spec(project / "stjobs.yaml")
    assert (spec.slurm.partition, spec.gpu_type, spec.gpus_per_node, spec.slurm.account, spec.entrypoint.script,
            spec.slurm.qos, spec.cpus_per_task, spec.mem_gb) \
        == (PARTITION, GPU_TYPE, GPUS_PER_NODE, ACCOUNT, "train.py", "normal", CPUS_PER_NODE, expected["mem_gb"])
    assert os.stat(project / "stjobs.yaml").st_uid == os.stat(project).st_uid  # the user's own file
