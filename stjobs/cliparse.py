"""argparse as the ``stjobs`` command uses it: no abbreviations, one-line errors, "did you mean", completion.

The commands and their flags are in :mod:`stjobs.cli`; this is how any of its parsers behaves. difflib and shtab
are imported on the paths that need them only (an error, ``stjobs completion``): every render would pay for them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

SHELLS = ("bash", "zsh")


class Parser(argparse.ArgumentParser):
    """Every parser of the CLI: ``--node 2`` is refused instead of quietly read as ``--nodes 2`` (argparse's
    abbreviations are off: a flag added later would change what an abbreviation meant), errors are one line, and
    an unknown choice gets the nearest known one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # add_subparsers makes its parsers of the parent's class, so subcommands get this too.
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})

    def error(self, message: str) -> NoReturn:
        # argparse prints its whole usage block before the message: one line, with where to look, reads better
        # and is what scripts that parse stderr can rely on.
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        choices = action.choices
        hint = did_you_mean(str(value), choices) if choices is not None and value not in choices else ""
        if hint:
            known = ", ".join(map(repr, choices or ()))
            raise argparse.ArgumentError(action, f"invalid choice: {value!r}; {hint} (choose from {known})")
        super()._check_value(action, value)


def did_you_mean(word: str, known: Iterable[object]) -> str:
    """``did you mean X?`` for the known word nearest ``word``, or "" when none is near (difflib's 0.6 ratio)."""
    import difflib

    guess = difflib.get_close_matches(word, [str(item) for item in known], n=1)
    return f"did you mean {guess[0]}?" if guess else ""


def status_arguments(status: argparse.ArgumentParser, backends: Iterable[str]) -> None:
    """``stjobs status``'s flags (the command is in :mod:`stjobs.cli`, the table in :mod:`stjobs.statustable`)."""
    status.add_argument("job_id", nargs="?", metavar="JOB")
    status.add_argument("--json", action="store_true", help="one JSON object per job")
    status.add_argument("--state", type=states, default=(), metavar="STATE[,STATE]",
                        help="only jobs in these states, e.g. RUNNING,PENDING")
    status.add_argument("--backend", "-b", choices=sorted(backends), action="append", default=[],
                        help="only this backend's jobs (repeatable)")
    status.add_argument("--name", metavar="GLOB", default=None, help="only jobs whose name matches, e.g. 'bert-*'")
    status.add_argument("--watch", "-w", type=seconds, nargs="?", const=2.0, default=None, metavar="SECONDS",
                        help="redraw the table every SECONDS (default 2) until Ctrl-C")
    status.add_argument("--plot", nargs="?", const="", default=None, metavar="FILE.png",
                        help="with JOB: also draw its run into a PNG (" + PLOT_HELP + ")")


PLOT_HELP = "default: plot.png in the job's directory"


def plot_arguments(plot: argparse.ArgumentParser) -> None:
    plot.add_argument("job_id", nargs="?", metavar="JOB", help="default: the job submitted last")
    plot.add_argument("--output", "-o", metavar="FILE.png", default=None,
                      help=f"where to write the PNG ({PLOT_HELP})")


def logs_arguments(logs: argparse.ArgumentParser) -> None:
    """``stjobs logs``'s flags: what a person reads (the default for the built-in training), every line, or the
    events alone."""
    logs.add_argument("job_id", metavar="JOB")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    logs.add_argument("--rank", type=int, default=None, help="only this global rank's lines, as written")
    shown = logs.add_mutually_exclusive_group()
    shown.add_argument("--raw", action="store_true", help="every line as written (default for the built-in "
                       "training: progress, its messages and errors)")
    shown.add_argument("--events", action="store_true", help="only the training's events, a JSON object a line "
                       "(from the job's events/ files where they are here)")


def states(text: str) -> tuple[Any, ...]:
    """``RUNNING,pending`` as job states (any case); one unknown word refuses the lot, naming every state."""
    from stjobs.jobs import State  # only when the flag is given: `render` never loads the job records' module

    words = [word.strip().upper() for word in text.split(",") if word.strip()]
    wrong = [word for word in words if word not in State.__members__]
    if wrong or not words:
        raise argparse.ArgumentTypeError(f"got {text!r}; expected states separated by commas, of "
                                         f"{', '.join(State.__members__)} (any case)")
    return tuple(State[word] for word in dict.fromkeys(words))


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"got {text!r}; expected seconds between refreshes, a number above 0 "
                                         "(give a JOB before --watch)")
    return value


def command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the command that ran, e.g. ``stjobs image render``'s (two levels down)."""
    while True:
        below = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
        if not below or getattr(args, below[0].dest, None) not in below[0].choices:
            return parser
        parser = below[0].choices[getattr(args, below[0].dest)]


def unknown_flag_hint(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: Sequence[str]) -> str:
    """``did you mean --nodes?`` for the first unknown long option of ``extra`` near one of the command's own."""
    options = [flag for action in command_parser(parser, args)._actions for flag in action.option_strings]
    return next((did_you_mean(item.partition("=")[0], options) for item in extra if item.startswith("--")), "")


def clean_arguments(clean: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int]) -> None:
    """``stjobs clean``'s flags; ``run`` is the command (in :mod:`stjobs.cli`: asks, then removes)."""
    clean.add_argument("--older-than", type=float, default=None, metavar="DAYS",
                       help="only jobs submitted more than DAYS ago (default: every finished job)")
    clean.add_argument("--outputs", action="store_true", help="also remove each job's output directory")
    clean.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    clean.add_argument("--yes", "-y", action="store_true", help="remove without asking")
    clean.set_defaults(run=run)


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The ``shell`` completion script of ``parser``'s whole tree, generated by shtab."""
    import shtab

    return shtab.complete(parser, shell=shell)


def bench_arguments(bench: argparse.ArgumentParser) -> None:
    """``stjobs bench``'s flags; its defaults depend on the machine (stjobs.bench.options)."""
    from stjobs.bench.options import CPU_DEFAULTS, GPU_DEFAULTS, MODEL_SIZES, PRECISIONS, BenchOptions

    default = BenchOptions()

    def machine_default(key: str) -> str:
        return f"default: {getattr(GPU_DEFAULTS, key)} on GPUs, {getattr(CPU_DEFAULTS, key)} on CPUs"

    bench.add_argument("--model", default=None, help="a local SentenceTransformer directory (default: the "
                       "mpnet-base architecture with random weights, of --model-size)")
    bench.add_argument("--model-size", choices=MODEL_SIZES, default=None,
                       help=f"the generated MPNet: base (mpnet-base's 12 x 768), small, tiny "
                            f"({machine_default('model_size')})")
    bench.add_argument("--per-device-batch-size", type=int, default=default.per_device_batch_size,
                       help=f"default {default.per_device_batch_size}, as the docs")
    bench.add_argument("--max-seq-length", type=int, default=None, help=machine_default("max_seq_length"))
    bench.add_argument("--steps", type=int, default=None,
                       help=f"optimisation steps per row ({machine_default('steps')})")
    bench.add_argument("--skip-steps", type=int, default=None,
                       help=f"warm-up steps left out of samples/s ({machine_default('skip_steps')}; at most a "
                            "quarter of --steps)")
    bench.add_argument("--data-rows", type=int, default=None,
                       help="generated training rows per dataset (default: enough that no row repeats)")
    bench.add_argument("--precision", choices=PRECISIONS, default=default.precision,
                       help="auto (default): fp16 on V100 as the docs, bf16 from Ampere on, fp32 on CPUs")
    bench.add_argument("--learning-rate", type=float, default=None, help="default: the training's")
    bench.add_argument("--processes", type=int, default=None, help="DDP processes (default: GPUs, else CPU cores)")
    bench.add_argument("--seed", type=int, default=default.seed)
    bench.add_argument("--out", default=str(default.out_dir), help="directory for bench.json, bench.png, runs")


def image_arguments(image: argparse.ArgumentParser) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """``stjobs image render|build``'s own flags; the two parsers, to which the CLI adds the spec's."""
    image_commands = image.add_subparsers(dest="image_command", required=True, metavar="ACTION")
    image_render = image_commands.add_parser("render", help="write the Dockerfiles, Apptainer .def and pins")
    image_render.add_argument("--output", "-o", default="images", help="directory (default: ./images)")
    image_render.add_argument("--dry-run", action="store_true", help="print the plan; write nothing")
    image_render.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    image_build = image_commands.add_parser("build", help="build the image with docker, podman or buildah")
    image_build.add_argument("--context", default=".", help="the project root holding images/ (default: .)")
    image_build.add_argument("--builder", choices=("docker", "podman", "buildah"), default=None,
                             help="default: the first found on PATH")
    image_build.add_argument("--builder-arg", dest="builder_args", action="append", default=[], metavar="ARG",
                             help="passed to the builder after 'build', e.g. --builder-arg=--build-arg=X=1")
    return image_render, image_build


def after_arguments(submit: argparse.ArgumentParser) -> None:
    """``stjobs submit``'s pipeline flags: each adds ``(kind, job)`` to ``after`` (:mod:`stjobs.after`)."""
    for flag, kind, said in (("--after", "ok", "start once JOB has completed (repeatable)"),
                             ("--after-ok", "ok", "the same as --after"),
                             ("--after-any", "any", "start once JOB has ended, however it ended")):
        submit.add_argument(flag, dest="after", action="append", default=[], metavar="JOB", help=said,
                            type=_dependency(kind))
    submit.add_argument("--if-dependency-fails", choices=("cancel", "keep"), default="cancel",
                        help="when a job it waits for ends the wrong way: cancel this one (default), or keep it "
                        "pending (SLURM: DependencyNeverSatisfied) until you cancel it")


def _dependency(kind: str) -> Callable[[str], tuple[str, str]]:
    return lambda job: (kind, job)


class UsageFailure(Exception):
    """A command's own flags do not fit together; printed as ``stjobs COMMAND: error: ...``, exit code 2."""


def check_submit_flags(args: argparse.Namespace) -> None:
    """What ``stjobs submit`` refuses in its flags, as one line."""
    for flag, why in (("--sbatch", "submits with plain sbatch"), ("--remote", "submits to a SLURM login node")):
        if getattr(args, flag[2:]) and args.backend != "slurm":
            raise UsageFailure(f"{flag}: got {flag} with --backend {args.backend}; expected --backend slurm "
                               f"({flag} {why})")


def check_status_flags(args: argparse.Namespace) -> None:
    """What ``stjobs status`` refuses in its flags, as one line."""
    if args.plot is not None and (not args.job_id or args.watch is not None):
        raise UsageFailure(f"--plot: got --plot without {'a JOB' if not args.job_id else 'leaving out --watch'}; "
                           "expected stjobs status JOB --plot [FILE.png] (or stjobs plot JOB)")
    if args.watch is not None and args.json:
        raise UsageFailure(f"--watch: got --watch with --json; expected one of them (--json prints each job once, "
                           f"for scripts: run it every {args.watch:g} s yourself)")


def check_render_flags(args: argparse.Namespace) -> None:
    """What ``stjobs render`` refuses in its flags, as one line."""
    if args.dry_run and args.output is not None:
        raise UsageFailure(f"--dry-run: got -o {args.output!r} as well; expected one of them: --dry-run prints the "
                           "plan and writes nothing, -o DIR writes the files")
    if args.dry_run and args.force:
        raise UsageFailure("--force: got --force with --dry-run; expected -o DIR (--force replaces an output "
                           "directory, and --dry-run writes none)")
    if args.output is None and not args.dry_run and not args.explain:
        raise UsageFailure("--output: got nothing; expected -o DIR to write the files, or --dry-run to only print "
                           "the plan")
