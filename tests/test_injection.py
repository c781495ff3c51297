"""Issue 7, "Injection": hostile strings in a spec reach the job exactly as written, or the spec refuses them.

Hypothesis builds strings out of quotes, ``$(...)``, backticks, newlines, ';', ``$VAR``, '\\', globs, '~', a
leading '-', control characters, non-ASCII text and the empty string, and puts them in every spec field whose text
reaches a shell or a YAML reader: entrypoint.script and .args, env values (and names), workdir, output_dir, a secret's
value, slurm.constraint, slurm.extra_sbatch and slurm.container_mounts, k8s tolerations. Then:

* every rendered script passes ``bash -n``; run by bash, launch.sh (local) and job.sbatch -> srun -> launch.sh (SLURM)
  start the launcher with exactly the spec's argv, environment and working directory, byte for byte, and run nothing
  else: a fragment such as ``$(touch $STJOBS_STUB_LOG/injected)`` that ran would leave that file behind;
* the #SBATCH block holds exactly the options stjobs meant, one per line, so no newline adds an option or a command;
* the Kubernetes manifest and stjobs.yaml read back with yaml.safe_load give exactly the values, and after the
  kubelet's ``$(VAR)`` expansion (tests/k8s_emulate.py) each container gets exactly the spec's argv and environment.

Why stubs: the commands the scripts call (the launcher's python3, srun, scontrol) are small executables placed first
on PATH that record their argv, environment and working directory; the srun stub then runs the node script as srun
would. What is under test is the quoting of the rendered text. The real torchrun, srun and kubelet paths run in
tests/test_local_e2e.py, tests/test_slurm.py and tests/test_k8s_pods.py.

Strategies keep to what validation accepts, and each refusal they avoid is a documented rule, itself tested below
(test_refused): NUL and lone surrogates (no argv, environment or file can carry them), env names stjobs, torchrun or
bash own, PATH (it picks the programs by design), a script path starting with '-', spaces or quotes in a constraint.
"""

from __future__ import annotations

import marshal
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

import stjobs
from stjobs.backends.k8s import manifest as k8s_manifest
from stjobs.backends.local.supervisor import node_env
from stjobs.backends.slurm import renderer as slurm
from stjobs.errors import SpecError
from stjobs.launch import Ref
from stjobs.plan import Plan, write_plan
from stjobs.spec import (
    CONSTRAINT_PATTERN,
    MOUNT_PATTERN,
    NAME_PATTERN,
    RESERVED_ENV,
    RESERVED_ENV_PREFIXES,
    SECRET_LIKE,
    SHELL_ENV,
    SHELL_ENV_PREFIX,
    SLURM_NAME,
)
from tests.k8s_emulate import pytorchjob_pods, trainjob_pods

LOG_VAR = "STJOBS_STUB_LOG"  # STJOBS_* names are refused in a spec's env, so no generated env can move the log
SECRET = "INJECT_TOKEN"
IMAGE = "ghcr.io/example/stjobs:1.0"
PWN = f"touch ${LOG_VAR}/injected"
# Pieces a shell, sbatch or a YAML reader gives a meaning to; each would show up as a changed value or a marker file.
FRAGMENTS = ["'", '"', "\\", "$", "$HOME", "${HOME}", f"$({PWN})", f"`{PWN}`", f";{PWN};", f"\n{PWN}\n", "&&", "|",
             "\n", "\r", "\t", " ", "*", "?", "[a]", "~", "~root", "-", "--x", "#", "!", "!!", "%", "{a,b}", "$((1+1))",
             "<(x)", ">out", "\nrm -rf x\n", "\n#SBATCH --foo\n", "=", ": ", "- ", "&a", "*a", "null", "yes", "0x1",
             "1e3", "@", "é", "\u2028", "\x85", "\ufeff", "\U0001f600", "\x1b[31m", "\x7f", "\x01"]
CHARS = st.characters(codec="utf-8", exclude_characters="\x00")  # every character but NUL and lone surrogates
SHAPES: list[dict[str, Any]] = [
    {"strategy": "ddp"}, {"strategy": "ddp", "nodes": 2}, {"strategy": "dp"},
    {"strategy": "single", "launcher": "accelerate"}, {"strategy": "ddp", "nodes": 2, "launcher": "accelerate"}]
# Ordinary names that still mean something to bash, ld.so or Python: their values must pass through all the same.
SHELLISH = ["IFS", "PS4", "POSIXLY_CORRECT", "CDPATH", "ENV", "LC_ALL", "LANG", "HOME", "TMPDIR", "PYTHONPATH"]


def hostile(min_size: int = 0) -> st.SearchStrategy[str]:
    piece = st.one_of(st.sampled_from(FRAGMENTS), st.text(CHARS, min_size=1, max_size=4))
    return st.lists(piece, min_size=min_size, max_size=6).map("".join)


def env_name_allowed(key: str) -> bool:
    """The documented rules of stjobs.spec._check_env_name, plus PATH, which the stubs are found through."""
    return not (key in RESERVED_ENV or key.startswith(RESERVED_ENV_PREFIXES) or SECRET_LIKE.search(key)
                or key in SHELL_ENV or key.startswith(SHELL_ENV_PREFIX) or key == "PATH")


def component(text: str) -> str:
    """A directory name made of ``text``: no '/', not '.' or '..', short enough for NAME_MAX."""
    name = text.replace("/", "_")
    while len(name.encode()) > 200:
        name = name[:-1]
    return name if name.strip(".") else name + "_"


ENV_NAMES = st.one_of(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True),
                      st.sampled_from(SHELLISH)).filter(env_name_allowed)
ENV = st.dictionaries(ENV_NAMES, hostile(), max_size=4)
ARGS = st.lists(hostile(), max_size=4)
ENTRY = st.one_of(st.builds(lambda script, args: {"script": script, "args": args},
                            hostile(1).filter(lambda s: not s.startswith("-")), ARGS),
                  # Not stjobs.train: see test_training_args_with_an_ambiguous_abbreviation_render
                  st.builds(lambda args: {"module": "pkg.train", "args": args}, ARGS))
WORKDIR = st.lists(hostile(1).map(component), min_size=1, max_size=2).map("/".join)
NAMES = st.from_regex(NAME_PATTERN, fullmatch=True)  # job names: DNS-like by design, so only their own alphabet
SETTINGS = settings(max_examples=70, deadline=None)


def make_spec(**fields: Any) -> stjobs.JobSpec:
    data: dict[str, Any] = {"name": "inject", "secrets": [SECRET]}
    shape = fields.pop("shape", {})
    data.update(shape, **fields)
    return stjobs.validate_spec(data)  # no assume(): a refusal here is a wrong refusal, and fails the test


# ---------------------------------------------------------------------------------------------------- stubs

STUB = """#!{python} -IS
# A stand-in for {{python3, srun, scontrol}}: records argv, environment and working directory, once per name.
import marshal, os, sys
name = os.path.basename(sys.argv[0])
if name == "python3" and sys.argv[1:2] == ["-c"]:
    sys.exit(0)  # the node script's check that the interpreter finds torch: it does
record = {{"argv": [os.fsencode(a) for a in sys.argv], "env": dict(os.environb), "cwd": os.getcwdb()}}
with open(os.path.join(os.environb[b"{log}"], name.encode()), "xb") as out:
    marshal.dump(record, out)
if name == "scontrol":
    print("node-a")  # `scontrol show hostnames`: the rendezvous host of a multi-node job
elif name == "srun" and sys.argv[-2] == "bash":
    os.environ["SLURM_NODEID"] = "1"  # what srun gives each task: its node's index in the job
    os.execvp("bash", sys.argv[-2:])  # srun's task: the node script (in a container it would be the same words)
"""


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("stubs")
    for name in ("python3", "srun", "scontrol"):
        (folder / name).write_text(STUB.format(python=sys.executable, log=LOG_VAR), encoding="utf-8")
        (folder / name).chmod(0o755)
    return folder


class Run:
    """One example's directories: the rendered job, where it starts (with a CDPATH trap beside it), the records."""

    def __init__(self, root: Path, plan: Plan, workdir: str | None) -> None:
        self.job, self.base, self.log, self.trap = root / "job", root / "base", root / "log", root / "trap"
        for folder in (self.base, self.log, self.trap):
            folder.mkdir()
        write_plan(plan, self.job)
        if workdir is not None:
            # The same relative path under $CDPATH: a `cd` that looked there would land in the trap.
            (self.base / workdir).mkdir(parents=True)
            (self.trap / workdir).mkdir(parents=True)
        scripts = [path for path in self.job.iterdir() if path.suffix in (".sh", ".sbatch")]
        for script in scripts:
            checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
            assert checked.returncode == 0, f"bash -n {script.name}: {checked.stderr}"

    def bash(self, script: str, env: dict[str, str]) -> None:
        env = {**env, LOG_VAR: str(self.log), "CDPATH": str(self.trap)}
        done = subprocess.run(["bash", str(self.job / script)], cwd=self.base, env=env, capture_output=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        assert not (self.log / "injected").exists(), "a fragment of a value ran as a command"

    def record(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = marshal.loads((self.log / name).read_bytes())
        return data


def utf8(value: str) -> bytes:
    return value.encode("utf-8")


def resolved(argv: tuple[Any, ...], env: dict[bytes, bytes]) -> list[bytes]:
    """The words bash should pass: literal strings as written, run-time references with the values it had."""
    values = {os.fsdecode(key): os.fsdecode(value) for key, value in env.items()}
    return [utf8(arg.resolve(values) if isinstance(arg, Ref) else arg) for arg in argv]


def check_launcher(run: Run, plan: Plan, workdir: str, secret: str) -> None:
    """The launcher got the spec's argv, env and working directory, byte for byte."""
    spec, launch = plan.spec, plan.launch
    assert launch is not None
    got = run.record("python3")
    assert got["argv"][1:] == resolved(launch.argv, got["env"])[1:]
    entry = spec.entrypoint
    tail = [entry.script or entry.module or "", *entry.args]
    assert got["argv"][-len(tail):] == [utf8(word) for word in tail]  # the spec's own words, not the plan's
    # A relative output_dir is the workdir's, made absolute by the node script (the job may start in its code copy).
    output = spec.output_dir if spec.output_dir.startswith("/") else \
        os.path.normpath(os.path.join(run.base, workdir)) + "/" + spec.output_dir
    wanted = {**spec.env, "STJOBS_OUTPUT_DIR": output, "STJOBS_JOB_NAME": spec.name, SECRET: secret}
    assert {utf8(key): got["env"].get(utf8(key)) for key in wanted} == {utf8(k): utf8(v) for k, v in wanted.items()}
    assert got["cwd"] == os.fsencode(os.path.realpath(run.base / workdir))


def check_spec_file(run: Run, spec: stjobs.JobSpec) -> None:
    """stjobs.yaml: PyYAML reads back the spec's data, and stjobs reads back the same spec."""
    path = run.job / "stjobs.yaml"
    assert yaml.safe_load(path.read_text(encoding="utf-8")) == spec.to_data()
    assert stjobs.load_spec(path) == spec


# ---------------------------------------------------------------------------------------------------- local

@SETTINGS
@given(shape=st.sampled_from(SHAPES), entry=ENTRY, env=ENV, workdir=WORKDIR, output_dir=hostile(1), secret=hostile(),
       name=NAMES)
@example(shape=SHAPES[0], entry={"script": "train.py", "args": ["-x"]}, env={}, workdir="-x", output_dir="o",
         secret="", name="a")  # was `cd -x`: an option to cd
@example(shape=SHAPES[0], entry={"script": "t.py", "args": []}, env={}, workdir="-", output_dir="o",
         secret="", name="a")  # was `cd -`: back to $OLDPWD
@example(shape=SHAPES[1], entry={"script": "a\n#SBATCH --foo\nrm -rf x", "args": ["\nrm -rf x", f"$({PWN})"]},
         env={"CDPATH": f"`{PWN}`", "A": "'\n#SBATCH --x\n'"}, workdir="plain", output_dir="~/$HOME/*",
         secret=f"\n{PWN}\n", name="a")  # plain: found in $CDPATH first before the workdir got its ./
def test_node_script_starts_the_launcher_exactly(stubs: Path, shape: dict[str, Any], entry: dict[str, Any],
                                                env: dict[str, str], workdir: str, output_dir: str,
                                                secret: str, name: str) -> None:
    spec = make_spec(shape=shape, entrypoint=entry, env=env, workdir=workdir, output_dir=output_dir, name=name)
    plan = stjobs.render(spec, "local")
    with tempfile.TemporaryDirectory() as root:
        run = Run(Path(root), plan, workdir)
        # What the local supervisor gives each node (stjobs/backends/local/supervisor.py), with the stub as the Python.
        node = node_env(run.job, "inject-1", 0, spec.nodes, {"python": str(stubs / "python3"), "rdzv_port": 29511})
        node.update({"PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}", SECRET: secret})
        run.bash("launch.sh", node)
        check_launcher(run, plan, workdir, secret)
        check_spec_file(run, spec)
        if spec.launcher.value == "accelerate":
            config = yaml.safe_load((run.job / "accelerate.yaml").read_text(encoding="utf-8"))
            assert (config["num_machines"], config["num_processes"]) == (spec.nodes, spec.world_size)


# ---------------------------------------------------------------------------------------------------- SLURM

EXTRA = st.builds(lambda flag, value: f"--{flag}={value}", st.from_regex(r"[a-z][a-z-]{0,8}", fullmatch=True),
                  hostile().map(lambda text: text.replace("\n", " ")))  # one line each: validation refuses '\n'
CONTAINER = st.sampled_from([{}, {"container": "pyxis"}, {"container": "apptainer"}])
MOUNTS = st.lists(st.from_regex(MOUNT_PATTERN, fullmatch=True), max_size=3)
# Not accelerate on several nodes: nothing on SLURM sets the STJOBS_NODE_RANK its launch.sh requires, so every
# node stops with exit 64 before the launcher (a backend bug, reported on issue 7, not a quoting one).
SLURM_SHAPES = SHAPES


def header(text: str) -> list[str]:
    """The lines sbatch reads options from: everything before the first line that is not a comment or blank.
    Split at '\\n' only, as bash and sbatch do (str.splitlines would also split at U+2028, U+0085, '\\r')."""
    lines = text.split("\n")[1:]  # past the #! line
    end = next(index for index, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    return lines[:end]


@settings(max_examples=50, deadline=None)
@given(shape=st.sampled_from(SLURM_SHAPES), entry=ENTRY, env=ENV, workdir=WORKDIR, secret=hostile(),
       constraint=st.none() | st.from_regex(CONSTRAINT_PATTERN, fullmatch=True), extra=st.lists(EXTRA, max_size=3),
       container=CONTAINER, mounts=MOUNTS, partition=st.none() | st.from_regex(SLURM_NAME, fullmatch=True))
@example(shape=SHAPES[1], entry={"module": "pkg.train", "args": ["\n#SBATCH --foo", "\nrm -rf x"]},
         env={"X": "\n#SBATCH --foo\n"}, workdir="w", secret="", constraint="[a100*2&ib]|(v100)",
         extra=["--comment=it's $(x) `y` #z \\", "--mail-type=END"], container={}, mounts=[],
         partition="gpu.a-100")
def test_batch_script_runs_srun_and_the_launcher_exactly(
        stubs: Path, shape: dict[str, Any], entry: dict[str, Any], env: dict[str, str], workdir: str, secret: str,
        constraint: str | None, extra: list[str], container: dict[str, str], mounts: list[str],
        partition: str | None) -> None:
    options = {"constraint": constraint, "extra_sbatch": extra, "container_mounts": mounts, "partition": partition,
               **container}
    spec = make_spec(shape=shape, entrypoint=entry, env=env, workdir=workdir, image=IMAGE, slurm=options)
    plan = stjobs.render(spec, "slurm")
    text = plan.file(slurm.SBATCH_FILE).content
    sbatch_lines = [line for line in header(text) if line.startswith("#SBATCH")]
    meant = [*(slurm.sbatch_option(key, value) for key, value in slurm.sbatch_parameters(spec).items()),
             f"--output={slurm.OUTPUT_PATTERN}", *extra]
    assert sbatch_lines == [f"#SBATCH {option}" for option in meant]
    assert all(line.startswith("#") or not line.strip() for line in header(text))
    for option, value in (("constraint", constraint), ("partition", partition)):
        assert value is None or f"#SBATCH --{option}={value}" in sbatch_lines
    with tempfile.TemporaryDirectory() as root:
        run = Run(Path(root), plan, workdir)
        run.bash(slurm.SBATCH_FILE, {"PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}", "HOME": root,
                                     "STJOBS_JOB_DIR": str(run.job), "SLURM_JOB_ID": "4242",
                                     "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_SUBMIT_DIR": str(run.base),
                                     SECRET: secret})
        srun = run.record("srun")
        words = ["srun", *slurm.srun_options(spec), *slurm.node_command(spec)]
        assert srun["argv"][1:] == resolved(tuple(words), srun["env"])[1:]
        if container and mounts:  # the spec's mounts end pyxis' --container-mounts and Apptainer's --bind
            argv = srun["argv"]
            carrier = argv[argv.index(b"--bind") + 1] if b"--bind" in argv else \
                next(word for word in argv if word.startswith(b"--container-mounts="))
            assert carrier.endswith(utf8("," + ",".join(dict.fromkeys(mounts))))  # a repeated mount, once
        check_launcher(run, plan, workdir, secret)


# ---------------------------------------------------------------------------------------------------- Kubernetes

TOLERATION = st.builds(lambda key, value: {"key": key, "operator": "Equal", "value": value, "effect": "NoSchedule"},
                       hostile(), hostile())


@settings(max_examples=100, deadline=None)
@given(kind=st.sampled_from(["pytorchjob", "trainjob"]), nodes=st.sampled_from([1, 2]), entry=ENTRY, env=ENV,
       workdir=WORKDIR.map(lambda path: "/" + path), output_dir=hostile(1), secret=hostile(),
       tolerations=st.lists(TOLERATION, max_size=2), name=NAMES)
@example(kind="pytorchjob", nodes=2, entry={"script": "$(HOME)/t.py", "args": ["$(PET_NNODES)", "$$", "a: b"]},
         env={"A": "$(STJOBS_JOB_NAME)", "B": "yes", "C": "\u2028"}, workdir="/$(HOME)", output_dir="null",
         secret="", tolerations=[{"key": "k", "operator": "Equal", "value": "on", "effect": "NoSchedule"}],
         name="on")
def test_kubernetes_manifest_carries_values_exactly(kind: str, nodes: int, entry: dict[str, Any],
                                                   env: dict[str, str], workdir: str, output_dir: str, secret: str,
                                                   tolerations: list[dict[str, str]], name: str) -> None:
    if kind == "trainjob":
        workdir = "/workspace"  # a TrainJob has no working-directory field: other workdirs are refused
    spec = make_spec(entrypoint=entry, env=env, workdir=workdir, output_dir=output_dir, image=IMAGE, nodes=nodes,
                     k8s={"kind": kind, "tolerations": tolerations}, name=name)
    plan = stjobs.render(spec, "k8s")
    job = yaml.safe_load(plan.file(f"{kind}.yaml").content)
    assert yaml.safe_load(plan.file("kustomization.yaml").content)["resources"] == [f"{kind}.yaml"]
    assert yaml.safe_load(plan.file("stjobs.yaml").content) == spec.to_data()
    assert job["metadata"]["name"] == name and job["metadata"]["labels"]["app.kubernetes.io/name"] == name
    pods = (pytorchjob_pods if kind == "pytorchjob" else trainjob_pods)(job, secrets={SECRET: secret})
    assert len(pods) == nodes
    tail = [entry.get("script") or entry["module"], *entry["args"]]
    wanted = {**env, "STJOBS_OUTPUT_DIR": output_dir, SECRET: secret}
    for pod in pods:
        assert pod.main is not None
        # The kubelet's view, after $(VAR) expansion: the spec's words and values, exactly.
        assert pod.main.argv[-len(tail):] == tail
        assert {key: pod.main.env.get(key) for key in wanted} == wanted
        if kind == "pytorchjob":  # a TrainJob has no field for it (see the report on issue 7)
            assert pod.main.cwd == workdir
        for init in pod.init:
            assert init.argv[2] == k8s_manifest.WAIT_FOR_MASTER
    if kind == "pytorchjob":
        template = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
        assert template.get("tolerations", []) == tolerations


# ---------------------------------------------------------------------------------------------------- refusals

ENTRY_OK = {"script": "train.py"}


@pytest.mark.parametrize("fields,where", [
    ({"entrypoint": {"script": "train.py", "args": ["a\x00b"]}}, "entrypoint.args[0]"),
    ({"entrypoint": {"script": "t\x00.py"}}, "entrypoint.script"),
    ({"entrypoint": {"script": "\ud800.py"}}, "entrypoint.script"),  # what YAML's "\ud800" escape reads as
    ({"entrypoint": {"script": "-c.py"}}, "entrypoint.script"),
    ({"entrypoint": ENTRY_OK, "env": {"A": "x\x00"}}, "env.A"),
    ({"entrypoint": ENTRY_OK, "env": {"A": "\udcff"}}, "env.A"),
    ({"entrypoint": ENTRY_OK, "workdir": "a\x00b"}, "workdir"),
    ({"entrypoint": ENTRY_OK, "output_dir": "\x00"}, "output_dir"),
    *(({"entrypoint": ENTRY_OK, "env": {name: "1"}}, f"env.{name}")
      for name in ("UID", "PWD", "RANDOM", "SECONDS", "SHLVL", "_", "BASHOPTS", "BASH_ENV", "LINENO")),
    ({"entrypoint": ENTRY_OK, "secrets": ["PWD"]}, "secrets[0]"),
    *(({"entrypoint": ENTRY_OK, "slurm": {"constraint": text}}, "slurm.constraint")
      for text in ("a\n#SBATCH --foo", "a\nrm -rf x", "a100 & ib", 'a"b', "a#b", "a\\b")),
    ({"entrypoint": ENTRY_OK, "slurm": {"extra_sbatch": ["--comment=a\n#SBATCH --foo"]}}, "slurm.extra_sbatch[0]"),
])
def test_refused(fields: dict[str, Any], where: str) -> None:
    """What the strategies above leave out is refused at load time, naming the field: it never reaches a file."""
    with pytest.raises(SpecError) as caught:
        stjobs.validate_spec({"name": "inject", **fields})
    assert caught.value.field == where
    assert "\n" not in str(caught.value) and "\x00" not in str(caught.value)


def test_training_args_with_an_ambiguous_abbreviation_render() -> None:
    # --g could be --global-batch-size or --gather-across-devices: the training itself reports that; render must not.
    plan = stjobs.render(stjobs.validate_spec({"name": "inject", "entrypoint": {"args": ["--g"]}}), "local")
    assert plan.file("launch.sh").content.rstrip().endswith(" --g")
