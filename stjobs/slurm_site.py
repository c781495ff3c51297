"""What a SLURM site offers, read from SLURM itself, and the job values that fit it (for ``stjobs init``).

:func:`read_slurm_site` makes one ``sinfo`` call (partitions, their time limits, node counts, GRES, CPUs and memory
per node) and asks ``sacctmgr`` for the caller's default account; :func:`propose` is pure: the site's facts and the
user's answers so far in, values out (a partition with GPUs whose time limit allows the job, GPUs per node and their
type from its GRES, a time within its limit). Parsing is forgiving: a line it cannot read is skipped, a client that
is missing or fails becomes a note.
"""

from __future__ import annotations

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
DESIRED_TIME_MIN = 60


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

    @property
    def nodes(self) -> int:
        return sum(group.nodes for group in self.groups)

    @property
    def max_gpus(self) -> int:
        return max((group.gpus for group in self.groups), default=0)


@dataclass(frozen=True)
class SiteFacts:
    partitions: tuple[Partition, ...] = ()
    account: str | None = None
    notes: tuple[str, ...] = ()  # what could not be read, for the user


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
    """Partitions from one ``sinfo`` call, the default account from ``sacctmgr`` (its user record, else the
    first association); what could not be read becomes a note instead of an error."""
    notes = []
    listing = run(["sinfo", "-h", "-o", SINFO_FORMAT])
    partitions = parse_sinfo(listing) if listing is not None else ()
    if listing is None:
        notes.append("sinfo did not answer: no partitions read (is this a SLURM login node?)")
    user = user or current_user()
    account = None
    for argv in (["sacctmgr", "-nP", "show", "user", user, "format=defaultaccount"],
                 ["sacctmgr", "-nP", "show", "assoc", f"where user={user}", "format=account"]):
        answer = run(argv)
        account = next((line.strip() for line in (answer or "").splitlines() if line.strip()), None)
        if account:
            break
    if account is None and listing is not None:
        notes.append(f"no default account found for {user} (sacctmgr): the spec leaves slurm.account out")
    return SiteFacts(partitions, account, tuple(notes))


def _choose_partition(partitions: Sequence[Partition], time_min: int) -> Partition | None:
    """A partition that is up, has GPUs and allows ``time_min``; the default one among equals, then the one with
    the most GPUs per node, the longest limit, the most nodes."""
    usable = [part for part in partitions if part.up] or list(partitions)

    def rank(part: Partition) -> tuple[bool, bool, bool, int, float, int]:
        limit = float("inf") if part.time_limit_min is None else part.time_limit_min
        return (part.max_gpus > 0, limit >= time_min, part.default, part.max_gpus, limit, part.nodes)

    return max(usable, key=rank, default=None)


def propose(facts: SiteFacts, answers: Mapping[str, Any]) -> dict[str, Any]:
    """Values for ``partition``, ``gpus_per_node``, ``gpu_type``, ``nodes``, ``time_min`` and ``account`` that
    fit the site, the user's ``answers`` (a key given there, even as None, is kept as given) filled around."""
    wanted_time = answers.get("time_min") or DESIRED_TIME_MIN
    by_name = {part.name: part for part in facts.partitions}
    if "partition" in answers:
        name = answers["partition"]
        part = by_name.get(str(name).split(",")[0]) if name else None
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
    proposal = {"partition": part.name if part else None, "gpus_per_node": gpus, "gpu_type": gpu_type,
                "nodes": answers.get("nodes") or 1, "time_min": time_min, "account": facts.account}
    proposal.update({key: value for key, value in answers.items() if key in proposal})
    return proposal


def misfits(facts: SiteFacts, values: Mapping[str, Any]) -> list[str]:
    """What in ``values`` the site's partition cannot give (said to the user; SLURM would refuse or hold the job)."""
    part = next((p for p in facts.partitions if p.name == str(values.get("partition") or "").split(",")[0]), None)
    if part is None:
        known = ", ".join(p.name for p in facts.partitions)
        return [f"partition {values['partition']!r} is not one sinfo lists ({known})"] \
            if values.get("partition") and known else []
    found = []
    types = sorted({g.gpu_type for g in part.groups if g.gpu_type})
    if values.get("gpu_type") and values["gpu_type"] not in types:
        found.append(f"partition {part.name} has no GPU type {values['gpu_type']!r} ({', '.join(types) or 'none'})")
    groups = [g for g in part.groups if not values.get("gpu_type") or g.gpu_type == values["gpu_type"]]
    if (values.get("gpus_per_node") or 0) > max((g.gpus for g in groups), default=0):
        found.append(f"partition {part.name} has at most {part.max_gpus} GPU(s) per node")
    if (values.get("nodes") or 1) > part.nodes:
        found.append(f"partition {part.name} has {part.nodes} node(s)")
    if part.time_limit_min is not None and (values.get("time_min") or 0) > part.time_limit_min:
        found.append(f"partition {part.name} allows {part.time_limit_min} min")
    return found
