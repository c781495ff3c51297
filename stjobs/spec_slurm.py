"""The ``slurm:`` block of the job spec: where a SLURM site runs the job and how (partition, account, GPUs in
the site's form, containers, preemption). Patterns follow what sbatch and srun accept, so a value that passes
here reaches an ``#SBATCH`` line or srun's argv unchanged and unquoted-safe."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from stjobs.fields import Boolean, Choice, Integer, Nullable, Text, Words, spec_field

SLURM_NAME = r"[\w.-]+"
# sbatch takes a comma list of partitions and starts the job in whichever can run it first.
PARTITIONS_PATTERN = r"[\w.-]+(,[\w.-]+)*"
# A feature expression as sbatch reads it: names joined by & | , * : and grouped by [] or (). It is printed on an
# #SBATCH line, which ends at a newline and which sbatch splits at spaces, quotes and '#': none of those can appear.
CONSTRAINT_PATTERN = r"[A-Za-z0-9_.&|!*,:()\[\]@+-]+"
# Mount paths end up inside double quotes next to run-time variables: no quote, '$' or space can appear.
MOUNT_PATTERN = r"[A-Za-z0-9_./@+-]+:[A-Za-z0-9_./@+-]+(:[a-z]+)?"
# ssh's destination: a Host alias of the user's ssh config, a host, or user@host. Never a leading '-' (ssh would
# read an option) and nothing a shell or rsync's host:path would split.
REMOTE_PATTERN = r"([A-Za-z0-9_][A-Za-z0-9._-]*@)?[A-Za-z0-9_][A-Za-z0-9._-]*"


class GpuRequest(str, Enum):
    """How a site wants GPUs asked for: ``--gpus-per-node=TYPE:N`` (select/cons_tres, the modern default),
    ``--gres=gpu:TYPE:N`` (sites still on cons_res), or N untyped GPUs plus the type as a node feature
    (``--constraint``, for sites that tag GPU nodes with features)."""

    gpus_per_node = "gpus-per-node"
    gres = "gres"
    constraint = "constraint"


class Container(str, Enum):
    none = "none"
    pyxis = "pyxis"
    apptainer = "apptainer"


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = spec_field(Nullable(Text("a SLURM partition name, or a comma list of them (the job "
                                                     "starts in the first that can run it)", PARTITIONS_PATTERN,
                                                     200)), None)
    account: str | None = spec_field(Nullable(Text("a SLURM account name", SLURM_NAME, 200)), None)
    qos: str | None = spec_field(Nullable(Text("a SLURM QOS name", SLURM_NAME, 200)), None)
    constraint: str | None = spec_field(Nullable(Text("a SLURM feature expression of letters, digits and "
                                                      "._&|!*,:()[]@+- (no spaces), e.g. a100&ib",
                                                      CONSTRAINT_PATTERN, 1000)), None)
    exclusive: bool = spec_field(Boolean(), False)
    extra_sbatch: tuple[str, ...] = spec_field(
        Words("a list of sbatch options, e.g. --mail-type=END",
              Text("one sbatch option starting with --, e.g. --mail-type=END", r"--[a-z][a-z-]*(=[^\n]*)?", 500)),
        ())
    setup: tuple[str, ...] = spec_field(
        Words("a list of shell lines run in the batch script before the launch, e.g. module load cuda",
              Text("one line of shell (no newline)", r"[^\n]+", 2000)), ())
    container: Container = spec_field(Choice(Container), Container.none)
    container_mounts: tuple[str, ...] = spec_field(
        Words("a list of mounts SRC:DST[:FLAGS]",
              Text("a mount SRC:DST[:FLAGS] of letters, digits and ._/@+-", MOUNT_PATTERN, 1000)), ())
    signal_lead_s: int = spec_field(Integer(0, 3600, "seconds before the time limit at which the job is told to "
                                            "checkpoint (0: never), from 0 to 3600"), 120)
    max_requeues: int = spec_field(Integer(0, 100, "how often a preempted or timed-out job requeues itself, "
                                           "from 0 to 100"), 3)
    srun_wait_s: int = spec_field(Integer(1, 86400, "seconds srun waits for the other nodes once one node's task "
                                          "ended, from 1 to 86400"), 60)
    mpi: str | None = spec_field(Nullable(Text("an srun --mpi plugin name, e.g. pmix", SLURM_NAME, 50)), None)
    gpu_request: GpuRequest = spec_field(Choice(GpuRequest), GpuRequest.gpus_per_node,
                                         doc="how gpu_type is asked for: gpus-per-node, gres, constraint")
    remote: str | None = spec_field(Nullable(Text("a login node as ssh names it: a Host alias of your ssh config, "
                                                  "host or user@host", REMOTE_PATTERN, 255)), None,
                                    doc="submit over ssh to this login node (plain sbatch there); null: here")
