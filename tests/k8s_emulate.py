"""Pod emulation: run a rendered PyTorchJob or TrainJob's containers as local processes, with the environment the
Kubeflow operator and the kubelet would give them.

No Kubernetes cluster can run on these machines, so this is what shows a manifest is right beyond its schema: the
exact ``command`` of each replica, with ``$(VAR)`` expanded the way the kubelet does, and the variables the
operator injects (written down here from training-operator 1.9's envvar.go/master.go/elastic.go and Trainer 2.3's
torch plugin), must form one working torchrun world. The pod hostnames the operator's headless services give
(``<job>-master-0``, ``<job>-node-0-0.<job>``) must resolve to this machine: :func:`resolvable` adds them to
/etc/hosts when run as root (CI is), and removes them afterwards.

What this does not emulate: scheduling, images (the container runs this checkout's venv Python), pod networking
(all pods share 127.0.0.1), restarts by the operator, and resource limits.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOSTS = Path("/etc/hosts")
TRAINJOB_MASTER_PORT = 29500  # constants.ContainerTrainerPort: the torch plugin's fixed rendezvous port


@dataclass
class Container:
    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: str | None


@dataclass
class Pod:
    name: str
    hostname: str
    init: list[Container] = field(default_factory=list)
    main: Container | None = None


def expand(text: str, env: Mapping[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion: ``$$`` is a literal ``$``; an unknown ``$(VAR)`` stays as written."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2:end]
                    out.append(env[name] if name in env else text[i:end + 1])
                    i = end + 1
                    continue
        out.append(char)
        i += 1
    return "".join(out)


def container_env(spec: Mapping[str, Any], injected: Mapping[str, str], secrets: Mapping[str, str]) -> dict[str, str]:
    """The manifest's env (secretKeyRef resolved from ``secrets``, like a Secret object would), then what the
    operator appends; later entries may refer to earlier ones with $(VAR), as in Kubernetes."""
    env: dict[str, str] = {}
    entries = list(spec.get("env", [])) + [{"name": key, "value": value} for key, value in injected.items()]
    for entry in entries:
        if "valueFrom" in entry:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = secrets[ref["key"]]
        else:
            env[entry["name"]] = expand(str(entry.get("value", "")), env)
    return env


def _container(spec: Mapping[str, Any], injected: Mapping[str, str], secrets: Mapping[str, str],
               workdir_map: Mapping[str, str]) -> Container:
    env = container_env(spec, injected, secrets)
    argv = [expand(arg, env) for arg in [*spec.get("command", []), *spec.get("args", [])]]
    cwd = spec.get("workingDir")
    return Container(spec["name"], argv, env, workdir_map.get(cwd, cwd) if cwd else None)


def pytorchjob_pods(job: Mapping[str, Any], secrets: Mapping[str, str] | None = None,
                    workdir_map: Mapping[str, str] | None = None) -> list[Pod]:
    """The pods training-operator 1.9 creates, each with the env its setPodEnv injects."""
    name = job["metadata"]["name"]
    spec = job["spec"]
    replicas = spec["pytorchReplicaSpecs"]
    total = sum(int(r["replicas"]) for r in replicas.values())
    elastic = spec.get("elasticPolicy")
    pods: list[Pod] = []
    for rtype in ("Master", "Worker"):
        if rtype not in replicas:
            continue
        template = replicas[rtype]["template"]["spec"]
        main_spec = next(c for c in template["containers"] if c["name"] == "pytorch")
        port = next(p["containerPort"] for p in main_spec.get("ports", []) if p["name"] == "pytorchjob-port")
        for index in range(int(replicas[rtype]["replicas"])):
            rank = index + (1 if rtype == "Worker" and "Master" in replicas else 0)
            injected: dict[str, str] = {"PYTHONUNBUFFERED": "1"}
            nproc = str(spec.get("nprocPerNode", "auto"))
            if "Master" in replicas:
                # WORLD_SIZE counts processes (1 per pod unless nprocPerNode is a number); RANK counts pods.
                master = f"{name}-master-0"
                world = total * (int(nproc) if nproc.isdigit() else 1)
                injected.update({"MASTER_PORT": str(port), "MASTER_ADDR": master, "PET_MASTER_PORT": str(port),
                                 "PET_MASTER_ADDR": master, "WORLD_SIZE": str(world), "RANK": str(rank),
                                 "PET_NODE_RANK": str(rank)})
                if not elastic:
                    injected["PET_NNODES"] = str(total)
            injected["PET_NPROC_PER_NODE"] = nproc  # the operator defaults nprocPerNode to "auto"
            if elastic:
                injected.update({
                    "PET_RDZV_ENDPOINT": f"{elastic.get('rdzvHost', f'{name}-worker-0')}:"
                                         f"{elastic.get('rdzvPort', port)}",
                    "PET_RDZV_BACKEND": elastic.get("rdzvBackend", "c10d"),
                    "PET_NNODES": f"{elastic['minReplicas']}:{elastic['maxReplicas']}"
                    if "minReplicas" in elastic else str(replicas["Worker"]["replicas"]),
                })
                if "maxRestarts" in elastic:
                    injected["PET_MAX_RESTARTS"] = str(elastic["maxRestarts"])
                if elastic.get("rdzvConf"):
                    injected["PET_RDZV_CONF"] = ",".join(f"{c['key']}={c['value']}" for c in elastic["rdzvConf"])
            pod_name = f"{name}-{rtype.lower()}-{index}"
            pod = Pod(pod_name, pod_name)
            for init in template.get("initContainers", []):
                pod.init.append(_container(init, {}, secrets or {}, workdir_map or {}))
            pod.main = _container(main_spec, injected, secrets or {}, workdir_map or {})
            pods.append(pod)
    return pods


def trainjob_pods(job: Mapping[str, Any], secrets: Mapping[str, str] | None = None,
                  workdir_map: Mapping[str, str] | None = None) -> list[Pod]:
    """The pods of the torch-distributed runtime's JobSet: ``<job>-node-0-<i>``, with the torch plugin's env."""
    name = job["metadata"]["name"]
    trainer = job["spec"]["trainer"]
    nodes = int(trainer.get("numNodes", 1))
    master = f"{name}-node-0-0.{name}"
    spec = {"name": "node", "command": trainer.get("command", []), "args": trainer.get("args", []),
            "env": trainer.get("env", [])}
    patches = job["spec"].get("runtimePatches", [])
    for patch in patches:
        for rjob in patch["trainingRuntimeSpec"]["template"]["spec"].get("replicatedJobs", []):
            for item in rjob["template"]["spec"]["template"]["spec"].get("containers", []):
                if item["name"] == "node" and "workingDir" in item:
                    spec["workingDir"] = item["workingDir"]
    pods = []
    for index in range(nodes):
        injected = {"PET_NNODES": str(nodes), "PET_NPROC_PER_NODE": str(trainer.get("numProcPerNode", 1)),
                    "PET_NODE_RANK": str(index), "PET_MASTER_ADDR": master,
                    "PET_MASTER_PORT": str(TRAINJOB_MASTER_PORT)}
        pod_name = f"{name}-node-0-{index}"
        pods.append(Pod(pod_name, f"{pod_name}.{name}",
                        main=_container(spec, injected, secrets or {}, workdir_map or {})))
    return pods


def _resolves(host: str) -> bool:
    try:
        return socket.gethostbyname(host) == "127.0.0.1"
    except OSError:
        return False


@contextlib.contextmanager
def resolvable(hosts: list[str]) -> Iterator[None]:
    """Make the pods' DNS names resolve to 127.0.0.1 for the duration (an /etc/hosts block, root only)."""
    missing = [host for host in hosts if not _resolves(host)]
    if not missing:
        yield
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"pod emulation needs {', '.join(missing)} to resolve to 127.0.0.1: run as root (as CI "
                           "does) or add them to /etc/hosts")
    original = HOSTS.read_text()
    marker = "# stjobs pod emulation"
    HOSTS.write_text(original.rstrip("\n") + "\n" + "".join(f"127.0.0.1 {h} {marker}\n" for h in missing))
    try:
        yield
    finally:
        kept = [line for line in HOSTS.read_text().splitlines(keepends=True) if marker not in line]
        HOSTS.write_text("".join(kept))


@dataclass
class PodResult:
    name: str
    init_codes: list[int] = field(default_factory=list)
    code: int | None = None  # None: the main container never ran (a failed init container) or never ended
    output: str = ""


def run_pods(pods: list[Pod], base_env: Mapping[str, str], timeout_s: float, logs: Path) -> list[PodResult]:
    """Start every pod at once (init containers first, in order, then the main container), like the kubelets
    would, and wait for all of them. ``base_env`` stands for the image's environment (PATH to its Python)."""
    logs.mkdir(parents=True, exist_ok=True)
    results = {pod.name: PodResult(pod.name) for pod in pods}
    queues = {pod.name: [*pod.init, pod.main] for pod in pods}
    running: dict[str, tuple[subprocess.Popen[bytes], bool]] = {}  # pod -> (process, is the main container)
    files = {pod.name: (logs / f"{pod.name}.log").open("wb") for pod in pods}

    def start_next(pod: Pod) -> None:
        item = queues[pod.name].pop(0)
        assert item is not None
        env = {**base_env, **item.env, "HOSTNAME": pod.hostname}
        proc = subprocess.Popen(item.argv, env=env, cwd=item.cwd, stdout=files[pod.name], stderr=subprocess.STDOUT,
                                start_new_session=True)
        running[pod.name] = (proc, not queues[pod.name])

    deadline = time.monotonic() + timeout_s
    try:
        for pod in pods:
            start_next(pod)
        while running:
            if time.monotonic() > deadline:
                raise TimeoutError(f"pods still running after {timeout_s} s: {', '.join(sorted(running))}")
            for pod in pods:
                if pod.name not in running or running[pod.name][0].poll() is None:
                    continue
                proc, is_main = running.pop(pod.name)
                if is_main:
                    results[pod.name].code = proc.returncode
                else:
                    results[pod.name].init_codes.append(proc.returncode)
                    if proc.returncode == 0:  # a failed init container keeps the main one from starting
                        start_next(pod)
            time.sleep(0.2)
    finally:
        for proc, _ in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
        for handle in files.values():
            handle.close()
    for pod in pods:
        results[pod.name].output = (logs / f"{pod.name}.log").read_text(errors="replace")
    return list(results.values())


def hostnames(pods: list[Pod]) -> list[str]:
    return [pod.hostname for pod in pods]
