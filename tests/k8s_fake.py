"""A stateful fake Kubernetes API server, so the k8s backend is tested through the real ``kubernetes`` client.

Why a stdlib ``ThreadingHTTPServer`` and not kmock: the client under test is synchronous and speaks plain HTTP;
this server is the same, runs in a background thread with no event loop or pytest plugin, and answers exactly as
an API server does where it matters to us: 201 on create (the generated client decodes only the statuses its
OpenAPI spec lists: the 200 kmock answers decodes to None), ``Status`` bodies with the server's messages, chunked
log streams for ``follow=true``. What it implements is written out below, so a test shows what it relies on;
nothing is patched into the client.

Faithful:
- the CRDs are "installed" from the upstream CRD files (the schemas dir): group, version, plural and kind come
  from them, and every create is validated against their openAPIV3Schema with ``stjobs.backends.k8s.checks``;
- ``fieldValidation``: Strict answers unknown fields with 400 "strict decoding error", Warn (the default) and
  Ignore prune them (Warn with a ``Warning`` header); other schema errors get 422 Invalid with the field paths;
- 409 AlreadyExists, 404 NotFound (object, namespace, pod), text/plain "404 page not found" for an API group no
  CRD serves, 401 without the kubeconfig's bearer token, metadata.name checked as a DNS-1123 subdomain;
- server-set metadata (uid, creationTimestamp, resourceVersion, generation); ``status`` in a create is ignored
  (the status subresource); delete with Foreground propagation keeps the object with a deletionTimestamp and
  the ``foregroundDeletion`` finalizer while its pods go, when ``foreground_delay_s`` is set;
- objects and pods listed by label selector (``=``, ``==``, ``!=``, ``key``, ``!key``, ``key in (a,b)``,
  ``key notin (a,b)``), logs per container, 400 while a container is waiting to start, ``follow=true`` streamed
  in chunks until the pod ends or the test closes it; ``tailLines`` (the last N lines, a cut last line counting)
  then ``limitBytes`` (the first N bytes of those, which may cut a line or a character), as the kubelet applies
  them, each refused with 422 when out of range (tailLines < 0, limitBytes < 1).
Not faithful: no controllers (the test sets conditions and creates pods), no admission webhooks (the
training-operator's rules), no CEL ``x-kubernetes-validations``, no defaulting, no watch, no PATCH/PUT, no
TLS, a schema check stricter than the server on explicit nulls and floats for integers (see k8s_checks).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from stjobs.backends.k8s.checks import CRD_FILES, load_schema, schema_errors

REPO = Path(__file__).resolve().parent.parent
SCHEMAS_DIR = REPO.parent / "shared" / "k8s-schemas"
TOKEN = "stjobs-fake-token"
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
UNKNOWN_FIELD = re.compile(r'^(?P<path>.*): unknown field "(?P<key>[^"]+)"')
OBJECTS = re.compile(r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)"
                     r"(?:/(?P<name>[^/]+))?$")
PODS = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods(?:/(?P<name>[^/]+)(?P<log>/log)?)?$")


@dataclass(frozen=True)
class Crd:
    group: str
    version: str
    plural: str
    kind: str
    list_kind: str
    schema: dict[str, Any]


@dataclass
class Pod:
    namespace: str
    name: str
    labels: dict[str, str]
    container: str
    phase: str = "Running"
    log: str = ""
    owner: tuple[str, str] | None = None  # (plural, name) of the job it belongs to: deleted with it
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))

    def body(self) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": self.name, "namespace": self.namespace, "labels": dict(self.labels),
                             "uid": self.uid},
                "spec": {"containers": [{"name": self.container, "image": "ghcr.io/example/stjobs:1.0"}]},
                "status": {"phase": self.phase}}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    at: float = field(default_factory=time.monotonic)


def load_crds(schemas_dir: Path) -> dict[tuple[str, str, str], Crd]:
    """Every served version of the CRDs k8s_checks knows, keyed by (group, version, plural) as in the URL."""
    crds = {}
    for (api_version, kind), file_name in CRD_FILES.items():
        if not (schemas_dir / file_name).is_file():
            continue
        document = yaml.load((schemas_dir / file_name).read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
        names = document["spec"]["names"]
        group, _, version = api_version.partition("/")
        schema = load_schema(schemas_dir, api_version, kind)
        assert schema is not None
        crds[group, version, names["plural"]] = Crd(group, version, names["plural"], names["kind"],
                                                    names["listKind"], schema)
    return crds


def status_body(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": message, "reason": reason, "code": code}
    if details:
        body["details"] = details
    return body


def log_options_error(query: dict[str, str]) -> str:
    """What the API server's validation of PodLogOptions says of ``tailLines`` and ``limitBytes``; "" if valid."""
    if "tailLines" in query and int(query["tailLines"]) < 0:
        return f"tailLines: Invalid value: {query['tailLines']}: must be greater than or equal to 0"
    if "limitBytes" in query and int(query["limitBytes"]) < 1:
        return f"limitBytes: Invalid value: {query['limitBytes']}: must be greater than 0"
    return ""


def log_window(log: str, query: dict[str, str]) -> bytes:
    """A container's log as a non-follow read returns it: ``tailLines`` keeps the last N lines (the unterminated
    line being written counts as one), then ``limitBytes`` stops after the first N bytes of that, mid-line and
    mid-character alike (the kubelet counts bytes, not lines)."""
    lines = re.findall(r"[^\n]*\n|[^\n]+$", log)
    if "tailLines" in query:
        count = int(query["tailLines"])
        lines = lines[len(lines) - count:] if count < len(lines) else lines
    data = "".join(lines).encode()
    return data[: int(query["limitBytes"])] if "limitBytes" in query else data


SET_TERM = re.compile(r"^(?P<key>[^\s!=]+)\s+(?P<op>in|notin)\s+\((?P<values>[^)]*)\)$")


def matches(labels: dict[str, str], selector: str) -> bool:
    # Commas split terms, except inside the parentheses of a set term ("key in (a,b)").
    for term in filter(None, (part.strip() for part in re.split(r",(?![^(]*\))", selector))):
        if found := SET_TERM.match(term):
            values = {value.strip() for value in found["values"].split(",")}
            if (labels.get(found["key"]) in values) != (found["op"] == "in"):
                return False
        elif "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def prune(obj: Any, path: str, key: str) -> None:
    """Drop one unknown field, as the API server's pruning does; ``path`` as k8s_checks writes it."""
    node = obj
    if path != "(root)":
        for bracketed, plain in re.findall(r"\[([^\]]*)\]|([^.\[\]]+)", path):
            part = bracketed or plain
            node = node[int(part)] if isinstance(node, list) else node[part]
    node.pop(key, None)


class FakeKube:
    """The server and its state. Use as a context manager; ``url`` is its address, ``requests`` what it got."""

    def __init__(self, schemas_dir: Path = SCHEMAS_DIR, token: str = TOKEN, namespaces: tuple[str, ...] = ("default",),
                 installed: tuple[str, ...] | None = None) -> None:
        crds = load_crds(schemas_dir)
        if not crds:
            raise FileNotFoundError(f"no Kubeflow CRD files in {schemas_dir}")
        self.crds = {key: crd for key, crd in crds.items() if installed is None or crd.kind in installed}
        self.token = token
        self.namespaces = set(namespaces)
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (plural, namespace, name) -> object
        self.pods: dict[tuple[str, str], Pod] = {}
        self.requests: list[Request] = []
        self.foreground_delay_s = 0.0  # > 0: a Foreground delete keeps the object this long (its pods go first)
        self.log_error: int | None = None  # set: every log read answers it (a kubelet the API server cannot reach)
        self.changed = threading.Condition()
        self._version = 0
        self._clock = time.time()
        self._stopping = False
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._serve, name="fake-kube", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _serve(self) -> None:
        self._server.serve_forever(poll_interval=0.05)  # shutdown() waits up to one poll

    def __enter__(self) -> FakeKube:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self.changed:
            self._stopping = True
            self.changed.notify_all()  # ends open log streams
        self._server.shutdown()
        self._server.server_close()

    # What a test does in place of the operator and the kubelet.
    def get(self, plural: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
        with self.changed:
            found = self.objects.get((plural, namespace, name))
            return json.loads(json.dumps(found)) if found is not None else None

    def set_condition(self, plural: str, name: str, kind: str, status: str = "True", reason: str = "",
                      message: str = "", namespace: str = "default") -> None:
        """Set one condition as the operator does: replaced by type, lastTransitionTime one second later than
        the previous one (so the newest is unambiguous)."""
        with self.changed:
            obj = self.objects[plural, namespace, name]
            self._clock += 1
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._clock))
            conditions = [c for c in obj.setdefault("status", {}).get("conditions", []) if c["type"] != kind]
            conditions.append({"type": kind, "status": status, "reason": reason or kind, "message": message,
                               "lastUpdateTime": stamp, "lastTransitionTime": stamp})
            obj["status"]["conditions"] = conditions
            self._bump(obj)

    def set_status(self, plural: str, name: str, status: dict[str, Any], namespace: str = "default") -> None:
        with self.changed:
            obj = self.objects[plural, namespace, name]
            obj["status"] = status
            self._bump(obj)

    def add_pod(self, name: str, labels: dict[str, str], container: str, log: str = "", phase: str = "Running",
                owner: tuple[str, str] | None = None, namespace: str = "default") -> None:
        with self.changed:
            self.pods[namespace, name] = Pod(namespace, name, labels, container, phase, log, owner)
            self.changed.notify_all()

    def add_pytorchjob_pods(self, job: str, logs: list[str], phase: str = "Running",
                            namespace: str = "default") -> list[str]:
        """Pods named and labelled as training-operator 1.9 makes them: a master, then workers; ``logs[i]``
        is node i's output. Added workers first, so the listing's name order alone would not put master first."""
        names: list[str] = []
        for index, text in reversed(list(enumerate(logs))):
            role, replica = ("master", 0) if index == 0 else ("worker", index - 1)
            name = f"{job}-{role}-{replica}"
            labels = {"training.kubeflow.org/job-name": job, "training.kubeflow.org/operator-name":
                      "pytorchjob-controller", "training.kubeflow.org/replica-type": role,
                      "training.kubeflow.org/replica-index": str(replica)}
            if role == "master":
                labels["training.kubeflow.org/job-role"] = "master"
            self.add_pod(name, labels, "pytorch", text, phase, ("pytorchjobs", job), namespace)
            names.insert(0, name)
        return names

    def add_trainjob_pods(self, job: str, logs: list[str], phase: str = "Running",
                          namespace: str = "default") -> list[str]:
        """Pods as JobSet makes them for the torch-distributed runtime: one Indexed Job ``node`` (its
        completion index is the node rank) whose pod names end in a random suffix."""
        names: list[str] = []
        for index, text in enumerate(logs):
            name = f"{job}-node-0-{index}-{uuid.uuid4().hex[:5]}"
            labels = {"jobset.sigs.k8s.io/jobset-name": job, "jobset.sigs.k8s.io/replicatedjob-name": "node",
                      "jobset.sigs.k8s.io/job-index": "0", "batch.kubernetes.io/job-completion-index": str(index),
                      "trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
            self.add_pod(name, labels, "node", text, phase, ("trainjobs", job), namespace)
            names.append(name)
        return names

    def write_log(self, pod: str, text: str, namespace: str = "default") -> None:
        with self.changed:
            self.pods[namespace, pod].log += text
            self.changed.notify_all()

    def set_pod_phase(self, pod: str, phase: str, namespace: str = "default") -> None:
        """Succeeded or Failed ends the pod's log streams, as the container's exit does."""
        with self.changed:
            self.pods[namespace, pod].phase = phase
            self.changed.notify_all()

    # The server side.
    def _bump(self, obj: dict[str, Any]) -> None:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)
        self.changed.notify_all()

    def _remove(self, plural: str, namespace: str, name: str) -> None:
        with self.changed:
            self.objects.pop((plural, namespace, name), None)
            for key, pod in list(self.pods.items()):
                if pod.owner == (plural, name) and pod.namespace == namespace:
                    del self.pods[key]  # the garbage collector follows ownerReferences
            self.changed.notify_all()

    def create(self, crd: Crd, namespace: str, body: Any, validation: str) -> tuple[int, Any, list[str]]:
        if not isinstance(body, dict):
            return 400, status_body(400, "BadRequest", "the body is not a JSON object"), []
        expected = f"{crd.group}/{crd.version}"
        if body.get("apiVersion") != expected or body.get("kind") != crd.kind:
            return 400, status_body(400, "BadRequest", f"the API version in the data ({body.get('apiVersion')}) "
                                    f"does not match the expected API version ({expected})"), []
        meta = body.setdefault("metadata", {})
        if meta.get("namespace", namespace) != namespace:
            return 400, status_body(400, "BadRequest", "the namespace of the provided object does not match the "
                                    "namespace sent on the request"), []
        if namespace not in self.namespaces:
            return 404, status_body(404, "NotFound", f'namespaces "{namespace}" not found',
                                    {"name": namespace, "kind": "namespaces"}), []
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = str(meta.get("name") or "")
        invalid = f'{crd.kind}.{crd.group} "{name}" is invalid: '
        if not name:
            return 422, status_body(422, "Invalid", invalid + "metadata.name: Required value: name or "
                                    "generateName is required"), []
        if not DNS_SUBDOMAIN.fullmatch(name) or len(name) > 253:
            return 422, status_body(422, "Invalid", invalid + f'metadata.name: Invalid value: "{name}": a '
                                    "lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                                    "characters, '-' or '.', and must start and end with an alphanumeric "
                                    "character"), []
        body.pop("status", None)  # the status subresource: a create cannot set it
        errors = schema_errors(body, crd.schema)
        unknown = [(m["path"], m["key"]) for m in map(UNKNOWN_FIELD.match, errors) if m]
        unknown_text = [f'unknown field "{key if path == "(root)" else path + "." + key}"' for path, key in unknown]
        others = [error for error in errors if not UNKNOWN_FIELD.match(error)]
        if unknown and validation == "Strict":
            return 400, status_body(400, "BadRequest", f'{crd.kind} in version "{crd.version}" cannot be handled '
                                    f"as a {crd.kind}: strict decoding error: {', '.join(unknown_text)}"), []
        for path, key in unknown:
            prune(body, path, key)
        if others:
            causes = [{"reason": "FieldValueInvalid", "message": error, "field": error.split(":")[0]}
                      for error in others]
            text = others[0] if len(others) == 1 else "[" + ", ".join(others) + "]"
            return 422, status_body(422, "Invalid", invalid + text, {"name": name, "group": crd.group,
                                                                      "kind": crd.kind, "causes": causes}), []
        with self.changed:
            if (crd.plural, namespace, name) in self.objects:
                return 409, status_body(409, "AlreadyExists", f'{crd.plural}.{crd.group} "{name}" already exists',
                                        {"name": name, "group": crd.group, "kind": crd.plural}), []
            meta.update({"namespace": namespace, "uid": str(uuid.uuid4()), "generation": 1,
                         "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            self.objects[crd.plural, namespace, name] = body
            self._bump(body)
        warnings = unknown_text if validation == "Warn" else []
        return 201, body, warnings

    def delete(self, crd: Crd, namespace: str, name: str, policy: str) -> tuple[int, Any]:
        with self.changed:
            obj = self.objects.get((crd.plural, namespace, name))
            if obj is None:
                return 404, self._not_found(crd, name)
            meta = obj["metadata"]
            if policy == "Foreground" and self.foreground_delay_s > 0:
                if "deletionTimestamp" not in meta:
                    meta["deletionTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                    meta["finalizers"] = [*meta.get("finalizers", []), "foregroundDeletion"]
                    self._bump(obj)
                    timer = threading.Timer(self.foreground_delay_s, self._remove, (crd.plural, namespace, name))
                    timer.daemon = True
                    timer.start()
                return 200, obj  # still there: the client sees it being deleted
        self._remove(crd.plural, namespace, name)
        return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                     "details": {"name": name, "group": crd.group, "kind": crd.plural, "uid": meta["uid"]}}

    def _not_found(self, crd: Crd, name: str) -> dict[str, Any]:
        return status_body(404, "NotFound", f'{crd.plural}.{crd.group} "{name}" not found',
                           {"name": name, "group": crd.group, "kind": crd.plural})


def _handler(fake: FakeKube) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive and chunked log streams, as the client expects

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in two writes: without this, Nagle and delayed ACKs add 40 ms to each answer.
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: pytest shows what matters

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def do_DELETE(self) -> None:
            self._dispatch("DELETE")

        def do_PUT(self) -> None:
            self._dispatch("PUT")

        def do_PATCH(self) -> None:
            self._dispatch("PATCH")

        def _dispatch(self, method: str) -> None:
            url = urlsplit(self.path)
            query = {key: values[-1] for key, values in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                self._json(400, status_body(400, "BadRequest", "the body is not valid JSON"))
                return
            fake.requests.append(Request(method, url.path, query, json.loads(raw) if raw else None))  # as sent
            if self.headers.get("Authorization") != f"Bearer {fake.token}":
                self._json(401, status_body(401, "Unauthorized", "Unauthorized"))
            elif url.path == "/version":
                self._json(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-stjobs-fake"})
            elif found := OBJECTS.match(url.path):
                self._objects(method, found.groupdict(), query, body)
            elif (found := PODS.match(url.path)) and method == "GET":
                self._pods(found.groupdict(), query)
            else:
                self._json(404, status_body(404, "NotFound", "the server could not find the requested resource"))

        def _objects(self, method: str, route: dict[str, str], query: dict[str, str], body: Any) -> None:
            crd = fake.crds.get((route["group"], route["version"], route["plural"]))
            if crd is None:  # no CRD serves this: the aggregator's plain-text answer
                self._send(404, b"404 page not found\n", "text/plain; charset=utf-8")
                return
            namespace, name = route["ns"], route["name"]
            if method == "POST" and name is None:
                code, answer, warnings = fake.create(crd, namespace, body, query.get("fieldValidation", "Warn"))
                quoted = [warning.replace('"', '\\"') for warning in warnings]  # an HTTP quoted-string
                self._json(code, answer, [f'299 - "{text}"' for text in quoted])
            elif method == "GET" and name is None:
                with fake.changed:
                    items = [obj for (plural, ns, _), obj in sorted(fake.objects.items())
                             if plural == crd.plural and ns == namespace
                             and matches(obj["metadata"].get("labels") or {}, query.get("labelSelector", ""))]
                    self._json(200, {"apiVersion": f"{crd.group}/{crd.version}", "kind": crd.list_kind,
                                     "metadata": {"resourceVersion": str(fake._version)}, "items": items})
            elif method == "GET":
                with fake.changed:
                    obj = fake.objects.get((crd.plural, namespace, name))
                    if obj is None:
                        self._json(404, fake._not_found(crd, name))
                    else:
                        self._json(200, obj)
            elif method == "DELETE" and name is not None:
                policy = query.get("propagationPolicy") or (body or {}).get("propagationPolicy") or "Background"
                self._json(*fake.delete(crd, namespace, name, policy))
            else:
                self._json(405, status_body(405, "MethodNotAllowed", f"the fake does not serve {method} here"))

        def _pods(self, route: dict[str, str], query: dict[str, str]) -> None:
            namespace, name = route["ns"], route["name"]
            if name is None:
                with fake.changed:
                    items = [pod.body() for (ns, _), pod in sorted(fake.pods.items())
                             if ns == namespace and matches(pod.labels, query.get("labelSelector", ""))]
                self._json(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
                return
            with fake.changed:
                pod = fake.pods.get((namespace, name))
            if pod is None:
                self._json(404, status_body(404, "NotFound", f'pods "{name}" not found',
                                            {"name": name, "kind": "pods"}))
            elif not route["log"]:
                self._json(200, pod.body())
            elif query.get("container", pod.container) != pod.container:
                self._json(400, status_body(400, "BadRequest", f"container {query['container']} is not valid for "
                                            f"pod {name}"))
            elif pod.phase == "Pending":
                self._json(400, status_body(400, "BadRequest", f'container "{pod.container}" in pod "{name}" is '
                                            "waiting to start: ContainerCreating"))
            elif fake.log_error is not None:
                self._json(fake.log_error, status_body(fake.log_error, "InternalError", "Get \"https://10.0.0.7:"
                                                       "10250/containerLogs\": dial tcp: connection refused"))
            elif invalid := log_options_error(query):
                self._json(422, status_body(422, "Invalid", f'PodLogOptions "{name}" is invalid: {invalid}'))
            elif query.get("follow") == "true":
                self._stream(pod)
            else:
                self._send(200, log_window(pod.log, query), "text/plain")

        def _stream(self, pod: Pod) -> None:
            """Chunked, as the kubelet's stream through the API server: what is there, then each new piece,
            until the container ends, the pod is deleted or the server stops."""
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            sent = 0
            try:
                while True:
                    with fake.changed:
                        while (sent == len(pod.log) and pod.phase in ("Running", "Pending") and not fake._stopping
                               and fake.pods.get((pod.namespace, pod.name)) is pod):
                            fake.changed.wait(1.0)
                        piece, sent = pod.log[sent:], len(pod.log)
                        ended = pod.phase not in ("Running", "Pending") or fake._stopping or (
                            fake.pods.get((pod.namespace, pod.name)) is not pod)
                    if piece:
                        data = piece.encode()
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                        self.wfile.flush()
                    if ended:
                        self.wfile.write(b"0\r\n\r\n")
                        self.wfile.flush()
                        return
            except OSError:
                return  # the client closed the stream

        def _json(self, code: int, body: Any, warnings: list[str] | None = None) -> None:
            self._send(code, json.dumps(body).encode(), "application/json", warnings or [])

        def _send(self, code: int, data: bytes, content_type: str, warnings: list[str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for warning in warnings or []:
                self.send_header("Warning", warning)
            self.end_headers()
            self.wfile.write(data)

    return Handler


def write_kubeconfig(path: Path, server_url: str, token: str = TOKEN, namespace: str = "default") -> Path:
    """A kubeconfig with one context pointing at ``server_url``, as ``kind`` or a cloud CLI would write it."""
    config = {"apiVersion": "v1", "kind": "Config", "preferences": {},
              "clusters": [{"name": "fake", "cluster": {"server": server_url}}],
              "users": [{"name": "fake-user", "user": {"token": token}}],
              "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake-user",
                                                        "namespace": namespace}}],
              "current-context": "fake"}
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path
