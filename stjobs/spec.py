"""The job spec: one frozen, validated value that every backend renders from.

Fields carry their unit in their name (``mem_gb``, ``time_min``, ``timeout_s``). Each field's ``expected`` text is
what a user sees when the value is wrong, so validation errors name the field, the value and the expected form.
Cross-field rules live here too, so no backend has to re-check them.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stjobs.errors import SpecError

NAME_PATTERN = r"^[a-z]([a-z0-9-]{0,40}[a-z0-9])?$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
MODULE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
# Linux's default ip_local_port_range: a rendezvous port in here can be taken by any outgoing connection.
EPHEMERAL_PORTS = (32768, 60999)
# Names the launcher owns; a user value would silently fight torchrun's own.
RESERVED_ENV = frozenset(
    {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
     "MASTER_PORT", "NODE_RANK"}
)
RESERVED_ENV_PREFIXES = ("STJOBS_", "TORCHELASTIC_", "PET_")
# An env key that looks like a credential: its value would land in rendered files, so we refuse it.
SECRET_LIKE = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY)", re.IGNORECASE)


def expected(text: str, **kwargs: Any) -> Any:
    """A pydantic Field whose metadata says, in words, what a valid value looks like."""
    extra: dict[str, Any] = {"expected": text}
    return Field(json_schema_extra=extra, description=kwargs.pop("description", text), **kwargs)


class Strategy(str, Enum):
    ddp = "ddp"
    dp = "dp"
    fsdp = "fsdp"
    single = "single"


class Launcher(str, Enum):
    torchrun = "torchrun"
    accelerate = "accelerate"


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class Entrypoint(_Block):
    """What each process runs: a Python module (``python -m``) or a script path, plus its arguments."""

    module: str | None = expected("a dotted Python module name, e.g. stjobs.train", default=None,
                                  pattern=MODULE_PATTERN)
    script: str | None = expected("a path to a Python script, e.g. train.py", default=None, min_length=1)
    args: tuple[str, ...] = expected("a list of strings", default=())

    @field_validator("args", mode="before")
    @classmethod
    def _scalars_to_strings(cls, value: Any) -> Any:
        # YAML turns `--max-steps 300` into an int; arguments are strings on any command line.
        if isinstance(value, (list, tuple)):
            out = []
            for index, item in enumerate(value):
                if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                    raise SpecError(f"entrypoint.args[{index}]", item, "a string or a number")
                out.append(item if isinstance(item, str) else str(item))
            return tuple(out)
        return value

    @model_validator(mode="after")
    def _one_target(self) -> Entrypoint:
        if (self.module is None) == (self.script is None):
            raise SpecError("entrypoint", {"module": self.module, "script": self.script},
                            "exactly one of entrypoint.module or entrypoint.script")
        return self


class Rendezvous(_Block):
    port: int | None = expected("a TCP port from 1024 to 65535, or null to derive one", default=None,
                                ge=1024, le=65535)
    port_range: tuple[int, int] = expected("two ports [low, high] from 1024 to 65535, low < high, "
                                           "outside the ephemeral range 32768-60999", default=(29500, 29999))
    timeout_s: int = expected("whole seconds from 10 to 86400", default=900, ge=10, le=86400)

    @field_validator("port_range", mode="before")
    @classmethod
    def _parse_range(cls, value: Any) -> Any:
        if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*-\s*\d+\s*", value):
            low, high = value.split("-")
            return (int(low), int(high))
        return value

    @model_validator(mode="after")
    def _check_ports(self) -> Rendezvous:
        low, high = self.port_range
        if not (1024 <= low < high <= 65535) or (low <= EPHEMERAL_PORTS[1] and high >= EPHEMERAL_PORTS[0]):
            raise SpecError("rendezvous.port_range", list(self.port_range),
                            "two ports [low, high] from 1024 to 65535, low < high, outside 32768-60999")
        if self.port is not None and EPHEMERAL_PORTS[0] <= self.port <= EPHEMERAL_PORTS[1]:
            raise SpecError("rendezvous.port", self.port, "a port outside the ephemeral range 32768-60999")
        return self


class SlurmOptions(_Block):
    partition: str | None = expected("a SLURM partition name", default=None, pattern=r"^[\w.-]+$")
    account: str | None = expected("a SLURM account name", default=None, pattern=r"^[\w.-]+$")
    qos: str | None = expected("a SLURM QOS name", default=None, pattern=r"^[\w.-]+$")
    constraint: str | None = expected("a SLURM feature expression, e.g. a100&ib", default=None, min_length=1)
    exclusive: bool = expected("true or false", default=False)
    extra_sbatch: tuple[str, ...] = expected("a list of sbatch options, e.g. --mail-type=END", default=())
    setup: tuple[str, ...] = expected("a list of shell lines run before the launch, e.g. module load cuda",
                                      default=())


class K8sOptions(_Block):
    namespace: str = expected("a Kubernetes namespace (DNS-1123 label)", default="default",
                              pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    service_account: str | None = expected("a Kubernetes service account name", default=None,
                                           pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class LocalOptions(_Block):
    python: str | None = expected("the Python interpreter that runs torchrun; default: the one running stjobs",
                                  default=None, min_length=1)


class JobSpec(_Block):
    """A whole job. Build it with :func:`stjobs.config.load_spec`; it never changes after validation."""

    name: str = expected("lowercase letters, digits and '-', starting with a letter, at most 42 characters",
                         pattern=NAME_PATTERN)
    entrypoint: Entrypoint = expected("a mapping with module or script, and args",
                                      default=Entrypoint(module="stjobs.train"))
    nodes: int = expected("a whole number of nodes from 1 to 1024", default=1, ge=1, le=1024)
    procs_per_node: int = expected("a whole number of processes per node from 1 to 64 (default: GPUs per node, "
                                   "or 1)", default=0, ge=0, le=64)
    gpus_per_node: int = expected("a whole number of GPUs per node from 0 to 16", default=0, ge=0, le=16)
    cpus_per_task: int = expected("a whole number of CPUs for all processes of one node, from 1 to 1024 "
                                  "(default: one per process)", default=0, ge=0, le=1024)
    mem_gb: float | None = expected("memory per node in GB, greater than 0", default=None, gt=0, le=65536)
    time_min: int = expected("a wall-clock limit in whole minutes from 1 to 525600", default=60, ge=1, le=525600)
    strategy: Strategy = expected("one of ddp, dp, fsdp, single", default=Strategy.ddp)
    launcher: Launcher = expected("one of torchrun, accelerate", default=Launcher.torchrun)
    image: str | None = expected("a container image reference, e.g. ghcr.io/org/train:1.0", default=None,
                                 pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")
    env: dict[str, str] = expected("a mapping of environment variable names to string values", default={})
    secrets: tuple[str, ...] = expected("a list of environment variable names whose values come from the "
                                        "submitting environment (never from the spec)", default=())
    workdir: str = expected("a directory path (relative paths are taken from where the job starts)",
                            default=".", min_length=1)
    output_dir: str = expected("a directory path for checkpoints and the final model", default="", min_length=0)
    rendezvous: Rendezvous = expected("a mapping with port, port_range, timeout_s", default=Rendezvous())
    max_restarts: int = expected("a whole number of restarts from 0 to 100", default=0, ge=0, le=100)
    slurm: SlurmOptions = expected("a mapping of SLURM options", default=SlurmOptions())
    k8s: K8sOptions = expected("a mapping of Kubernetes options", default=K8sOptions())
    local: LocalOptions = expected("a mapping of local-backend options", default=LocalOptions())

    @field_validator("env", mode="before")
    @classmethod
    def _env_values(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out: dict[str, str] = {}
        for key, item in value.items():
            field = f"env.{key}"
            if not isinstance(key, str) or not re.fullmatch(ENV_NAME_PATTERN, key):
                raise SpecError(field, key, "a variable name of letters, digits and '_', not starting with a digit")
            if key in RESERVED_ENV or key.startswith(RESERVED_ENV_PREFIXES):
                raise SpecError(field, key, "a name the launcher does not own (RANK, WORLD_SIZE, MASTER_*, "
                                "STJOBS_*, TORCHELASTIC_*, PET_* are set by stjobs and torchrun)")
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise SpecError(field, item, "a string or a number")
            if SECRET_LIKE.search(key):
                raise SpecError(field, "<hidden>", f"no credential values in the spec: list {key} under secrets "
                                "and export it where you submit")
            out[key] = item if isinstance(item, str) else str(item)
        return out

    @field_validator("secrets", mode="after")
    @classmethod
    def _secret_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for index, key in enumerate(value):
            if not re.fullmatch(ENV_NAME_PATTERN, key):
                raise SpecError(f"secrets[{index}]", key, "an environment variable name (letters, digits, '_')")
        if len(set(value)) != len(value):
            raise SpecError("secrets", list(value), "each name once")
        return value

    @model_validator(mode="after")
    def _resolve_and_cross_check(self) -> JobSpec:
        # Defaults that depend on other fields are resolved once here, so the frozen value is complete.
        procs = self.procs_per_node
        if procs == 0:
            procs = 1 if self.strategy in (Strategy.dp, Strategy.single) else max(self.gpus_per_node, 1)
        cpus = self.cpus_per_task or procs
        output_dir = self.output_dir or f"outputs/{self.name}"
        object.__setattr__(self, "procs_per_node", procs)
        object.__setattr__(self, "cpus_per_task", cpus)
        object.__setattr__(self, "output_dir", output_dir)

        if self.strategy is Strategy.dp:
            if self.nodes != 1:
                raise SpecError("nodes", self.nodes, "1 with strategy dp (DataParallel is single-node; use ddp)")
            if procs != 1:
                raise SpecError("procs_per_node", procs, "1 with strategy dp (one process drives every GPU)")
        if self.strategy is Strategy.single and (self.nodes != 1 or procs != 1):
            raise SpecError("strategy", "single", f"nodes: 1 and procs_per_node: 1 (got nodes={self.nodes}, "
                            f"procs_per_node={procs}); use ddp for several processes")
        if self.gpus_per_node and self.strategy in (Strategy.ddp, Strategy.fsdp) and procs != self.gpus_per_node:
            raise SpecError("procs_per_node", procs, f"equal to gpus_per_node ({self.gpus_per_node}): one "
                            "process per GPU")
        if self.launcher is Launcher.accelerate and self.strategy is Strategy.dp:
            raise SpecError("launcher", "accelerate", "torchrun with strategy dp (accelerate has no DataParallel)")
        if cpus < procs:
            raise SpecError("cpus_per_task", cpus, f"at least procs_per_node ({procs}): one CPU per process")
        clash = sorted(set(self.secrets) & set(self.env))
        if clash:
            raise SpecError(f"env.{clash[0]}", "<hidden>", "a name in env or in secrets, not both")
        return self

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    @property
    def threads_per_proc(self) -> int:
        """OMP threads per rank: the node's CPUs split evenly, so ranks never oversubscribe the cores."""
        return max(1, self.cpus_per_task // self.procs_per_node)
