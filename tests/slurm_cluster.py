r"""Helpers for tests that need the real 2-node SLURM test cluster (slurm/cluster/up.sh).

No tests in here. Typical use in a test module::

    from tests.slurm_cluster import PARTITION, ensure_cluster, wait_for_sacct_state

    @pytest.fixture(scope="session")
    def slurm() -> None:
        ensure_cluster()          # raises SlurmClusterUnavailable with the reason

The cluster is shaped like a site: nodes n1/n2 (both this machine, 127.0.0.1, 2 CPUs each, bound by
task/affinity; two fake ``v100`` GPUs each as GRES), partition ``gpu`` that jobs must name (the default one,
``short``, allows 5 minutes), account ``ml-team`` and QoS enforced by SLURM, accounting through slurmdbd (so
``sacct`` has real states), config in /etc/slurm, and an unprivileged user (:data:`SITE_USER`) with its own venv
(:data:`SITE_PYTHON`) to submit as.

A second cluster runs beside it without accounting (``up.sh --no-accounting``: no slurmdbd, ``sacct`` disabled,
slurmctld forgets a finished job after :data:`NOACCT_MIN_JOB_AGE_S`), nodes n3/n4, same partition ``gpu``;
clients reach it through ``SLURM_CONF`` (:func:`noacct_env`), and :func:`ensure_noacct_cluster` starts it.

Its login node, reached over SSH as a laptop reaches a site's (slurm/cluster/sshd-up.sh: a separate sshd on
127.0.0.1:\ :data:`SSHD_PORT`, key authentication only, as the site user): :func:`ensure_login_node` starts it;
its host key and the client keys the tests use are under :data:`SSHD_STATE`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
UP_SCRIPT = REPO / "slurm" / "cluster" / "up.sh"
DOWN_SCRIPT = REPO / "slurm" / "cluster" / "down.sh"
STATE_DIR = Path(os.environ.get("STJOBS_SLURM_STATE", "/var/tmp/stjobs-slurm"))

CLUSTER_NAME = "stjobs"
PARTITION = "gpu"
ACCOUNT = "ml-team"
GPU_TYPE = "v100"
GPUS_PER_NODE = 2
SITE_USER = "stjobs-user"
SITE_HOME = Path("/home", SITE_USER)
SITE_PYTHON = SITE_HOME / "venv" / "bin" / "python"
NODES: tuple[str, ...] = ("n1", "n2")
CPUS_PER_NODE = 2
MAX_TIME_MINUTES = 60  # partition MaxTime

# sacct states after which a job never changes again (sacct -P prints e.g. "CANCELLED by 0")
TERMINAL_STATES = ("BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
                   "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT")

UP_TIMEOUT_S = 600  # includes apt-get install on a fresh machine

NOACCT_CLUSTER_NAME = "stjobs-noacct"
NOACCT_CONF = Path("/etc/slurm-noacct/slurm.conf")
NOACCT_STATE_DIR = Path(os.environ.get("STJOBS_SLURM_NOACCT_STATE", "/var/tmp/stjobs-slurm-noacct"))
NOACCT_NODES: tuple[str, ...] = ("n3", "n4")
NOACCT_MIN_JOB_AGE_S = 10  # its MinJobAge; slurmctld purges about once a minute, so a job goes within ~70 s


# The cluster's login node over SSH (slurm/cluster/sshd-up.sh): a separate sshd on loopback, as the site user.
SSHD_UP_SCRIPT = REPO / "slurm" / "cluster" / "sshd-up.sh"
SSHD_STATE = Path(os.environ.get("STJOBS_SSHD_STATE", "/var/lib/stjobs-sshd"))
SSHD_PORT = int(os.environ.get("STJOBS_SSHD_PORT", "16822"))


class SlurmClusterUnavailable(RuntimeError):
    """The test cluster is not up and could not be brought up."""


def _run(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def noacct_env() -> dict[str, str]:
    """What a client needs to talk to the cluster without accounting instead of the main one."""
    return {"SLURM_CONF": str(NOACCT_CONF)}


def node_states(env: dict[str, str] | None = None) -> dict[str, str]:
    """``{node: sinfo state}`` for the test partition; empty if sinfo is missing or fails. ``env``: extra
    variables (:func:`noacct_env` asks the cluster without accounting)."""
    if shutil.which("sinfo") is None:
        return {}
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-p", PARTITION, "-o", "%N %t"], capture_output=True,
                              text=True, timeout=15, check=False, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return {}
    if proc.returncode != 0:
        return {}
    states: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def cluster_ready(require_idle: bool = True, nodes: tuple[str, ...] = NODES,
                  env: dict[str, str] | None = None) -> bool:
    """True if both nodes answer and are idle (or, with ``require_idle=False``, usable: idle/mix/alloc)."""
    ok = {"idle"} if require_idle else {"idle", "mix", "alloc", "comp"}
    states = node_states(env)
    return all(states.get(n) in ok for n in nodes)


def ensure_cluster() -> None:
    """Make sure the 2-node cluster is up; run ``slurm/cluster/up.sh`` if it is not.

    Raises SlurmClusterUnavailable (with up.sh's output) when that is impossible, e.g. not root.
    """
    _ensure(NODES, None, [])


def ensure_noacct_cluster() -> None:
    """Make sure the cluster without accounting is up (``up.sh --no-accounting``); the main one is left as it is."""
    _ensure(NOACCT_NODES, noacct_env(), ["--no-accounting"])


def _ensure(nodes: tuple[str, ...], env: dict[str, str] | None, flags: list[str]) -> None:
    if cluster_ready(require_idle=False, nodes=nodes, env=env):
        return
    command = " ".join([str(UP_SCRIPT), *flags])
    if os.geteuid() != 0:
        raise SlurmClusterUnavailable(
            f"SLURM test cluster is not up (sinfo: {node_states(env) or 'unavailable'}) and starting it "
            f"needs root: run `sudo {command}`")
    try:
        proc = subprocess.run(["bash", str(UP_SCRIPT), *flags], capture_output=True, text=True,
                              timeout=UP_TIMEOUT_S, check=False, env=up_env())
    except subprocess.TimeoutExpired as exc:
        raise SlurmClusterUnavailable(f"{command} timed out after {UP_TIMEOUT_S}s") from exc
    if proc.returncode != 0 or not cluster_ready(require_idle=False, nodes=nodes, env=env):
        raise SlurmClusterUnavailable(
            f"{command} failed (rc={proc.returncode}); sinfo: {node_states(env) or 'unavailable'}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-8000:]}")


def up_env() -> dict[str, str]:
    """up.sh's environment: the site user's venv shares the packages of the venv running the tests."""
    import sysconfig

    return {**os.environ, "STJOBS_PROJECT_SITE_PACKAGES": sysconfig.get_paths()["purelib"]}


def sacct_state(job_id: str | int) -> str:
    """Allocation-level state from accounting (``sacct -X -P``).

    E.g. "COMPLETED", "CANCELLED by 0" (without -P it would be truncated to "CANCELLED+"); "" if not known yet.
    """
    proc = _run(["sacct", "-j", str(job_id), "-X", "-n", "-P", "-o", "State"], timeout=15)
    lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def wait_for_sacct_state(job_id: str | int, timeout: float = 120, poll: float = 1.0) -> str:
    """Poll sacct until the job reaches a terminal state; return it (first word, e.g. "CANCELLED")."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = sacct_state(job_id)
        word = state.split(" ", 1)[0]
        if word in TERMINAL_STATES:
            return word
        time.sleep(poll)
    raise TimeoutError(f"job {job_id} not finished after {timeout}s (last sacct state: {state!r})")


def login_node_answers() -> bool:
    """The test login node's sshd shows its host key on its port."""
    if shutil.which("ssh-keyscan") is None:
        return False
    done = _run(["ssh-keyscan", "-T", "2", "-p", str(SSHD_PORT), "127.0.0.1"], timeout=15)
    return "ssh-ed25519" in done.stdout


def ensure_login_node() -> None:
    """Make sure the login node's sshd is up; run ``slurm/cluster/sshd-up.sh`` if it is not (as root)."""
    if login_node_answers():
        return
    if os.geteuid() != 0:
        raise SlurmClusterUnavailable(f"the test login node is not up and starting it needs root: "
                                      f"sudo {SSHD_UP_SCRIPT}")
    proc = subprocess.run(["bash", str(SSHD_UP_SCRIPT)], capture_output=True, text=True, timeout=UP_TIMEOUT_S,
                          check=False)
    if proc.returncode != 0 or not login_node_answers():
        raise SlurmClusterUnavailable(f"{SSHD_UP_SCRIPT} failed (rc={proc.returncode})\n{proc.stderr[-4000:]}")
