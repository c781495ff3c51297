"""``stjobs init`` fitting the job to the site beyond partition and GPUs: a QoS the user may use (from sacctmgr's
associations and scontrol's partition rules, nothing without accounting), CPUs and memory from the node's shape,
what does not fit said in one line; and ``--defaults user|site``, which writes the site-wide values to a defaults
file every spec inherits. On the test cluster, what init says does not fit is what ``sbatch --test-only`` refuses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import stjobs
from stjobs import defaults, init, slurm_site
from stjobs.cli import main
from stjobs.config import read_spec_file
from stjobs.slurm_site import Association, SiteFacts, misfits, parse_sinfo, propose
from tests.slurm_cluster import ACCOUNT, CPUS_PER_NODE, PARTITION, noacct_env
from tests.test_init import CPU_ONLY, DOWN_AND_UNLIMITED, ONLY_DEBUG_GPUS, TEST_CLUSTER, UNIVERSITY, FakeSlurm, Terminal

# `scontrol -o show partition`, cut to the keys read: gpu allows only QoS gpu and gpu-long, debug has its own QoS
# and denies long, cpu allows all.
UNIVERSITY_RULES = """PartitionName=cpu AllowGroups=ALL AllowQos=ALL Default=YES QoS=N/A MaxTime=7-00:00:00
PartitionName=gpu AllowGroups=ALL AllowQos=gpu,gpu-long Default=NO QoS=N/A MaxTime=2-00:00:00
PartitionName=debug AllowGroups=ALL AllowQos=ALL DenyQos=long Default=NO QoS=debug MaxTime=00:30:00
"""
# `sacctmgr -nP show user alice withassoc format=defaultaccount,account,partition,defaultqos,qos`
ALICE = """ml-team|ml-team||normal|normal,long,gpu,debug
ml-team|ml-team|debug||debug
ml-team|physics|||gpu-long,normal
"""


def university(rules: str = UNIVERSITY_RULES, associations: str = ALICE, accounting: bool = True) -> SiteFacts:
    account, rows = slurm_site.parse_associations(associations)
    return SiteFacts(slurm_site.with_partition_qos(parse_sinfo(UNIVERSITY), rules), account, (), rows, accounting)


def test_associations_and_partition_rules_are_read() -> None:
    account, rows = slurm_site.parse_associations(ALICE + "garbage\n|||\n")
    assert account == "ml-team" and rows == (
        Association("ml-team", None, ("normal", "long", "gpu", "debug"), "normal"),
        Association("ml-team", "debug", ("debug",), None), Association("physics", None, ("gpu-long", "normal"), None))
    parts = {part.name: part for part in university().partitions}
    assert (parts["cpu"].qos, parts["cpu"].allow_qos, parts["cpu"].deny_qos) == (None, None, ())
    assert parts["gpu"].allow_qos == ("gpu", "gpu-long") and parts["debug"].qos == "debug"
    assert parts["debug"].deny_qos == ("long",) and parts["debug"].groups == parts["debug"].groups


@pytest.mark.parametrize("answers,qos", [
    ({"partition": "cpu"}, "normal"),  # the association's default, allowed everywhere
    ({"partition": "gpu"}, "gpu"),  # gpu allows only gpu and gpu-long: normal would be refused
    ({}, "gpu"),  # the proposed partition is gpu
    ({"partition": "debug"}, "debug"),  # the association for debug lists only debug
    ({"partition": "cpu", "account": "physics"}, "normal"),  # no default: SLURM's 'normal'
    ({"partition": "gpu", "account": "physics"}, "gpu-long"),
    ({"partition": "gpu,cpu"}, "gpu"),  # a comma list: SLURM tries the first one first
    ({"partition": "cpu", "account": "nobody"}, None),  # no association: nothing the user may use is known
    ({"partition": "cpu", "qos": "long"}, "long"),  # an answer is kept (misfits says whether it fits)
])
def test_the_qos_proposed_is_one_the_user_may_use_there(answers: dict[str, Any], qos: str | None) -> None:
    assert propose(university(), answers)["qos"] == qos


@pytest.mark.parametrize("site", [
    university(accounting=False),  # no accounting: no QoS to choose
    university(associations="ml-team|ml-team|||\n"),  # an association without a QoS list (inherited, unshown)
    university(associations="ml-team|ml-team||normal|long\n", rules="PartitionName=gpu AllowQos=gpu\n"),
])
def test_no_qos_is_proposed_where_none_is_known_to_be_usable(site: SiteFacts) -> None:
    assert propose(site, {"partition": "gpu"})["qos"] is None
    assert not any("qos" in line for line in misfits(site, {"partition": "gpu", "qos": "anything"})) or \
        site.accounting


def sinfo_site(listing: str) -> SiteFacts:
    return SiteFacts(parse_sinfo(listing), "ml-team")


@pytest.mark.parametrize("listing,answers,cpus,mem_gb", [
    # a GPU job takes the node's share for its GPUs, memory less the 10% headroom, in whole GB
    (UNIVERSITY, {}, 64, 450),  # all 4 a100 of a 64-CPU, 512000 MB node: the node
    (UNIVERSITY, {"gpus_per_node": 1}, 16, 112),
    (UNIVERSITY, {"gpus_per_node": 2, "gpu_type": "v100"}, 32, 168),  # the v100 nodes: 32 CPUs, 192000 MB
    (UNIVERSITY, {"gpus_per_node": 8}, 64, 450),  # more than the node has: the node (misfits says so)
    (UNIVERSITY, {"partition": "cpu"}, 8, 28),  # a CPU job: 8 CPUs and their share of memory
    (UNIVERSITY, {"gpus_per_node": 0}, 8, 56),  # on the a100 nodes of gpu, the partition proposed
    (CPU_ONLY, {}, 8, 27),  # 8 of 48 CPUs, 190000 MB
    (TEST_CLUSTER, {}, 2, 10),  # 2 CPUs, 12052 MB: the whole node for its 2 GPUs
    (TEST_CLUSTER, {"gpus_per_node": 0}, 2, 10),  # a node smaller than 8 CPUs: all of it
    (TEST_CLUSTER, {"gpus_per_node": 1}, 1, 5),
    ("gpu*|up|1:00:00|2|gpu:4|2|64000\n", {}, 4, 56),  # fewer CPUs than GPUs: one per process still
    ("gpu*|up|1:00:00|2|gpu:2|8|1\n", {}, 8, None),  # RealMemory unset (1 MB): memory left out
    ("gpu*|up|1:00:00|2|gpu:2|n/a|n/a\n", {}, None, None),  # sinfo said neither
    ("", {}, None, None),
    (UNIVERSITY, {"cpus_per_task": 12, "mem_gb": 100}, 12, 100),  # answers are kept
])
def test_cpus_and_memory_fit_the_node(listing: str, answers: dict[str, Any], cpus: int | None,
                                      mem_gb: int | None) -> None:
    proposal = propose(sinfo_site(listing), answers)
    assert (proposal["cpus_per_task"], proposal["mem_gb"]) == (cpus, mem_gb)


@pytest.mark.parametrize("listing", [TEST_CLUSTER, UNIVERSITY, DOWN_AND_UNLIMITED, ONLY_DEBUG_GPUS, CPU_ONLY])
@pytest.mark.parametrize("gpus", [None, 0, 1])
def test_every_proposal_fits_its_site_and_makes_a_valid_spec(listing: str, gpus: int | None) -> None:
    site = sinfo_site(listing)
    most = max(part.max_gpus for part in site.partitions)
    answers = {} if gpus is None else {"gpus_per_node": min(gpus, most)}
    proposal = propose(site, answers)
    assert misfits(site, proposal) == []
    spec = {key: proposal[key] for key in ("gpus_per_node", "gpu_type", "cpus_per_task", "mem_gb", "time_min")}
    loaded = stjobs.load_spec(None, [("name", "job"), *spec.items()])
    assert loaded.cpus_per_task >= loaded.procs_per_node and loaded.mem_gb == proposal["mem_gb"]


@pytest.mark.parametrize("values,says", [
    ({"partition": "gpu", "cpus_per_task": 64, "mem_gb": 500}, []),
    ({"partition": "gpu", "cpus_per_task": 65}, ["partition gpu has at most 64 CPU(s) per node (cpus_per_task: 65)"]),
    ({"partition": "gpu", "gpu_type": "v100", "cpus_per_task": 64},  # the v100 nodes have 32
     ["partition gpu has at most 32 CPU(s) per node (cpus_per_task: 64)"]),
    ({"partition": "gpu", "mem_gb": 501},
     ["partition gpu has at most 512000 MB of memory per node (mem_gb: 501 is 513024 MB)"]),
    ({"partition": "cpu", "mem_gb": 0.5}, []),
    ({"partition": "gpu", "qos": "normal"},
     ["qos 'normal' is not one account ml-team may use in partition gpu (gpu)"]),
    ({"partition": "debug", "qos": "long"},
     ["qos 'long' is not one account ml-team may use in partition debug (debug)"]),
    ({"partition": "cpu", "qos": "gpu-long"},
     ["qos 'gpu-long' is not one account ml-team may use in partition cpu (normal, long, gpu, debug)"]),
    ({"partition": "cpu", "account": "physics", "qos": "gpu-long"}, []),
    ({"partition": "cpu", "account": "other-team"}, ["account 'other-team' is not one of yours (ml-team, physics)"]),
    ({"partition": "gpus", "qos": "nope"},
     ["qos 'nope' is not one account ml-team may use in partition gpus (normal, long, gpu, debug)",
      "partition 'gpus' is not one sinfo lists (cpu, gpu, debug)"]),
])
def test_what_does_not_fit_is_one_line_each(values: dict[str, Any], says: list[str]) -> None:
    assert misfits(university(), values) == says
    assert misfits(university(accounting=False), values) == [line for line in says if not line.startswith(
        ("qos", "account"))]


def test_without_accounting_there_is_no_scontrol_call_and_no_qos() -> None:
    run = FakeSlurm({"sinfo": TEST_CLUSTER})  # sacctmgr fails, as on a site without slurmdbd
    site = slurm_site.read_slurm_site(run, user="alice")
    assert [call[0] for call in run.calls] == ["sinfo", "sacctmgr"] and not site.accounting
    assert propose(site, {})["qos"] is None and not any("qos" in note.lower() for note in site.notes)
    run = FakeSlurm({"sinfo": UNIVERSITY, "sacctmgr": ALICE, "scontrol": UNIVERSITY_RULES})
    site = slurm_site.read_slurm_site(run, user="alice")
    assert [call[0] for call in run.calls] == ["sinfo", "sacctmgr", "scontrol"] and site.accounting
    assert propose(site, {}) == {"partition": "gpu", "gpus_per_node": 4, "gpu_type": "a100", "nodes": 1,
                                 "time_min": 60, "cpus_per_task": 64, "mem_gb": 450, "account": "ml-team",
                                 "qos": "gpu"}


@pytest.fixture
def accounted(monkeypatch: pytest.MonkeyPatch) -> SiteFacts:
    site = university()
    monkeypatch.setattr(init, "read_slurm_site", lambda: site)
    return site


@pytest.mark.usefixtures("accounted")
def test_on_a_terminal_qos_cpus_and_memory_are_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # partition, GPUs, type, nodes, time, CPUs, memory, account, QoS (not allowed in gpu), name, model, data
    monkeypatch.setattr(sys, "stdin", Terminal("gpu\n1\n\n\n\n\n\n\nnormal\n\n\n\n"))
    out = tmp_path / "s.yaml"
    assert main(["init", "-b", "slurm", "-o", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "  gpu: up, limit 2880 min, 24 node(s) of 4 x a100, 64 CPUs, 512000 MB; 2 x v100, 32 CPUs, 192000 MB, " \
           "QoS allowed: gpu, gpu-long\n" in shown
    assert "  account ml-team: QoS debug, gpu, long, normal\n  account physics: QoS gpu-long, normal\n" in shown
    for prompt in ("CPUs per node (for all its processes) [16]: ", "Memory per node in GB [112]: ", "QoS [gpu]: "):
        assert prompt in shown
    assert "stjobs init: note: qos 'normal' is not one account ml-team may use in partition gpu (gpu)\n" in shown
    spec = stjobs.load_spec(out)
    assert (spec.slurm.qos, spec.cpus_per_task, spec.mem_gb, spec.gpus_per_node) == ("normal", 16, 112, 1)
    batch = stjobs.render(spec, "slurm").file("job.sbatch").content
    for line in ("--qos=normal", "--cpus-per-task=16", "--mem=112G", "--partition=gpu"):
        assert f"#SBATCH {line}\n" in batch


@pytest.mark.usefixtures("accounted")
def test_flags_give_cpus_and_memory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.yaml"
    assert main(["init", "-b", "slurm", "-o", str(out), "--cpus-per-task", "100", "--mem-gb", "7.5"]) == 0
    assert "note: partition gpu has at most 64 CPU(s) per node (cpus_per_task: 100)\n" in capsys.readouterr().out
    spec = stjobs.load_spec(out)
    assert (spec.cpus_per_task, spec.mem_gb, spec.slurm.qos) == (100, 7.5, "gpu")
    assert main(["init", "-b", "k8s", "-o", str(out), "--force", "--image", "r/i:1", "--mem-gb", "16"]) == 0
    assert stjobs.load_spec(out).mem_gb == 16 and read_spec_file(out)["mem_gb"] == 16
    assert "mem_gb: 16\n" in out.read_text(encoding="utf-8")
    assert main(["init", "-b", "local", "-o", str(out), "--force", "--mem-gb", "lots"]) == 2
    assert "--mem-gb: invalid number value: 'lots'" in capsys.readouterr().err
    assert main(["init", "-b", "local", "-o", str(out), "--force", "--cpus-per-task", "lots"]) == 2
    assert "--cpus-per-task: invalid int value: 'lots'" in capsys.readouterr().err


# ---- --defaults: the site-wide values in the file every spec inherits ------------------------------------------

def lines(path: Path) -> str:
    data = path.read_bytes()
    assert b"\r\n" not in data
    return data.decode("utf-8")


@pytest.mark.usefixtures("accounted")
def test_defaults_user_writes_the_site_values_there_and_not_in_the_spec(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    user = tmp_path / "conf" / "defaults.yaml"
    monkeypatch.setenv("STJOBS_DEFAULTS", str(user))
    out = tmp_path / "proj" / "stjobs.yaml"
    assert main(["init", "-b", "slurm", "-o", str(out), "--defaults", "user", "--account", "physics"]) == 0
    said = capsys.readouterr().out
    assert f"wrote {user} (user defaults: slurm.partition gpu, slurm.account physics, slurm.qos gpu-long): every " \
           "spec inherits them, so stjobs.yaml leaves them out\n" in said
    assert lines(user).startswith("# Written by `stjobs init --defaults user`")
    written = read_spec_file(user, "user defaults file")
    assert written == {"slurm": {"partition": "gpu", "account": "physics", "qos": "gpu-long"}}
    assert defaults.check(written, "user", user) == written
    assert "slurm" not in read_spec_file(out) and "gpus_per_node" in read_spec_file(out)
    spec = stjobs.load_spec(out)  # through the environment, as render and submit read it
    assert (spec.slurm.partition, spec.slurm.account, spec.slurm.qos) == ("gpu", "physics", "gpu-long")
    assert sorted(p.name for p in user.parent.iterdir()) == ["defaults.yaml"]  # no temporaries
    # a second time: refused without --force, the file as it was
    assert main(["init", "-b", "slurm", "-o", str(tmp_path / "b.yaml"), "--defaults", "user"]) == 2
    assert f"{user}: exists; pass --force to write into it (its other values are kept)" in capsys.readouterr().err
    # a later spec without --defaults: proposed from the file, not repeated; what differs is written
    assert main(["init", "-b", "slurm", "-o", str(tmp_path / "c.yaml")]) == 0
    assert "from the defaults files, so not repeated in c.yaml: slurm.partition gpu, slurm.account physics, " \
           "slurm.qos gpu-long\n" in capsys.readouterr().out
    assert "slurm" not in read_spec_file(tmp_path / "c.yaml")
    assert main(["init", "-b", "slurm", "-o", str(tmp_path / "d.yaml"), "--partition", "cpu"]) == 0
    # the file's account and QoS still hold (physics may use gpu-long on cpu): only the partition is the spec's
    assert read_spec_file(tmp_path / "d.yaml")["slurm"] == {"partition": "cpu"}
    said = capsys.readouterr().out
    assert "not repeated in d.yaml: slurm.account physics, slurm.qos gpu-long\n" in said and "note:" not in said
    # another account: the file's QoS still applies, and ml-team may not use it: said
    assert main(["init", "-b", "slurm", "-o", str(tmp_path / "e.yaml"), "--partition", "cpu",
                 "--account", "ml-team"]) == 0
    assert "note: qos 'gpu-long' is not one account ml-team may use in partition cpu" in capsys.readouterr().out


@pytest.mark.usefixtures("accounted")
def test_force_keeps_the_files_other_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "etc" / "defaults.yaml"
    site.parent.mkdir()
    site.write_text("slurm:\n  partition: cpu\n  setup: [module load cuda]\nenv:\n  HF_HOME: /scratch/hf\n",
                    encoding="utf-8", newline="\n")
    monkeypatch.setenv("STJOBS_SITE_DEFAULTS", str(site))
    out = tmp_path / "s.yaml"
    assert main(["init", "-b", "slurm", "-o", str(out), "--defaults", "site", "--force", "--partition", "gpu"]) == 0
    assert read_spec_file(site, "site defaults file") == {
        "slurm": {"partition": "gpu", "setup": ["module load cuda"], "account": "ml-team", "qos": "gpu"},
        "env": {"HF_HOME": "/scratch/hf"}}
    spec = stjobs.load_spec(out)
    assert spec.slurm.setup == ("module load cuda",) and spec.env == {"HF_HOME": "/scratch/hf"}


def test_defaults_for_k8s_hold_the_namespace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STJOBS_DEFAULTS")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))  # the usual place, as _user_file finds it
    out = tmp_path / "k.yaml"
    assert main(["init", "-b", "k8s", "-o", str(out), "--image", "r/i:1", "--namespace", "ml",
                 "--defaults", "user"]) == 0
    user = tmp_path / "xdg" / "stjobs" / "defaults.yaml"
    assert defaults.file_for("user") == user and read_spec_file(user) == {"k8s": {"namespace": "ml"}}
    assert "k8s" not in read_spec_file(out) and stjobs.load_spec(out).k8s.namespace == "ml"


@pytest.mark.parametrize("argv,env,says", [
    (["-b", "local"], {}, "--defaults: got 'user' with backend local; expected backend slurm or k8s"),
    (["-b", "slurm"], {"STJOBS_DEFAULTS": ""}, "STJOBS_DEFAULTS: got ''; expected a path for the user defaults file"),
    (["-b", "k8s", "--image", "r/i:1"], {},
     "--defaults: got nothing site-wide to write; expected a value for one of --namespace"),
    (["-b", "slurm", "--name", "Bad_Name"], {}, "name: got 'Bad_Name'"),  # the spec fails: neither file is left
])
def test_defaults_refusals_leave_nothing(argv: list[str], env: dict[str, str], says: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                         accounted: SiteFacts) -> None:
    monkeypatch.setenv("STJOBS_DEFAULTS", str(tmp_path / "conf" / "defaults.yaml"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["init", *argv, "-o", str(tmp_path / "s.yaml"), "--defaults", "user"]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.yaml").exists() and not (tmp_path / "conf").exists() or \
        list((tmp_path / "conf").iterdir()) == []


@pytest.mark.usefixtures("accounted")
def test_a_defaults_file_that_cannot_be_written_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("", encoding="utf-8", newline="\n")
    monkeypatch.setenv("STJOBS_SITE_DEFAULTS", str(tmp_path / "afile" / "defaults.yaml"))
    assert main(["init", "-b", "slurm", "-o", str(tmp_path / "s.yaml"), "--defaults", "site"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stjobs: error: output: got '") and len(err.splitlines()) == 1
    assert err.endswith(f"; expected a file you may write ({tmp_path}/afile is not a directory)\n")
    assert not (tmp_path / "s.yaml").exists()


# ---- on the test cluster: what init says does not fit is what SLURM refuses -------------------------------------

@pytest.mark.slurm
@pytest.mark.parametrize("flags,qos,note,refusal", [
    ([], "normal", None, None),
    (["--qos", "long"], "long", "qos 'long' is not one account ml-team may use in partition gpu (normal)",
     "Invalid qos specification"),
    (["--mem-gb", "100"], "normal", "partition gpu has at most", "Requested node configuration is not available"),
    (["--cpus-per-task", str(CPUS_PER_NODE + 2)], "normal",
     f"partition gpu has at most {CPUS_PER_NODE} CPU(s) per node", "More processors requested than permitted"),
    (["--account", "other-team"], None, "account 'other-team' is not one of yours (ml-team, root)",
     "Invalid account or account/partition combination specified"),  # no association: no QoS proposed
])
def test_init_says_what_sbatch_refuses(flags: list[str], qos: str | None, note: str | None, refusal: str | None,
                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.slurm_cluster import ensure_cluster

    ensure_cluster()
    spec = tmp_path / "stjobs.yaml"
    assert main(["init", "-b", "slurm", "-o", str(spec), "--nodes", "2", *flags]) == 0
    said = capsys.readouterr().out
    assert ("stjobs init: note:" in said) == (note is not None) and (note or "") in said
    loaded = stjobs.load_spec(spec)
    assert (loaded.slurm.partition, loaded.slurm.qos) == (PARTITION, qos)
    assert main(["render", str(spec), "-b", "slurm", "-o", str(tmp_path / "out")]) == 0
    done = subprocess.run(["sbatch", "--test-only", "job.sbatch"], cwd=tmp_path / "out", capture_output=True,
                          text=True, timeout=60)
    assert (done.returncode == 0) == (refusal is None), done.stderr
    assert (refusal or "to start at") in done.stderr


@pytest.mark.slurm
def test_a_site_without_accounting_gets_no_qos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The test cluster without slurmdbd: sacctmgr fails there, so no scontrol call, no QoS and nothing said about
    it; CPUs and memory still come from its nodes."""
    from tests.slurm_cluster import ensure_noacct_cluster

    ensure_noacct_cluster()
    for key, value in noacct_env().items():
        monkeypatch.setenv(key, value)
    calls: list[str] = []

    def recorded(argv: Any) -> str | None:
        calls.append(argv[0])
        return slurm_site.run_quietly(argv)

    site = slurm_site.read_slurm_site(recorded)
    assert calls == ["sinfo", "sacctmgr"] and not site.accounting and site.associations == ()
    assert PARTITION in {part.name for part in site.partitions}
    proposal = propose(site, {})
    assert proposal["qos"] is None and proposal["cpus_per_task"] == CPUS_PER_NODE and proposal["mem_gb"]
    spec = tmp_path / "stjobs.yaml"
    assert main(["init", "-b", "slurm", "-o", str(spec), "--account", ACCOUNT]) == 0
    said = capsys.readouterr().out
    assert "qos" not in said.lower() and "qos" not in read_spec_file(spec).get("slurm", {})
    assert os.environ["SLURM_CONF"] == noacct_env()["SLURM_CONF"]
