"""The job spec: one frozen, validated value that every backend renders from.

Fields carry their unit in their name (``mem_gb``, ``time_min``, ``timeout_s``). Each field's parser holds the
text a user sees when the value is wrong, so errors name the field, the value and the expected form. Derived
defaults and cross-field rules live here too (``_resolve``), so no backend has to re-check them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

from stjobs.errors import SpecError
from stjobs.fields import (
    Boolean,
    Choice,
    Integer,
    Nested,
    Nullable,
    Number,
    Parser,
    Table,
    Text,
    Words,
    block_schema,
    build,
    internal_field,
    spec_field,
    to_data,
)
from stjobs.spec_image import BuildOptions
from stjobs.spec_k8s import K8sOptions, Kind

# Re-exported: stjobs.spec is where the spec's names are found.
from stjobs.spec_slurm import CONSTRAINT_PATTERN as CONSTRAINT_PATTERN
from stjobs.spec_slurm import MOUNT_PATTERN as MOUNT_PATTERN
from stjobs.spec_slurm import PARTITIONS_PATTERN as PARTITIONS_PATTERN
from stjobs.spec_slurm import SLURM_NAME as SLURM_NAME
from stjobs.spec_slurm import Container as Container
from stjobs.spec_slurm import GpuRequest as GpuRequest
from stjobs.spec_slurm import SlurmOptions
from stjobs.spec_sweep import SweepOptions

NAME_MAX = 42  # a job's name, whole; a sweep's points (NAME-p<index>) must fit it too
NAME_PATTERN = rf"[a-z]([a-z0-9-]{{0,{NAME_MAX - 2}}}[a-z0-9])?"
ENV_NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*"
MODULE_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
# A GPU type as SLURM's GRES and the GPU tables name it: v100, a100, h100, l40s, rtx_6000, ...
GPU_TYPE_PATTERN = r"[a-z0-9][a-z0-9_.-]{0,39}"
# Linux's default ip_local_port_range: a rendezvous port in here can be taken by any outgoing connection.
EPHEMERAL_PORTS = (32768, 60999)
# Names the launcher owns; a user value would silently fight torchrun's own.
RESERVED_ENV = frozenset(
    {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
     "MASTER_PORT", "NODE_RANK"}
)
RESERVED_ENV_PREFIXES = ("STJOBS_", "TORCHELASTIC_", "PET_")
# Names bash manages itself: the node script's `export NAME=value` fails on the read-only ones (UID, EUID, PPID,
# SHELLOPTS, BASHOPTS) and the launcher would see bash's own value of the others (RANDOM, SECONDS, LINENO, PWD after
# the script's cd, '_' as the launcher's path, SHLVL lowered by exec, ...). BASH* covers BASHPID, BASH_ARGV etc.
SHELL_ENV = frozenset(
    {"_", "UID", "EUID", "PPID", "SHELLOPTS", "RANDOM", "SRANDOM", "SECONDS", "LINENO", "EPOCHSECONDS",
     "EPOCHREALTIME", "HISTCMD", "PWD", "OLDPWD", "FUNCNAME", "GROUPS", "DIRSTACK", "PIPESTATUS", "SHLVL", "OPTIND",
     "OPTARG", "COMP_WORDS", "COMP_CWORD", "COMP_LINE", "COMP_POINT", "COMP_TYPE", "COMP_KEY", "COMPREPLY"}
)
SHELL_ENV_PREFIX = "BASH"
# An env key that looks like a credential: its value would land in rendered files, so we refuse it.
SECRET_LIKE = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY)", re.IGNORECASE)


class Strategy(str, Enum):
    ddp = "ddp"
    dp = "dp"
    fsdp = "fsdp"
    single = "single"


class Launcher(str, Enum):
    torchrun = "torchrun"
    accelerate = "accelerate"


class Fabric(str, Enum):
    none = "none"
    infiniband = "infiniband"
    efa = "efa"


@dataclass(frozen=True)
class Entrypoint:
    """What each process runs: a Python module (``python -m``) or a script path, plus its arguments."""

    module: str | None = spec_field(Nullable(Text("a dotted Python module name (default: stjobs.train)",
                                                  MODULE_PATTERN, 200)), None)
    script: str | None = spec_field(Nullable(Text("a path to a Python script, e.g. train.py")), None)
    args: tuple[str, ...] = spec_field(Words("a list of strings"), ())
    resumable: bool | None = spec_field(
        Nullable(Boolean()), None,
        doc="whether a preempted run saves and resumes (true: requeued on preemption or time limit; default: true "
            "for the built-in training, false for a script, which needs stjobs.train.callbacks)")

    @staticmethod
    def _resolve(values: dict[str, Any]) -> None:
        if values["module"] is None and values["script"] is None:
            values["module"] = "stjobs.train"  # the built-in training entrypoint
        elif values["module"] is not None and values["script"] is not None:
            raise SpecError("entrypoint", {"module": values["module"], "script": values["script"]},
                            "exactly one of entrypoint.module or entrypoint.script")
        elif values["script"] is not None and values["script"].startswith("-"):
            # python, torchrun and accelerate would all read it as one of their own options.
            raise SpecError("entrypoint.script", values["script"], "a script path that does not start with '-' "
                            f"(write ./{values['script']})")
        if values["resumable"] is None:
            # Only the built-in training is known to checkpoint on USR2 and resume; a script written from the
            # sentence-transformers docs has no handler and would be killed and restarted from step 0.
            values["resumable"] = values["module"] == "stjobs.train"


class NodeCount(Parser[Any]):
    """``4`` or, for elastic training, ``"2:4"`` (at least 2, at most 4 nodes, like torchrun's --nnodes)."""

    expected = "a whole number of nodes from 1 to 1024, or 'MIN:MAX' for an elastic job (e.g. '2:4')"

    def parse(self, value: Any, field: str) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1024:
            return value
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", value) if isinstance(value, str) else None
        if match is None:
            raise self.fail(field, value)
        low, high = int(match.group(1)), int(match.group(2))
        if not 1 <= low <= high <= 1024:
            raise self.fail(field, value)
        return (low, high)

    def schema(self) -> dict[str, Any]:
        return {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 1024},
                          {"type": "string", "pattern": r"^\d+:\d+$"}]}


class PortRange(Parser[tuple[int, int]]):
    expected = ("two ports [low, high] from 1024 to 65535, low < high, outside the ephemeral range 32768-60999 "
                "(or 'low-high')")

    def parse(self, value: Any, field: str) -> tuple[int, int]:
        if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*-\s*\d+\s*", value):
            value = [int(part) for part in value.split("-")]
        if (not isinstance(value, (list, tuple)) or len(value) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise self.fail(field, value)
        low, high = value
        if not (1024 <= low < high <= 65535) or (low <= EPHEMERAL_PORTS[1] and high >= EPHEMERAL_PORTS[0]):
            raise self.fail(field, list(value))
        return (low, high)

    def schema(self) -> dict[str, Any]:
        pair = {"type": "array", "items": {"type": "integer", "minimum": 1024, "maximum": 65535},
                "minItems": 2, "maxItems": 2}
        return {"anyOf": [pair, {"type": "string", "pattern": r"^\d+-\d+$"}]}


@dataclass(frozen=True)
class Rendezvous:
    port: int | None = spec_field(Nullable(Integer(1024, 65535, "a TCP port from 1024 to 65535 outside "
                                                   "32768-60999, or null to derive one")), None)
    port_range: tuple[int, int] = spec_field(PortRange(), (29500, 29999))
    timeout_s: int = spec_field(Integer(10, 86400, "whole seconds from 10 to 86400"), 900)

    @staticmethod
    def _resolve(values: dict[str, Any]) -> None:
        port = values["port"]
        if port is not None and EPHEMERAL_PORTS[0] <= port <= EPHEMERAL_PORTS[1]:
            raise SpecError("rendezvous.port", port, "a port outside the ephemeral range 32768-60999")


@dataclass(frozen=True)
class NcclOptions:
    debug: bool = spec_field(Boolean(), False, doc="NCCL_DEBUG=INFO and TORCH_DISTRIBUTED_DEBUG=DETAIL")
    fabric: Fabric = spec_field(Choice(Fabric), Fabric.none, doc="network preset: none, infiniband, efa")
    timeout_s: int = spec_field(Integer(60, 86400, "the process-group timeout in seconds, from 60 to 86400"),
                                1800)


@dataclass(frozen=True)
class SnapshotOptions:
    enabled: bool = spec_field(Boolean(), True, doc="copy the workdir's code into the job directory at submit "
                                                     "(local and SLURM), so later edits do not reach the job")
    max_mb: int = spec_field(Integer(1, 100000, "the most MB of code a snapshot may copy, from 1 to 100000"), 200)


def _check_env_name(key: str, value: Any, field: str) -> None:
    if not re.fullmatch(ENV_NAME_PATTERN, key):
        raise SpecError(field, key, "a variable name of letters, digits and '_', not starting with a digit")
    if key in RESERVED_ENV or key.startswith(RESERVED_ENV_PREFIXES):
        raise SpecError(field, key, "a name the launcher does not own (RANK, WORLD_SIZE, MASTER_*, STJOBS_*, "
                        "TORCHELASTIC_*, PET_* are set by stjobs and torchrun)")
    if key in SHELL_ENV or key.startswith(SHELL_ENV_PREFIX):
        raise SpecError(field, key, "a name bash does not manage itself (UID, PWD, RANDOM, SECONDS, SHLVL, '_', "
                        "BASH*, ...: the launch script could not pass it on as written)")
    if SECRET_LIKE.search(key):
        raise SpecError(field, "<hidden>", f"no credential values in the spec: list {key} under secrets and "
                        "export it where you submit")


@dataclass(frozen=True)
class JobSpec:
    """A whole job. Build it with :func:`stjobs.config.load_spec`; it never changes after validation."""

    name: str = spec_field(Text("lowercase letters, digits and '-', starting with a letter, at most "
                                f"{NAME_MAX} characters", NAME_PATTERN, NAME_MAX))
    entrypoint: Entrypoint = spec_field(Nested(Entrypoint), doc="module or script, and args")
    nodes: int = spec_field(NodeCount(), 1, doc="nodes, or 'MIN:MAX' for elastic training (k8s PyTorchJob)")
    min_nodes: int | None = spec_field(Nullable(Integer(1, 1024, "the fewest nodes an elastic job runs on, from 1 "
                                                        "to nodes (nodes: 'MIN:MAX' sets it)")), None)
    procs_per_node: int = spec_field(Nullable(Integer(1, 64, "a whole number of processes per node from 1 to 64 "
                                                      "(default: GPUs per node, or 1)")), None)
    gpus_per_node: int = spec_field(Integer(0, 16, "a whole number of GPUs per node from 0 to 16"), 0)
    gpu_type: str | None = spec_field(Nullable(Text("a GPU type as the site names it, lowercase, e.g. v100, a100, "
                                                    "h100 (SLURM asks for it; images and precision follow it)",
                                                    GPU_TYPE_PATTERN, 40)), None)
    cpus_per_task: int = spec_field(Nullable(Integer(1, 1024, "a whole number of CPUs for all processes of one "
                                                     "node, from 1 to 1024 (default: one per process)")), None)
    mem_gb: float | None = spec_field(Nullable(Number(0, 65536, "memory per node in GB, greater than 0")), None)
    time_min: int = spec_field(Integer(1, 525600, "a wall-clock limit in whole minutes from 1 to 525600"), 60)
    strategy: Strategy = spec_field(Choice(Strategy), Strategy.ddp)
    launcher: Launcher = spec_field(Choice(Launcher), Launcher.torchrun)
    python: str | None = spec_field(Nullable(Text(
        "the Python interpreter every node runs, a path or a name on the nodes' PATH (default: the one running "
        "`stjobs submit`; python3 for a rendered file you submit yourself)", r"[^\n]+", 1000)), None)
    image: str | None = spec_field(Nullable(Text("a container image reference (e.g. ghcr.io/org/train:1.0) or an "
                                                 "Apptainer .sif path", r"[A-Za-z0-9/][A-Za-z0-9._/:@+-]*", 512)),
                                   None)
    env: dict[str, str] = spec_field(Table("a mapping of environment variable names to string values",
                                           _check_env_name), {})
    secrets: tuple[str, ...] = spec_field(
        Words("a list of environment variable names whose values come from the submitting environment",
              Text("an environment variable name (letters, digits, '_')", ENV_NAME_PATTERN, 200), unique=True), ())
    workdir: str = spec_field(Text("a directory path, relative to the spec file (the job starts there, and the "
                                   "script, data and output paths are taken from it)"), ".")
    output_dir: str = spec_field(Nullable(Text("a directory path for checkpoints and the final model "
                                               "(default: outputs/NAME)")), None)
    rendezvous: Rendezvous = spec_field(Nested(Rendezvous), doc="port, port_range, timeout_s")
    max_restarts: int = spec_field(Integer(0, 100, "a whole number of restarts from 0 to 100"), 0)
    nccl: NcclOptions = spec_field(Nested(NcclOptions), doc="debug, fabric, timeout_s")
    build: BuildOptions = spec_field(Nested(BuildOptions), doc="how the image is built (image names it)")
    snapshot: SnapshotOptions = spec_field(Nested(SnapshotOptions), doc="the code copy made at submit: enabled, "
                                                                        "max_mb")
    slurm: SlurmOptions = spec_field(Nested(SlurmOptions), doc="SLURM options")
    k8s: K8sOptions = spec_field(Nested(K8sOptions), doc="Kubernetes options")
    sweep: SweepOptions = spec_field(Nested(SweepOptions), doc="grid, points, max_running: one job per point "
                                                                "(stjobs.sweep); on SLURM one job array")
    templates: str | None = spec_field(Nullable(Text("a directory of template overrides, relative to the spec "
                                                     "file (files named like stjobs' templates replace them)")),
                                       None)
    # Where the spec file was read from: relative paths in it are taken from there. Not a field of the spec
    # language (not in its data or schema); None for a spec built from data, meaning the current directory.
    spec_dir: str | None = internal_field(None)
    # What the site and user defaults files gave this spec, one "SOURCE: field, field" entry per file that gave a
    # value (stjobs.defaults): the plan notes it. Not a field of the spec language either.
    defaults_from: tuple[str, ...] = internal_field(())
    # Old keys that moved: refused with where they went instead of "unknown field".
    _moved: ClassVar[dict[str, str]] = {"local": "python: at the top of the spec (local.python moved there: it "
                                                 "names the interpreter on every backend)"}

    @staticmethod
    def _resolve(values: dict[str, Any]) -> None:
        # Defaults that depend on other fields are filled once here, so the frozen value is complete.
        strategy: Strategy = values["strategy"]
        if isinstance(values["nodes"], tuple):
            values["min_nodes"], values["nodes"] = values["nodes"]
        nodes: int = values["nodes"]
        if values["min_nodes"] is not None:
            if values["min_nodes"] > nodes:
                raise SpecError("min_nodes", values["min_nodes"], f"at most nodes ({nodes})")
            if values["min_nodes"] == nodes:
                values["min_nodes"] = None  # 'N:N' is a fixed size
            elif values["k8s"].kind is Kind.trainjob:
                raise SpecError("nodes", f"{values['min_nodes']}:{nodes}", "a fixed node count with k8s.kind: "
                                "trainjob (Kubeflow Trainer has no elastic training; use k8s.kind: pytorchjob)")
        gpus: int = values["gpus_per_node"]
        procs = values["procs_per_node"]
        if procs is None:
            procs = 1 if strategy in (Strategy.dp, Strategy.single) else max(gpus, 1)
        cpus = values["cpus_per_task"] or procs
        values.update(procs_per_node=procs, cpus_per_task=cpus,
                      output_dir=values["output_dir"] or f"outputs/{values['name']}")

        if strategy is Strategy.dp:
            if nodes != 1:
                raise SpecError("nodes", nodes, "1 with strategy dp (DataParallel is single-node; use ddp)")
            if procs != 1:
                raise SpecError("procs_per_node", procs, "1 with strategy dp (one process drives every GPU)")
        if strategy is Strategy.single and (nodes != 1 or procs != 1):
            raise SpecError("strategy", "single", f"nodes: 1 and procs_per_node: 1 (got nodes={nodes}, "
                            f"procs_per_node={procs}); use ddp for several processes")
        if strategy is Strategy.single and gpus > 1:
            # One process that sees several GPUs: the Trainer wraps DataParallel over all of them.
            raise SpecError("gpus_per_node", gpus, "0 or 1 with strategy single (dp for one process over several "
                            "GPUs, ddp for one process per GPU)")
        if gpus and strategy in (Strategy.ddp, Strategy.fsdp) and procs != gpus:
            raise SpecError("procs_per_node", procs, f"equal to gpus_per_node ({gpus}): one process per GPU")
        if values["launcher"] is Launcher.accelerate and strategy is Strategy.dp:
            raise SpecError("launcher", "accelerate", "torchrun with strategy dp (accelerate has no DataParallel)")
        if cpus < procs:
            raise SpecError("cpus_per_task", cpus, f"at least procs_per_node ({procs}): one CPU per process")
        entry: Entrypoint = values["entrypoint"]
        if strategy is Strategy.fsdp and entry.module == "stjobs.train" and "--eval-data" in entry.args \
                and "--no-evaluator" not in entry.args:
            # sentence-transformers runs its evaluator on one rank, while every FSDP forward needs all ranks.
            raise SpecError("entrypoint.args", "--eval-data", "no evaluator with strategy fsdp (drop --eval-data "
                            "or add --no-evaluator), or strategy ddp")
        if values["gpu_type"] is not None and not gpus:
            raise SpecError("gpu_type", values["gpu_type"], "gpus_per_node of 1 or more with a gpu_type (or no "
                            "gpu_type for a CPU job)")
        slurm: SlurmOptions = values["slurm"]
        if slurm.container is not Container.none and values["image"] is None:
            raise SpecError("image", None, f"a container image when slurm.container is {slurm.container.value}: "
                            "pass --image REF or set image: in the spec")
        clash = sorted(set(values["secrets"]) & set(values["env"]))
        if clash:
            raise SpecError(f"env.{clash[0]}", "<hidden>", "a name in env or in secrets, not both")
        for index, secret in enumerate(values["secrets"]):
            # A secret reaches the launcher through the node script's environment, where bash owns these names.
            if secret in SHELL_ENV or secret.startswith(SHELL_ENV_PREFIX):
                raise SpecError(f"secrets[{index}]", secret, "a name bash does not manage itself (not UID, PWD, "
                                "RANDOM, SECONDS, SHLVL, '_', BASH*, ...)")

    @property
    def elastic(self) -> bool:
        return self.min_nodes is not None

    @property
    def templates_dir(self) -> Path | None:
        """The site template directory, ``templates`` taken from the spec file's directory when relative."""
        if self.templates is None:
            return None
        return Path(self.spec_dir, self.templates) if self.spec_dir else Path(self.templates)

    @property
    def workdir_path(self) -> str:
        """Where the job starts on the machines that read the spec file's directory (local, SLURM's shared file
        system): ``workdir`` taken from the spec file, so ``cd out && sbatch job.sbatch`` starts in the same
        place as a submit from anywhere else. A spec built from data keeps it as written (the submit
        directory's)."""
        if self.spec_dir is None or os.path.isabs(self.workdir):
            return self.workdir
        return os.path.normpath(os.path.join(self.spec_dir, self.workdir))

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    @property
    def threads_per_proc(self) -> int:
        """OMP threads per rank: the node's CPUs split evenly, so ranks never oversubscribe the cores."""
        return max(1, self.cpus_per_task // self.procs_per_node)

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = to_data(self)
        if not self.sweep.enabled:
            del data["sweep"]  # a job of one point says nothing of sweeps (its stjobs.yaml stays as it was)
        return data

    @staticmethod
    def json_schema() -> dict[str, Any]:
        schema = block_schema(JobSpec)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        return schema


def parse_spec(data: Any) -> JobSpec:
    return build(JobSpec, data)
