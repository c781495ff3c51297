"""What a SLURM site offers, read from SLURM itself, and the job values that fit it (for ``stjobs init``).

:func:`read_slurm_site` makes one ``sinfo`` call (partitions, their time limits, node counts, GRES, CPUs and memory
per node), one ``sacctmgr`` call (the caller's default account and associations: accounts, partitions, QoS) and,
where there is accounting, one ``scontrol`` call (the QoS each partition allows); :func:`propose` is pure: the site's
facts and the user's answers so far in, values out (a partition with GPUs whose time limit allows the job, GPUs per
node and their type from its GRES, a time within its limit, the node's share of CPUs and memory, a QoS the user may
use there). Parsing is forgiving: a line it cannot read is skipped, a client that is missing or fails becomes a note
(or, for QoS on a site without accounting, nothing).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# One sinfo call: partition (a '*' marks the default), up/down, time limit, node count, GRES, CPUs, memory (MB).
# Without -N sinfo prints one line per partition and node shape, so a partition of mixed nodes has several lines.
SINFO_FORMAT = "%P|%a|%l|%D|%G|%c|%m"
# One sacctmgr call: the user record with every association (one line each, the default account on every line).
SACCTMGR_FORMAT = "format=defaultaccount,account,partition,defaultqos,qos"
DESIRED_TIME_MIN = 60
# RealMemory is what a node has, not what jobs get: the OS, slurmd and a site's MemSpecLimit keep some, and a job
# asking for all of it is refused or never starts. A proposal asks for this share of it.
MEM_HEADROOM = 0.9
CPU_JOB_CPUS = 8  # a CPU-only job: enough threads for tokenizing and a small model, not a whole node held idle


@dataclass(frozen=True)
class NodeGroup:
    """Nodes of one shape in a partition (one line of sinfo)."""

    nodes: int
    gpus: int = 0
    gpu_type: str | None = None
    cpus: int | None = None
    mem_mb: int | None = None


@dataclass(frozen=True)
class Partition:
    name: str
    default: bool = False
    up: bool = True
    time_limit_min: int | None = None  # None: no limit
    groups: tuple[NodeGroup, ...] = ()
    # From scontrol, where there is accounting: the partition's own QoS, and the job QoS it allows (None: all).
    qos: str | None = None
    allow_qos: tuple[str, ...] | None = None
    deny_qos: tuple[str, ...] = ()

    @property
    def nodes(self) -> int:
        return sum(group.nodes for group in self.groups)

    @property
    def max_gpus(self) -> int:
        return max((group.gpus for group in self.groups), default=0)


@dataclass(frozen=True)
class Association:
    """One of the user's associations (sacctmgr): an account, the partition it is limited to (None: any), the QoS
    it may use and its default QoS (None: SLURM picks, see :func:`usable_qos`)."""

    account: str
    partition: str | None = None
    qos: tuple[str, ...] = ()
    default_qos: str | None = None


@dataclass(frozen=True)
class SiteFacts:
    partitions: tuple[Partition, ...] = ()
    account: str | None = None
    notes: tuple[str, ...] = ()  # what could not be read, for the user
    associations: tuple[Association, ...] = ()
    accounting: bool = False  # sacctmgr answered: accounts and QoS are the site's to enforce


def parse_time_limit(text: str) -> int | None:
    """SLURM's time forms in whole minutes: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``; None for
    ``infinite``, ``UNLIMITED`` and anything unreadable (no limit stjobs can hold the job to)."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if match is None:
        return None
    days, first, second, third = (int(part) if part else None for part in match.groups())
    assert first is not None
    if days is not None:  # D-H[:M[:S]]
        return days * 1440 + first * 60 + (second or 0)
    if third is not None:  # H:M:S
        return first * 60 + (second or 0)
    return first  # M or M:S


def _split_top(text: str) -> list[str]:
    """Comma-separated items, commas inside parentheses (``gpu:a100:4(S:0,1)``) kept."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    return [item.strip() for item in [*items, current] if item.strip()]


_MULTIPLIERS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_gres(text: str) -> list[tuple[str, str | None, int]]:
    """sinfo's GRES column as (name, type, count): ``gpu:v100:2(S:0-1),shard:8`` -> [('gpu', 'v100', 2),
    ('shard', None, 8)]; ``(null)`` and an empty column -> []."""
    found = []
    for item in _split_top(text.strip()):
        bare = re.sub(r"\([^)]*\)", "", item).strip()
        if not bare or bare == "null":
            continue
        parts = bare.split(":")
        count = 1
        counted = re.fullmatch(r"(\d+)([KMG]?)", parts[-1]) if len(parts) > 1 else None
        if counted:
            count = int(counted.group(1)) * _MULTIPLIERS[counted.group(2)]
            parts = parts[:-1]
        found.append((parts[0], ":".join(parts[1:]) or None, count))
    return found


def _leading_int(text: str) -> int | None:
    match = re.match(r"\d+", text.strip())  # '2+' when the nodes differ: the smallest
    return int(match.group()) if match else None


def parse_sinfo(text: str) -> tuple[Partition, ...]:
    """The partitions of ``sinfo -h -o SINFO_FORMAT`` output, in sinfo's order; malformed lines are skipped."""
    parts: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        fields = [field.strip() for field in line.split("|")]
        if len(fields) == 6:  # the same format without %a
            fields.insert(1, "up")
        if len(fields) != 7 or not fields[0].rstrip("*"):
            continue
        name, avail, limit, count, gres, cpus, mem = fields
        nodes = _leading_int(count)
        if nodes is None:
            continue
        gpus = [(kind, count) for gres_name, kind, count in parse_gres(gres) if gres_name == "gpu"]
        group = NodeGroup(nodes=nodes, gpus=sum(count for _, count in gpus), gpu_type=gpus[0][0] if gpus else None,
                          cpus=_leading_int(cpus), mem_mb=_leading_int(mem))
        entry = parts.setdefault(name.rstrip("*"), {"default": False, "up": False, "limit": None, "groups": []})
        entry["default"] |= name.endswith("*")
        entry["up"] |= avail.lower() == "up"
        entry["limit"] = entry["limit"] if entry["limit"] is not None else parse_time_limit(limit)
        entry["groups"].append(group)
    return tuple(Partition(name, entry["default"], entry["up"], entry["limit"], tuple(entry["groups"]))
                 for name, entry in parts.items())


def _words(text: str) -> tuple[str, ...]:
    return tuple(word.strip() for word in text.split(",") if word.strip())


def parse_associations(text: str) -> tuple[str | None, tuple[Association, ...]]:
    """The default account and the associations of ``sacctmgr -nP show user U withassoc SACCTMGR_FORMAT``."""
    default, found = None, []
    for line in text.splitlines():
        fields = [field.strip() for field in line.split("|")]
        if len(fields) != 5 or not fields[1]:
            continue
        default = default or fields[0] or None
        found.append(Association(fields[1], fields[2] or None, _words(fields[4]), fields[3] or None))
    return default, tuple(found)


def with_partition_qos(partitions: Sequence[Partition], text: str) -> tuple[Partition, ...]:
    """``partitions`` with the QoS rules of ``scontrol -o show partition`` (one line of KEY=VALUE per partition):
    ``QoS`` (N/A: none), ``AllowQos`` (ALL: any), ``DenyQos``."""
    rules: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        pairs = dict(word.split("=", 1) for word in line.split() if "=" in word)
        if pairs.get("PartitionName"):
            rules[pairs["PartitionName"]] = pairs
    out = []
    for part in partitions:
        rule = rules.get(part.name, {})
        qos = rule.get("QoS", "N/A")
        allow = rule.get("AllowQos", "ALL")
        out.append(dataclasses.replace(part, qos=None if qos in ("N/A", "(null)", "") else qos,
                                       allow_qos=None if allow in ("ALL", "") else _words(allow),
                                       deny_qos=_words(rule.get("DenyQos", ""))))
    return tuple(out)


Runner = Callable[[Sequence[str]], "str | None"]


def run_quietly(argv: Sequence[str]) -> str | None:
    """A SLURM client's stdout, or None when it is not there, fails or hangs (a controller that is down)."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def current_user() -> str:
    """The name SLURM knows the caller by: the effective uid's (not $USER, which sudo and su may keep)."""
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        import getpass

        return getpass.getuser()


def read_slurm_site(run: Runner = run_quietly, user: str | None = None) -> SiteFacts:
    """Partitions from one ``sinfo`` call; the default account (the user record's, else the first association's)
    and the associations from one ``sacctmgr`` call; where that answered (the site has accounting, so QoS is
    enforced), the partitions' QoS rules from one ``scontrol`` call. What could not be read becomes a note instead
    of an error; no accounting is no note about QoS: there is none to choose."""
    notes = []
    listing = run(["sinfo", "-h", "-o", SINFO_FORMAT])
    partitions = parse_sinfo(listing) if listing is not None else ()
    if listing is None:
        notes.append("sinfo did not answer: no partitions read (is this a SLURM login node?)")
    user = user or current_user()
    answer = run(["sacctmgr", "-nP", "show", "user", user, "withassoc", SACCTMGR_FORMAT])
    default, associations = parse_associations(answer or "")
    account = default or next((assoc.account for assoc in associations), None)
    if account is None and listing is not None:
        notes.append(f"no default account found for {user} (sacctmgr): the spec leaves slurm.account out")
    if answer is not None and partitions:
        partitions = with_partition_qos(partitions, run(["scontrol", "-o", "show", "partition"]) or "")
    return SiteFacts(partitions, account, tuple(notes), associations, answer is not None)


def _choose_partition(partitions: Sequence[Partition], time_min: int) -> Partition | None:
    """A partition that is up, has GPUs and allows ``time_min``; the default one among equals, then the one with
    the most GPUs per node, the longest limit, the most nodes."""
    usable = [part for part in partitions if part.up] or list(partitions)

    def rank(part: Partition) -> tuple[bool, bool, bool, int, float, int]:
        limit = float("inf") if part.time_limit_min is None else part.time_limit_min
        return (part.max_gpus > 0, limit >= time_min, part.default, part.max_gpus, limit, part.nodes)

    return max(usable, key=rank, default=None)


def _partition(facts: SiteFacts, name: Any) -> Partition | None:
    """The partition a spec's ``slurm.partition`` names (of a comma list, the first: SLURM tries it first)."""
    return next((p for p in facts.partitions if p.name == str(name or "").split(",")[0]), None) if name else None


def _association(facts: SiteFacts, account: str | None, partition: Any) -> Association | None:
    """The association a job of ``account`` (None: the default one) in ``partition`` runs under: the one for that
    partition, else the account's own."""
    rows = [assoc for assoc in facts.associations if assoc.account == (account or facts.account)]
    name = str(partition or "").split(",")[0]
    return next((a for a in rows if a.partition and a.partition == name), None) or \
        next((a for a in rows if not a.partition), None)


def usable_qos(facts: SiteFacts, account: str | None, partition: str | None) -> tuple[str, ...] | None:
    """The QoS a job of ``account`` may ask for in ``partition``, as SLURM checks it: its association's list less
    what the partition does not allow. None when it is not known: no accounting, or an association that lists
    none (its QoS come from a parent sacctmgr did not show)."""
    row = _association(facts, account, partition)
    if not facts.accounting or row is None or not row.qos:
        return None
    part = _partition(facts, partition)
    return tuple(qos for qos in row.qos if part is None or ((part.allow_qos is None or qos in part.allow_qos)
                                                           and qos not in part.deny_qos))


def _choose_qos(facts: SiteFacts, account: str | None, partition: str | None) -> str | None:
    """The QoS SLURM gives a job that names none (the association's default, else 'normal'), where the partition
    allows it; else the partition's own QoS, else the first allowed. None: nothing the user may use is known."""
    allowed = usable_qos(facts, account, partition)
    row, part = _association(facts, account, partition), _partition(facts, partition)
    if not allowed or row is None:
        return None
    return next((qos for qos in (row.default_qos, part.qos if part else None, "normal") if qos in allowed),
                allowed[0])


def _node_share(group: NodeGroup | None, gpus: int) -> tuple[int | None, int | None]:
    """CPUs and whole GB of memory for one node of ``group``: a GPU job the node's share for its GPUs (all of it
    for all its GPUs), a CPU job CPU_JOB_CPUS CPUs and their share of memory; memory less MEM_HEADROOM. None where
    sinfo did not say (and memory a node reports under 1 GB: RealMemory unset, SLURM does not track it)."""
    if group is None or not group.cpus:
        return None, None
    share = min(gpus / group.gpus, 1.0) if gpus and group.gpus else min(CPU_JOB_CPUS, group.cpus) / group.cpus
    cpus = max(int(group.cpus * share), gpus, 1)  # at least one CPU per process (procs_per_node follows GPUs)
    mem_gb = int((group.mem_mb or 0) * share * MEM_HEADROOM / 1024)
    return cpus, mem_gb or None


def propose(facts: SiteFacts, answers: Mapping[str, Any]) -> dict[str, Any]:
    """Values for ``partition``, ``gpus_per_node``, ``gpu_type``, ``nodes``, ``time_min``, ``cpus_per_task``,
    ``mem_gb``, ``account`` and ``qos`` that fit the site, the user's ``answers`` (a key given there, even as None,
    is kept as given) filled around."""
    wanted_time = answers.get("time_min") or DESIRED_TIME_MIN
    if "partition" in answers:
        part = _partition(facts, answers["partition"])
    else:
        part = _choose_partition(facts.partitions, wanted_time)
    groups = list(part.groups) if part else []
    if answers.get("gpu_type"):
        groups = [group for group in groups if group.gpu_type == answers["gpu_type"]] or groups
    group = max(groups, key=lambda g: (g.gpus, g.nodes), default=None)
    gpus = answers.get("gpus_per_node", group.gpus if group else 0)
    gpu_type = answers.get("gpu_type", group.gpu_type if group and gpus else None)
    limit = part.time_limit_min if part else None
    time_min = answers.get("time_min") or (min(DESIRED_TIME_MIN, limit) if limit else DESIRED_TIME_MIN)
    cpus, mem_gb = _node_share(group, gpus or 0)
    partition = answers.get("partition", part.name if part else None)
    qos = _choose_qos(facts, answers.get("account", facts.account), partition)
    proposal = {"partition": part.name if part else None, "gpus_per_node": gpus, "gpu_type": gpu_type,
                "nodes": answers.get("nodes") or 1, "time_min": time_min, "cpus_per_task": cpus, "mem_gb": mem_gb,
                "account": facts.account, "qos": qos}
    proposal.update({key: value for key, value in answers.items() if key in proposal})
    return proposal


def _access_misfits(facts: SiteFacts, values: Mapping[str, Any]) -> list[str]:
    """An account or QoS the user may not use (only where there is accounting to say so)."""
    if not facts.accounting or not facts.associations:
        return []
    found = []
    accounts = list(dict.fromkeys(assoc.account for assoc in facts.associations))
    if values.get("account") and values["account"] not in accounts:
        found.append(f"account {values['account']!r} is not one of yours ({', '.join(accounts)})")
    allowed = usable_qos(facts, values.get("account"), values.get("partition"))
    if values.get("qos") and allowed is not None and values["qos"] not in allowed:
        where = f" in partition {values['partition']}" if values.get("partition") else ""
        found.append(f"qos {values['qos']!r} is not one account {values.get('account') or facts.account} may use"
                     f"{where} ({', '.join(allowed) or 'none'})")
    return found


def misfits(facts: SiteFacts, values: Mapping[str, Any]) -> list[str]:
    """What in ``values`` the site cannot give (said to the user; SLURM would refuse or hold the job)."""
    found = _access_misfits(facts, values)
    part = _partition(facts, values.get("partition"))
    if part is None:
        known = ", ".join(p.name for p in facts.partitions)
        return found + ([f"partition {values['partition']!r} is not one sinfo lists ({known})"]
                        if values.get("partition") and known else [])
    types = sorted({g.gpu_type for g in part.groups if g.gpu_type})
    if values.get("gpu_type") and values["gpu_type"] not in types:
        found.append(f"partition {part.name} has no GPU type {values['gpu_type']!r} ({', '.join(types) or 'none'})")
    groups = [g for g in part.groups if not values.get("gpu_type") or g.gpu_type == values["gpu_type"]]
    if (values.get("gpus_per_node") or 0) > max((g.gpus for g in groups), default=0):
        found.append(f"partition {part.name} has at most {part.max_gpus} GPU(s) per node")
    most_cpus = max((g.cpus or 0 for g in groups), default=0)
    if most_cpus and (values.get("cpus_per_task") or 0) > most_cpus:
        found.append(f"partition {part.name} has at most {most_cpus} CPU(s) per node (cpus_per_task: "
                     f"{values['cpus_per_task']})")
    most_mem = max((g.mem_mb or 0 for g in groups), default=0)
    if most_mem and (values.get("mem_gb") or 0) * 1024 > most_mem:
        found.append(f"partition {part.name} has at most {most_mem} MB of memory per node (mem_gb: "
                     f"{values['mem_gb']} is {values['mem_gb'] * 1024:g} MB)")
    if (values.get("nodes") or 1) > part.nodes:
        found.append(f"partition {part.name} has {part.nodes} node(s)")
    if part.time_limit_min is not None and (values.get("time_min") or 0) > part.time_limit_min:
        found.append(f"partition {part.name} allows {part.time_limit_min} min")
    return found
