"""Logs of a Kubeflow job's pods: each pod's log in rank order, all of them followed at once, or the bounded tail
of rank 0's that ``stjobs status`` reads the progress from.

Apart from control and client (which list the pods and own the client): reading streams is the one part with threads.
"""

from __future__ import annotations

import codecs
import contextlib
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from stjobs.backends.k8s.client import REQUEST_TIMEOUT_S, Target, api_errors, kube, pods, rank0_pod, target
from stjobs.backends.k8s.control import status
from stjobs.jobs import JobRecord

FOLLOW_GRACE_S = 10.0  # after the job ended, how long a log stream may stay open (its container has exited)
LINE_BYTES = 256  # a generous log line: an event line is ~170 bytes; see tail()


def logs(record: JobRecord, follow: bool = False, rank: int | None = None, api_client: Any = None,
         poll_s: float = 1.0) -> Iterator[str]:
    """Each pod's log after a ``==> pod <==`` line, master (rank 0) first; ``rank`` keeps that rank's lines."""
    job = target(record, api_client)
    prefix = f"[rank{rank}]:" if rank is not None else None
    with api_errors(job.host, f"reading the logs of {job.name}"):
        if follow:
            yield from _follow(record, job, prefix, poll_s)
            return
        for pod in pods(job):
            name = pod["metadata"]["name"]
            try:
                response = _open_log(job, name, follow=False)
            except kube().client.exceptions.ApiException as error:
                if error.status in (400, 404):
                    continue  # not started yet (400) or gone since the list (404): no log to show
                raise
            yield from _headed(((name, line) for line in _lines(response)), prefix)


def tail(record: JobRecord, limit_bytes: int, api_client: Any = None) -> str:
    """About the last ``limit_bytes`` of rank 0's pod's log, from a line's start; "" while that pod has no log
    (none yet or any more, its container not started). A pod list and one log call.

    The server has no "last N bytes": ``tailLines`` picks the last lines, then ``limitBytes`` stops after that
    many bytes of them, from their start. So the lines asked for are as many as fit in ``limit_bytes`` at
    :data:`LINE_BYTES` each; only longer lines make the limit cut the newest ones (bounded, if staler)."""
    job = target(record, api_client)
    with api_errors(job.host, f"reading the log of {job.name}'s rank-0 pod"):
        pod = rank0_pod(job)
        if pod is None:
            return ""
        try:
            response = kube().client.CoreV1Api(job.client).read_namespaced_pod_log(
                pod, job.namespace, container=job.resource.container, tail_lines=max(limit_bytes // LINE_BYTES, 1),
                limit_bytes=limit_bytes, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S)
        except kube().client.exceptions.ApiException as error:
            if error.status in (400, 404):
                return ""  # not started (400), or gone since the list (404)
            raise
        try:
            data: bytes = response.data
        finally:
            response.release_conn()
    if len(data) >= limit_bytes:
        data = data[: data.rfind(b"\n") + 1]  # the limit may have cut the last line (and a character in it)
    return data.decode(errors="replace")


def _headed(lines: Iterator[tuple[str, str]], prefix: str | None) -> Iterator[str]:
    """A ``==> pod <==`` line whenever the pod changes (as ``tail`` does), above lines that pass the filter."""
    shown = None
    for pod, line in lines:
        if prefix is None or line.startswith(prefix):
            if shown != pod:
                shown = pod
                yield f"==> {pod} <==\n"
            yield line


def _follow(record: JobRecord, job: Target, prefix: str | None, poll_s: float) -> Iterator[str]:
    """One reader thread per pod (as ``kubectl logs -f -l``), lines interleaved as they come, pods found anew
    on each poll; ends once the job has finished and every stream has ended (or hung on past a grace)."""
    api_exception = kube().client.exceptions.ApiException
    lines: queue.Queue[tuple[str, str | BaseException | None]] = queue.Queue()
    stop = threading.Event()
    responses: list[Any] = []

    def read(pod: str) -> None:
        try:
            while True:
                try:
                    response = _open_log(job, pod, follow=True)
                    break
                except api_exception as error:
                    if error.status not in (400, 404):
                        raise
                    if error.status == 404 or stop.is_set():
                        return  # the pod is gone, or never started in a job that has ended: no log
                    stop.wait(poll_s)  # the container is not started yet (400); after the job ends, one last try
            responses.append(response)
            for line in _lines(response):
                lines.put((pod, line))
        except BaseException as error:  # handed to the caller's thread, which reports it
            lines.put((pod, error))
        finally:
            lines.put((pod, None))

    def arrivals() -> Iterator[tuple[str, str]]:
        started: set[str] = set()
        live, grace_end = 0, float("inf")
        while True:
            finished = status(record, job.client).state.finished  # before listing: no late pod is missed
            if finished and not stop.is_set():
                stop.set()
                grace_end = time.monotonic() + FOLLOW_GRACE_S
            for name in (pod["metadata"]["name"] for pod in pods(job)):
                if name not in started:
                    started.add(name)
                    live += 1
                    threading.Thread(target=read, args=(name,), daemon=True).start()
            deadline = time.monotonic() + poll_s
            while live and (left := deadline - time.monotonic()) > 0:
                try:
                    pod, item = lines.get(timeout=left)
                except queue.Empty:
                    break
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    live -= 1
                else:
                    yield pod, item
            if finished and (not live or time.monotonic() > grace_end):
                return
            time.sleep(max(0.0, deadline - time.monotonic()))

    try:
        yield from _headed(arrivals(), prefix)
    finally:
        stop.set()
        for response in responses:
            with contextlib.suppress(Exception):
                response.close()  # ends the reader threads' blocking reads


def _open_log(job: Target, pod: str, follow: bool) -> Any:
    # Following: no timeout, a training step may print nothing for minutes (FOLLOW_GRACE_S ends a hung one).
    timeout = {} if follow else {"_request_timeout": REQUEST_TIMEOUT_S}
    return kube().client.CoreV1Api(job.client).read_namespaced_pod_log(
        pod, job.namespace, container=job.resource.container, follow=follow, _preload_content=False, **timeout)


def _lines(response: Any) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    try:
        for chunk in response.stream(64 * 1024, decode_content=True):
            *done, pending = (pending + decoder.decode(chunk)).split("\n")
            for line in done:
                yield line + "\n"
        pending += decoder.decode(b"", final=True)
        if pending:
            yield pending + "\n"  # the next pod's header starts on its own line
    finally:
        response.release_conn()


