"""``stjobs init``: a starting spec for where the user is, like ``accelerate config``.

On a SLURM login node the site is read from SLURM itself and values that fit it are proposed
(:mod:`stjobs.slurm_site`: partitions, time limits and GRES from ``sinfo``, the default account from
``sacctmgr``). On a terminal each value is asked with the proposal in brackets; otherwise flags and proposals are
taken as they are. The spec is written with :mod:`stjobs.yamlio` and kept only once it loads back and renders.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from stjobs.errors import UsageError
from stjobs.slurm_site import SiteFacts, misfits, propose, read_slurm_site

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_TRAIN_DATA = "data/train.jsonl"
BACKENDS = ("local", "slurm", "k8s")
SCRIPT_SOURCE = "train_script.py"  # a plain file among the packaged templates (nothing in it varies)


def job_name(where: Path) -> str:
    """A spec name from the project's directory name: lowercase letters, digits and '-', starting with a letter."""
    name = re.sub(r"[^a-z0-9]+", "-", where.resolve().name.lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name)[:42].rstrip("-")
    return name or "train"


def spec_data(backend: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The spec as data, in the order a person reads it; values that are None or 0 are left to the defaults."""
    data: dict[str, Any] = {"name": values["name"]}
    for key in ("nodes", "gpus_per_node", "gpu_type", "time_min", "image"):
        if values.get(key) and not (key == "nodes" and values[key] == 1):
            data[key] = values[key]
    slurm = {key: values[key] for key in ("partition", "account", "qos") if values.get(key)}
    if backend == "slurm" and slurm:
        data["slurm"] = slurm
    if backend == "k8s" and values.get("namespace"):
        data["k8s"] = {"namespace": values["namespace"]}
    args = ["--model", values["model"], "--train-data", values["train_data"]]
    data["entrypoint"] = ({"script": values["script"], "resumable": True, "args": args} if values.get("script")
                          else {"module": "stjobs.train", "args": args})
    return data


# ---- the command ---------------------------------------------------------------------------------------------

_FLAG_FIELDS = ("name", "partition", "account", "qos", "gpus_per_node", "gpu_type", "nodes", "time_min", "image",
                "namespace", "model", "train_data")


def add_arguments(parser: Any) -> None:
    parser.add_argument("--backend", "-b", choices=BACKENDS, default=None,
                        help="where the job runs (default: slurm where sinfo is on PATH, else local)")
    parser.add_argument("--output", "-o", default="stjobs.yaml", help="the spec to write (default: ./stjobs.yaml)")
    parser.add_argument("--script", metavar="FILE.py", default=None,
                        help="also write a starting training script there; the spec runs it")
    parser.add_argument("--yes", "-y", action="store_true", help="ask nothing: take the flags and proposals")
    parser.add_argument("--force", action="store_true", help="replace files that exist")
    for field in _FLAG_FIELDS:
        kind = int if field in ("gpus_per_node", "nodes", "time_min") else str
        parser.add_argument(f"--{field.replace('_', '-')}", dest=field, type=kind, default=None,
                            help=f"the spec's {field} (default: proposed, or asked on a terminal)")
    parser.set_defaults(run=cmd_init)


@dataclass(frozen=True)
class Question:
    key: str
    text: str
    kind: str = "text"  # text (required), optional (Enter on no default or 'none': left out), int


_SLURM_QUESTIONS = (Question("partition", "Partition", "optional"), Question("gpus_per_node", "GPUs per node", "int"),
                    Question("gpu_type", "GPU type (as the site's GRES names it)", "optional"),
                    Question("nodes", "Nodes", "int"), Question("time_min", "Time limit in minutes", "int"),
                    Question("account", "Account", "optional"))
_K8S_QUESTIONS = (Question("image", "Container image (e.g. ghcr.io/org/train:1.0)"),
                  Question("namespace", "Namespace"), Question("nodes", "Nodes (pods)", "int"),
                  Question("gpus_per_node", "GPUs per pod", "int"))
_COMMON_QUESTIONS = (Question("name", "Job name"), Question("model", "Model (a name or directory)"),
                     Question("train_data", "Training data (JSON lines of anchor/positive pairs)"))


def ask(question: Question, default: Any, stdin: TextIO, stdout: TextIO) -> Any:
    """One answer: Enter takes the default; an answer that does not parse is asked again; end of input takes
    the default (and for a required value without one, refuses)."""
    shown = "" if default is None else f" [{default}]"
    while True:
        stdout.write(f"{question.text}{shown}: ")
        stdout.flush()
        line = stdin.readline()
        text = line.strip()
        if not line:
            stdout.write("\n")
        if not text:
            if default is not None or question.kind == "optional":
                return default
            if not line:
                raise UsageError(f"--{question.key.replace('_', '-')}: got no answer; expected a value")
            stdout.write("  an answer is needed\n")
            continue
        if question.kind == "optional" and text.lower() == "none":
            return None
        if question.kind != "int":
            return text
        if text.isdigit():
            return int(text)
        stdout.write(f"  {text!r} is not a whole number\n")


def site_summary(facts: SiteFacts) -> str:
    lines = ["SLURM site (sinfo):"]
    for part in facts.partitions:
        limit = "no limit" if part.time_limit_min is None else f"limit {part.time_limit_min} min"
        gres = ", ".join(sorted({f"{g.gpus} x {g.gpu_type or 'gpu'}" for g in part.groups if g.gpus})) or "no GPUs"
        lines.append(f"  {part.name}{' (default)' if part.default else ''}: {'up' if part.up else 'DOWN'}, {limit}, "
                     f"{part.nodes} node(s), {gres} per node")
    lines += [f"  note: {note}" for note in facts.notes]
    lines += [f"  default account: {facts.account}"] if facts.account else []
    return "\n".join(lines)


def gather(backend: str, facts: SiteFacts, given: Mapping[str, Any], where: Path, interactive: bool,
           stdin: TextIO, stdout: TextIO) -> dict[str, Any]:
    """Every value of the spec: the flags, then (on a terminal) the answers, then the proposals."""
    answers = dict(given)
    common = {"name": job_name(where), "model": DEFAULT_MODEL, "train_data": DEFAULT_TRAIN_DATA}
    questions = {"slurm": _SLURM_QUESTIONS, "k8s": _K8S_QUESTIONS}.get(backend, ()) + _COMMON_QUESTIONS
    if interactive and backend == "slurm":
        stdout.write(site_summary(facts) + "\n")
    for question in questions if interactive else ():
        if question.key not in answers:
            proposal = {**common, "namespace": "default", "nodes": 1, "gpus_per_node": 0}
            if backend == "slurm":
                proposal.update(propose(facts, answers))
            answers[question.key] = ask(question, proposal.get(question.key), stdin, stdout)
    values = {**common, **(propose(facts, answers) if backend == "slurm" else {}), **answers}
    if backend == "k8s" and not values.get("image"):
        raise UsageError("--image: got nothing; expected the container image the pods run (k8s needs one: "
                         "stjobs image build makes one from the spec)")
    return values


def write_checked(files: Sequence[tuple[Path, str]], check: Callable[[Path], None], force: bool) -> None:
    """Each file written to a temporary sibling, ``check`` run on the first (the spec), then all renamed into
    place: on any error none is left, neither the new files nor their temporaries."""
    import tempfile

    temps: list[Path] = []
    try:
        for path, text in files:
            if path.exists() and not force:
                raise UsageError(f"{path}: exists; pass --force to replace it")
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temps.append(Path(name))
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
                handle.write(text)
            os.chmod(name, 0o644)
        check(temps[0])
        for temp, (path, _) in zip(temps, files, strict=True):
            os.replace(temp, path)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


def script_text() -> str:
    from stjobs.templating import templates_dir

    return (templates_dir() / SCRIPT_SOURCE).read_text(encoding="utf-8")


def cmd_init(args: Any, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    out = Path(args.output)
    script = Path(args.script) if args.script else None
    for path in [out, *([script] if script else [])]:
        if path.exists() and not args.force:  # before any question: the answers would be lost
            raise UsageError(f"{path}: exists; pass --force to replace it (or -o another path)")
    interactive = not args.yes and stdin.isatty()
    backend = args.backend
    if backend is None:
        guess = "slurm" if shutil.which("sinfo") else "local"
        backend = ask(Question("backend", f"Backend ({', '.join(BACKENDS)})"), guess, stdin, stdout) \
            if interactive else guess
        if backend not in BACKENDS:
            raise UsageError(f"--backend: got {backend!r}; expected one of {', '.join(BACKENDS)}")
    facts = read_slurm_site() if backend == "slurm" else SiteFacts()
    given = {field: getattr(args, field) for field in _FLAG_FIELDS if getattr(args, field) is not None}
    values = gather(backend, facts, given, out.parent, interactive, stdin, stdout)
    if script is not None:
        values["script"] = os.path.relpath(script.resolve(), out.parent.resolve()).replace(os.sep, "/")
    from stjobs import yamlio

    header = (f"# Written by `stjobs init --backend {backend}`: a start, edit it. Every field: `stjobs schema`.\n"
              f"# Check it: stjobs render {out.name} -b {backend} --dry-run; run it: stjobs submit {out.name} "
              f"-b {backend}\n")
    files = [(out, header + yamlio.dump(spec_data(backend, values)))]
    files += [(script, script_text())] if script else []

    def check(spec_path: Path) -> None:
        from stjobs.api import render_job
        from stjobs.config import load_spec

        render_job(load_spec(spec_path), backend)

    write_checked(files, check, args.force)
    for note in [*(facts.notes if not interactive else ()), *misfits(facts, values)]:
        stdout.write(f"stjobs init: note: {note}\n")
    shape = f"{values.get('nodes') or 1} node(s)"
    if values.get("gpus_per_node"):
        shape += f" x {values['gpus_per_node']} {values.get('gpu_type') or 'GPU'}"
    where = f", partition {values['partition']}" if backend == "slurm" and values.get("partition") else ""
    where += f", account {values['account']}" if backend == "slurm" and values.get("account") else ""
    stdout.write(f"wrote {out} ({backend}: {shape}{where})" + (f" and {script}" if script else "") + "\n")
    stdout.write(f"next: stjobs render {out} -b {backend} --dry-run; stjobs submit {out} -b {backend}\n")
    return 0
