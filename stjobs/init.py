"""``stjobs init``: a starting spec for where the user is, like ``accelerate config``.

On a SLURM login node the site is read from SLURM itself and values that fit it are proposed
(:mod:`stjobs.slurm_site`: partitions, time limits, GRES, CPUs and memory from ``sinfo``, the default account and
the QoS the user may use from ``sacctmgr`` and ``scontrol``). On a terminal each value is asked with the proposal in
brackets; otherwise flags and proposals are taken as they are. What the defaults files already say (partition,
account, QoS, namespace) is proposed and not repeated in the spec; ``--defaults user|site`` writes those values to
that file instead. Every file is written with :mod:`stjobs.yamlio` and kept only once the spec loads back over the
defaults and renders.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from stjobs.errors import OutputError, UsageError
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


def spec_data(backend: str, values: Mapping[str, Any], inherited: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The spec as data, in the order a person reads it; values that are None or 0 are left to the defaults, and
    so are the site-wide ones the defaults files give (``inherited``; one they give that the user said none to is
    written as null, which overrides it)."""
    inherited = inherited or {}
    data: dict[str, Any] = {"name": values["name"]}
    for key in ("nodes", "gpus_per_node", "gpu_type", "cpus_per_task", "mem_gb", "time_min", "image"):
        if values.get(key) and not (key == "nodes" and values[key] == 1):
            data[key] = values[key]
    for block, keys in (("slurm", ("partition", "account", "qos")), ("k8s", ("namespace",))):
        own = {key: values.get(key) or None for key in keys if (values.get(key) or None) != inherited.get(key)}
        if backend == block and own:
            data[block] = own
    args = ["--model", values["model"], "--train-data", values["train_data"]]
    data["entrypoint"] = ({"script": values["script"], "resumable": True, "args": args} if values.get("script")
                          else {"module": "stjobs.train", "args": args})
    return data


# ---- the command ---------------------------------------------------------------------------------------------

_FLAG_FIELDS = ("name", "partition", "account", "qos", "gpus_per_node", "gpu_type", "nodes", "time_min",
                "cpus_per_task", "mem_gb", "image", "namespace", "model", "train_data")
_INTS = ("gpus_per_node", "nodes", "time_min", "cpus_per_task")


def number(text: str) -> float:
    """A flag's decimal number, whole ones as int (``--mem-gb 64`` writes ``mem_gb: 64``, not 64.0)."""
    value = float(text)
    return int(value) if value.is_integer() else value


def add_arguments(parser: Any) -> None:
    parser.add_argument("--backend", "-b", choices=BACKENDS, default=None,
                        help="where the job runs (default: slurm where sinfo is on PATH, else local)")
    parser.add_argument("--output", "-o", default="stjobs.yaml", help="the spec to write (default: ./stjobs.yaml)")
    parser.add_argument("--script", metavar="FILE.py", default=None,
                        help="also write a starting training script there; the spec runs it")
    parser.add_argument("--yes", "-y", action="store_true", help="ask nothing: take the flags and proposals")
    parser.add_argument("--force", action="store_true", help="replace files that exist (a defaults file keeps "
                        "its other values)")
    parser.add_argument("--defaults", choices=("user", "site"), default=None,
                        help="also write the site-wide values (slurm partition, account, qos; k8s namespace) to the "
                        "user defaults file ($STJOBS_DEFAULTS, else $XDG_CONFIG_HOME or ~/.config, "
                        "stjobs/defaults.yaml) or the site's ($STJOBS_SITE_DEFAULTS, else /etc/stjobs/defaults.yaml): "
                        "every spec inherits them, so this one leaves them out")
    for field in _FLAG_FIELDS:
        kind = int if field in _INTS else number if field == "mem_gb" else str
        parser.add_argument(f"--{field.replace('_', '-')}", dest=field, type=kind, default=None,
                            help=f"the spec's {field} (default: proposed, or asked on a terminal)")
    parser.set_defaults(run=cmd_init)


@dataclass(frozen=True)
class Question:
    key: str
    text: str
    kind: str = "text"  # text (required), optional (Enter on no default or 'none': left out), int, and
    # count / number: an optional whole or decimal number


_SLURM_QUESTIONS = (Question("partition", "Partition", "optional"), Question("gpus_per_node", "GPUs per node", "int"),
                    Question("gpu_type", "GPU type (as the site's GRES names it)", "optional"),
                    Question("nodes", "Nodes", "int"), Question("time_min", "Time limit in minutes", "int"),
                    Question("cpus_per_task", "CPUs per node (for all its processes)", "count"),
                    Question("mem_gb", "Memory per node in GB", "number"),
                    Question("account", "Account", "optional"), Question("qos", "QoS", "optional"))
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
        optional = question.kind in ("optional", "count", "number")
        if not text:
            if default is not None or optional:
                return default
            if not line:
                raise UsageError(f"--{question.key.replace('_', '-')}: got no answer; expected a value")
            stdout.write("  an answer is needed\n")
            continue
        if optional and text.lower() == "none":
            return None
        if question.kind in ("text", "optional"):
            return text
        if text.isdigit():
            return int(text)
        if question.kind == "number" and re.fullmatch(r"\d*\.\d+", text):
            return float(text)
        stdout.write(f"  {text!r} is not a {'number' if question.kind == 'number' else 'whole number'}\n")


def site_summary(facts: SiteFacts) -> str:
    lines = ["SLURM site (sinfo):"]
    for part in facts.partitions:
        limit = "no limit" if part.time_limit_min is None else f"limit {part.time_limit_min} min"
        shapes = "; ".join(dict.fromkeys(
            (f"{g.gpus} x {g.gpu_type or 'gpu'}" if g.gpus else "no GPUs") + f", {g.cpus or '?'} CPUs, "
            f"{g.mem_mb or '?'} MB" for g in part.groups)) or "no nodes"
        allowed = f", QoS allowed: {', '.join(part.allow_qos)}" if part.allow_qos is not None else ""
        lines.append(f"  {part.name}{' (default)' if part.default else ''}: {'up' if part.up else 'DOWN'}, {limit}, "
                     f"{part.nodes} node(s) of {shapes}{allowed}")
    lines += [f"  note: {note}" for note in facts.notes]
    lines += [f"  default account: {facts.account}"] if facts.account else []
    for account in dict.fromkeys(assoc.account for assoc in facts.associations):
        qos = {q for a in facts.associations if a.account == account for q in a.qos}
        lines.append(f"  account {account}: QoS {', '.join(sorted(qos)) or '(not listed)'}")
    return "\n".join(lines)


def gather(backend: str, facts: SiteFacts, given: Mapping[str, Any], where: Path, interactive: bool,
           stdin: TextIO, stdout: TextIO, inherited: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every value of the spec: the flags, then (on a terminal) the answers, then what the defaults files give
    (``inherited``), then the proposals. QoS is asked only where the site has accounting (else there is none)."""
    answers = dict(given)
    common = {"name": job_name(where), "model": DEFAULT_MODEL, "train_data": DEFAULT_TRAIN_DATA}
    questions = {"slurm": _SLURM_QUESTIONS, "k8s": _K8S_QUESTIONS}.get(backend, ()) + _COMMON_QUESTIONS

    def proposals() -> dict[str, Any]:
        base = {**(inherited or {}), **answers}
        return propose(facts, base) if backend == "slurm" else base

    if interactive and backend == "slurm":
        stdout.write(site_summary(facts) + "\n")
    for question in questions if interactive else ():
        if question.key not in answers and (question.key != "qos" or facts.accounting):
            proposal = {**common, "namespace": "default", "nodes": 1, "gpus_per_node": 0, **proposals()}
            answers[question.key] = ask(question, proposal.get(question.key), stdin, stdout)
    values = {**common, **proposals(), **answers}
    if backend == "k8s" and not values.get("image"):
        raise UsageError("--image: got nothing; expected the container image the pods run (k8s needs one: "
                         "stjobs image build makes one from the spec)")
    return values


def write_checked(files: Sequence[tuple[Path, str]], check: Callable[[Sequence[Path]], None], force: bool) -> None:
    """Each file written to a temporary sibling, ``check`` run on the temporaries (the spec first), then all
    renamed into place: on any error none is left, neither the new files nor their temporaries."""
    import tempfile

    temps: list[Path] = []
    try:
        for path, text in files:
            if path.exists() and not force:
                raise UsageError(f"{path}: exists; pass --force to replace it")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            except OSError as error:  # /etc/stjobs as a user, a read-only place, a file where a directory goes
                above = next((p for p in path.parents if p.exists()), path.parent)
                why = error.strerror if above.is_dir() else f"{above} is not a directory"
                raise OutputError("output", str(path), f"a file you may write ({why})") from None
            temps.append(Path(name))
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
                handle.write(text)
            os.chmod(name, 0o644)
        check(temps)
        for temp, (path, _) in zip(temps, files, strict=True):
            os.replace(temp, path)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


def inherited_values(kinds: Mapping[str, Path] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the defaults files give of the site-wide values, flat (partition, account, qos, namespace), and the
    data of the file ``kinds`` names (its one kind: site or user) as it is now, {} when there is none."""
    from stjobs import defaults
    from stjobs.config import read_spec_file

    flat: dict[str, Any] = {}
    own: dict[str, Any] = {}
    for kind, path in defaults.files_from_env(instead=kinds):
        if kinds and kind in kinds and not path.exists():
            continue
        data = read_spec_file(path, f"{kind} defaults file")
        own = data if kinds and kind in kinds else own
        for block, key in defaults.SITE_WIDE:
            if isinstance(data.get(block), dict) and key in data[block]:
                flat[key] = data[block][key]
    return flat, own


def script_text() -> str:
    from stjobs.templating import templates_dir

    return (templates_dir() / SCRIPT_SOURCE).read_text(encoding="utf-8")


_SHARED_KEYS = {"slurm": ("partition", "account", "qos"), "k8s": ("namespace",)}


def shared_data(own: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A defaults file's data ``own`` with the site-wide ``values`` written over it, its other values kept."""
    from stjobs import defaults

    merged = copy.deepcopy(dict(own))
    for block, keys in defaults.site_wide(values).items():
        below = merged.get(block)
        merged[block] = {**(below if isinstance(below, dict) else {}), **keys}
    return merged


def cmd_init(args: Any, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    from stjobs import defaults, yamlio

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    out = Path(args.output)
    script = Path(args.script) if args.script else None
    shared = defaults.file_for(args.defaults) if args.defaults else None
    for path in [out, *([script] if script else []), *([shared] if shared else [])]:
        if path.exists() and not args.force:  # before any question: the answers would be lost
            raise UsageError(f"{path}: exists; pass --force to replace it (or -o another path)" if path != shared
                             else f"{path}: exists; pass --force to write into it (its other values are kept)")
    interactive = not args.yes and stdin.isatty()
    backend = args.backend
    if backend is None:
        guess = "slurm" if shutil.which("sinfo") else "local"
        backend = ask(Question("backend", f"Backend ({', '.join(BACKENDS)})"), guess, stdin, stdout) \
            if interactive else guess
        if backend not in BACKENDS:
            raise UsageError(f"--backend: got {backend!r}; expected one of {', '.join(BACKENDS)}")
    keys = _SHARED_KEYS.get(backend, ())
    if shared and not keys:
        raise UsageError(f"--defaults: got {args.defaults!r} with backend {backend}; expected backend slurm or k8s "
                         "(a local job has no site-wide values to share)")
    facts = read_slurm_site() if backend == "slurm" else SiteFacts()
    flat, own = inherited_values({args.defaults: shared} if args.defaults and shared else None)
    inherited = {key: flat[key] for key in keys if key in flat}
    given = {field: getattr(args, field) for field in _FLAG_FIELDS if getattr(args, field) is not None}
    values = gather(backend, facts, given, out.parent, interactive, stdin, stdout, inherited)
    if script is not None:
        values["script"] = os.path.relpath(script.resolve(), out.parent.resolve()).replace(os.sep, "/")
    header = (f"# Written by `stjobs init --backend {backend}`: a start, edit it. Every field: `stjobs schema`.\n"
              f"# Check it: stjobs render {out.name} -b {backend} --dry-run; run it: stjobs submit {out.name} "
              f"-b {backend}\n")
    written = {key: values[key] for key in keys if values.get(key)}
    after = {**inherited, **written} if shared else inherited  # what the defaults files give once written
    files = [(out, header + yamlio.dump(spec_data(backend, values, after)))]
    if shared:
        if not written:
            raise UsageError(f"--defaults: got nothing site-wide to write; expected a value for one of "
                             f"{', '.join('--' + key for key in keys)} (none was given or found)")
        files.append((shared, f"# Written by `stjobs init --defaults {args.defaults}`: every spec inherits these "
                      "(its own value wins).\n# Where a spec's values come from: stjobs render SPEC --explain. "
                      "Every field: `stjobs schema`.\n" + yamlio.dump(shared_data(own, written))))
    files += [(script, script_text())] if script else []

    def check(temps: Sequence[Path]) -> None:
        from stjobs.api import render_job
        from stjobs.config import load_spec

        layers = defaults.files_from_env(instead={args.defaults: temps[1]} if shared else None)
        render_job(load_spec(temps[0], defaults=[path for _, path in layers]), backend)

    write_checked(files, check, args.force)
    for note in [*(facts.notes if not interactive else ()), *misfits(facts, values)]:
        stdout.write(f"stjobs init: note: {note}\n")
    shape = f"{values.get('nodes') or 1} node(s)"
    if values.get("gpus_per_node"):
        shape += f" x {values['gpus_per_node']} {values.get('gpu_type') or 'GPU'}"
    where = f", partition {values['partition']}" if backend == "slurm" and values.get("partition") else ""
    where += f", account {values['account']}" if backend == "slurm" and values.get("account") else ""
    where += f", qos {values['qos']}" if backend == "slurm" and values.get("qos") else ""
    stdout.write(f"wrote {out} ({backend}: {shape}{where})" + (f" and {script}" if script else "") + "\n")
    left = ", ".join(f"{backend}.{key} {after[key]}" for key in keys
                     if after.get(key) and values.get(key) == after[key])
    if shared:
        stdout.write(f"wrote {shared} ({args.defaults} defaults: {left}): every spec inherits them, so {out.name} "
                     "leaves them out\n")
    elif left:
        stdout.write(f"from the defaults files, so not repeated in {out.name}: {left}\n")
    stdout.write(f"next: stjobs render {out} -b {backend} --dry-run; stjobs submit {out} -b {backend}\n")
    return 0
