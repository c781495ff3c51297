"""The ``stjobs`` command: each command is a few lines over the public API in :mod:`stjobs.api`.

argparse rather than click: ``stjobs render`` is measured whole-process against TorchX's dry run, and the
stdlib parser costs a fraction of click's import. Parsed arguments become a spec at once; no namespace travels.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from stjobs import __version__, api, cliparse
from stjobs.backends import BACKENDS
from stjobs.cliparse import SHELLS, Parser, UsageFailure, bench_arguments, clean_arguments
from stjobs.config import DEFAULT_SPEC, SPEC_FLAGS, Override, explain_spec, load_spec, spec_file
from stjobs.errors import EnvError, StjobsError
from stjobs.jobs import Cleaned, clean_summary, remove_cleaned
from stjobs.plan import write_plan
from stjobs.spec import JobSpec

K8S_SCHEMAS_ENV = "STJOBS_K8S_SCHEMAS"


def k8s_schemas(args: argparse.Namespace) -> str | None:
    """Where the Kubeflow CRDs are: --k8s-schemas, else $STJOBS_K8S_SCHEMAS; only the k8s backend reads them.

    A directory that is not there is refused: the strict check was asked for, and skipping it with a note in
    the plan would pass a manifest nobody checked. (A directory without the one CRD a kind needs still only
    notes the skip: holding just the Trainer's CRDs is a real setup.)"""
    if args.backend != "k8s":
        if args.k8s_schemas:
            raise UsageFailure(f"--k8s-schemas: got {args.k8s_schemas!r} with --backend {args.backend}; expected "
                               "--backend k8s (only Kubernetes manifests are checked against CRDs)")
        return None
    if args.k8s_schemas:
        if not Path(args.k8s_schemas).is_dir():
            raise UsageFailure(f"--k8s-schemas: got {args.k8s_schemas!r}; expected a directory holding the "
                               "Kubeflow CRD files (it is not a directory)")
        return str(args.k8s_schemas)
    from_env = os.environ.get(K8S_SCHEMAS_ENV) or None
    if from_env is not None and not Path(from_env).is_dir():
        raise EnvError(K8S_SCHEMAS_ENV, from_env, "a directory holding the Kubeflow CRD files (it is not a "
                       "directory; unset it to skip the schema check)")
    return from_env


def spec_inputs(args: argparse.Namespace) -> tuple[str | None, list[Override], list[str]]:
    """The spec file, the flags' overrides and the --set items a command's spec is made of."""
    overrides: list[Override] = [(field, getattr(args, field)) for _, field, _ in SPEC_FLAGS
                                 if getattr(args, field) is not None]
    overrides += [("slurm.remote", args.remote)] if getattr(args, "remote", None) else []  # submit's --remote
    command = " ".join(filter(None, (args.command, getattr(args, "image_command", None))))
    return spec_file(args.spec, overrides, args.sets, command), overrides, args.sets


def spec_from(args: argparse.Namespace) -> JobSpec:
    return load_spec(*spec_inputs(args))


def explained(args: argparse.Namespace) -> str:
    """``render --explain``: each value that is not a packaged default, and where it came from."""
    rows = explain_spec(*spec_inputs(args))
    return "".join(["values (where each came from; packaged defaults not listed):\n",
                    *(f"  {row.line()}\n" for row in rows)])


def cmd_render(args: argparse.Namespace) -> int:
    from stjobs.cliparse import check_render_flags

    check_render_flags(args)
    spec = spec_from(args)
    if args.dry_run:
        print(api.render_job(spec, args.backend, k8s_schemas(args)).describe(), end="")
    elif args.output is not None:
        plan = api.render_to(spec, args.output, args.backend, force=args.force, k8s_schemas=k8s_schemas(args))
        print(plan.describe(args.output), end="")
    if args.explain:
        print(explained(args), end="")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    options = {"sbatch": True} if args.sbatch else {}
    from stjobs.cliparse import check_submit_flags

    check_submit_flags(args)
    record = api.submit(spec_from(args), args.backend, k8s_schemas(args), after=args.after,
                        if_dependency_fails=args.if_dependency_fails, **options)
    from stjobs.sweep_jobs import results_table, submitted_line

    print(f"submitted {record.job_id} ({args.backend}, {record.nodes} node(s) x {record.procs_per_node} "
          f"process(es)); files in {record.job_dir}", flush=True)
    sweep = submitted_line(record)  # a sweep: its points, and which ran before; followed as its states
    if sweep:
        print(sweep, flush=True)
    if args.follow and not sweep:
        from stjobs import console

        console.show(record.job_id, api.logs(record.job_id, follow=True),
                     "progress" if api.shows_progress(record.job_id) else "raw")
    if not (args.wait or args.follow):
        return 0
    final = api.wait(record.job_id)
    print(f"{record.job_id}: {final.state.value}" + (f" ({final.reason})" if final.reason else ""))
    print(results_table(api.sweep_results(record.job_id)) if sweep else "", end="")
    _warn_strategy(record.job_id)
    return 0 if final.state.value == "COMPLETED" else (final.exit_code or 1)


def _warn_strategy(job_id: str) -> None:
    warning = api.strategy_warning(job_id)
    if warning:
        print(f"stjobs: warning: {warning}", file=sys.stderr, flush=True)


def cmd_status(args: argparse.Namespace) -> int:
    from stjobs import statustable
    from stjobs.cliparse import check_status_flags

    check_status_flags(args)
    query = functools.partial(api.status_rows, args.job_id, args.state, args.backend, args.name)
    if args.watch is not None:
        return statustable.watch(query, args.watch)
    rows = query()
    if args.json:
        for row in rows:
            print(json.dumps(statustable.as_json(row)))
        return 0
    print(statustable.table(rows, width=statustable.terminal_width(sys.stdout)), end="")
    if args.job_id and len(rows) > 1:  # a sweep and its points: their results, best first
        from stjobs.sweep_jobs import results_table

        print("\n" + results_table(api.sweep_results(args.job_id)), end="")
    elif args.job_id:
        _warn_strategy(args.job_id)
    if args.plot is not None:
        print(f"wrote {api.plot(args.job_id, args.plot or None)}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from stjobs import console

    if args.events and not args.follow:  # the events files where this machine has them, else the output's
        print(console.event_lines(api.events(args.job_id, args.rank)), end="")
        return 0
    chunks = api.logs(args.job_id, follow=args.follow, rank=args.rank)
    # One rank's lines, or --raw: as written; else, for the built-in training, the person's view.
    view = "events" if args.events else "raw" if args.raw or args.rank is not None else None
    console.show(args.job_id, chunks, view or ("progress" if api.shows_progress(args.job_id) else "raw"))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    print(f"wrote {api.plot(args.job_id, args.output)}")
    return 0


def _plot_parser(plot: argparse.ArgumentParser) -> None:
    from stjobs.cliparse import plot_arguments

    plot_arguments(plot)
    plot.set_defaults(run=cmd_plot)


def cmd_cancel(args: argparse.Namespace) -> int:
    final = api.cancel(args.job_id)
    print(f"{final.record.job_id}: {final.state.value}")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    """Asks first unless --yes, as ``docker system prune``; --dry-run only lists. Exit 1 when a record stays."""
    ask = not (args.yes or args.dry_run)
    if ask and not sys.stdin.isatty():
        raise UsageFailure("--yes: got neither --yes nor --dry-run and stdin is not a terminal to ask on; expected "
                           "--yes to remove without asking, or --dry-run to only list what would go")
    items = _say(api.clean(args.older_than, args.outputs, dry_run=args.dry_run or ask), args.dry_run or ask)
    if ask and any(not item.kept for item in items):
        if input(clean_summary(items, True).replace("would ", "") + "? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing removed")
            return 1
        done = remove_cleaned(items)
        _say([new for old, new in zip(items, done, strict=True) if new.kept != old.kept], False)  # failures
        items = done
    print(clean_summary(items, args.dry_run))
    return 1 if any(item.kept for item in items) else 0


def _say(items: list[Cleaned], dry_run: bool) -> list[Cleaned]:
    for item in items:  # a record that stays is said on stderr
        print(f"stjobs clean: {item.line(dry_run)}" if item.kept else item.line(dry_run),
              file=sys.stderr if item.kept else sys.stdout)
    return items


def cmd_image_render(args: argparse.Namespace) -> int:
    plan = api.render_image(spec_from(args))
    if args.dry_run:
        print(plan.describe(), end="")
        return 0
    write_plan(plan, args.output, overwrite=args.force)
    print(plan.describe(args.output), end="")
    return 0


def cmd_image_build(args: argparse.Namespace) -> int:
    argv = api.build_image(spec_from(args), context=args.context, builder=args.builder,
                       extra_args=tuple(args.builder_args))
    print(f"built with: {' '.join(argv)}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(JobSpec.json_schema(), indent=2, sort_keys=True))
    return 0


def _spec_arguments(parser: argparse.ArgumentParser, backend: bool = True) -> None:
    parser.add_argument("spec", nargs="?", metavar="SPEC", help=f"job spec YAML (default: ./{DEFAULT_SPEC})")
    if backend:
        parser.add_argument("--backend", "-b", choices=sorted(BACKENDS), default="local", help="where the job runs")
        parser.add_argument("--k8s-schemas", metavar="DIR", default=None,
                            help=f"Kubeflow CRD files to check k8s manifests against (default: ${K8S_SCHEMAS_ENV})")
    for flag, field, kind in SPEC_FLAGS:
        parser.add_argument(flag, dest=field, type=kind, default=None, help=f"override spec field {field}")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override any spec field, e.g. --set slurm.partition=gpu (repeatable)")


def _render_parser(render: argparse.ArgumentParser) -> None:
    _spec_arguments(render)
    render.add_argument("--output", "-o", help="directory to write the files into")
    render.add_argument("--dry-run", action="store_true", help="print the plan; write nothing")
    render.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    render.add_argument("--explain", action="store_true", help="list each value set above the packaged "
                        "defaults and where it came from (site or user defaults, spec, flag, --set); alone it "
                        "renders nothing")
    render.set_defaults(run=cmd_render)


def _submit_parser(submit: argparse.ArgumentParser) -> None:
    _spec_arguments(submit)
    submit.add_argument("--wait", action="store_true", help="wait for the job; exit with its exit code")
    submit.add_argument("--follow", "-f", action="store_true", help="stream the output until the job ends")
    submit.add_argument("--sbatch", action="store_true",
                        help="slurm: submit the rendered batch file with plain sbatch instead of submitit")
    submit.add_argument("--remote", metavar="[USER@]HOST", default=None, help="slurm: submit over ssh to this "
                        "login node with plain sbatch there (spec field slurm.remote)")
    from stjobs.cliparse import after_arguments

    after_arguments(submit)
    submit.set_defaults(run=cmd_submit)


def _status_parser(status: argparse.ArgumentParser) -> None:
    from stjobs.cliparse import status_arguments

    status_arguments(status, BACKENDS)
    status.set_defaults(run=cmd_status)


def _logs_parser(logs: argparse.ArgumentParser) -> None:
    from stjobs.cliparse import logs_arguments

    logs_arguments(logs)
    logs.set_defaults(run=cmd_logs)


def _cancel_parser(cancel: argparse.ArgumentParser) -> None:
    cancel.add_argument("job_id", metavar="JOB")
    cancel.set_defaults(run=cmd_cancel)


def _image_parser(image: argparse.ArgumentParser) -> None:
    from stjobs.cliparse import image_arguments

    render, build = image_arguments(image)
    for parser, run in ((render, cmd_image_render), (build, cmd_image_build)):
        _spec_arguments(parser, backend=False)
        parser.set_defaults(run=run)


def cmd_bench(args: argparse.Namespace) -> int:
    from stjobs.bench import BenchOptions, run_bench

    options = BenchOptions(model=args.model, model_size=args.model_size,
                           per_device_batch_size=args.per_device_batch_size, max_seq_length=args.max_seq_length,
                           steps=args.steps, skip_steps=args.skip_steps, data_rows=args.data_rows,
                           precision=args.precision, learning_rate=args.learning_rate, out_dir=Path(args.out),
                           processes=args.processes, seed=args.seed)
    report = run_bench(options)
    print(report.table())
    print(f"\nwrote {options.out_dir / 'bench.json'} and {options.out_dir / 'bench.png'}")
    return 0


def _bench_parser(bench: argparse.ArgumentParser) -> None:
    bench_arguments(bench)
    bench.set_defaults(run=cmd_bench)


def _schema_parser(schema: argparse.ArgumentParser) -> None:
    schema.set_defaults(run=cmd_schema)


def cmd_completion(args: argparse.Namespace) -> int:
    print(cliparse.completion_script(build_parser(), args.shell), end="")
    return 0


def _completion_parser(completion: argparse.ArgumentParser) -> None:
    completion.add_argument("shell", choices=SHELLS, help="e.g. eval \"$(stjobs completion bash)\" in ~/.bashrc")
    completion.set_defaults(run=cmd_completion)


def _init_parser(init: argparse.ArgumentParser) -> None:
    from stjobs.init import add_arguments  # only `stjobs init` (and --help, completion) loads it

    add_arguments(init)


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "init": ("write a starting spec (and script) for this machine, SLURM site or cluster", _init_parser),
    "render": ("render SPEC for a backend and print the plan", _render_parser),
    "submit": ("submit SPEC to a backend; prints the job id", _submit_parser),
    "status": ("one job's state, or a table of all jobs", _status_parser),
    "logs": ("print a job's output", _logs_parser),
    "plot": ("a PNG of a job's loss, learning rate, samples/s and eval scores", _plot_parser),
    "cancel": ("cancel a job and wait until it stopped", _cancel_parser),
    "clean": ("remove finished jobs' records (and outputs)", lambda parser: clean_arguments(parser, cmd_clean)),
    "image": ("render or build the job's container image", _image_parser),
    "bench": ("compare no parallelism, DP, DDP, FSDP and stjobs' defaults on this machine", _bench_parser),
    "schema": ("print the job spec's JSON Schema", _schema_parser),
    "completion": ("print a bash or zsh completion script for stjobs", _completion_parser),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI, or with ``only`` just that command's parser: argparse spends about a millisecond on each
    subparser it builds (gettext lookups for its own messages); ``stjobs --help`` still lists them all."""
    parser = Parser(prog="stjobs", description="Render and submit distributed "
                                    "sentence-transformers training jobs.")
    parser.add_argument("--version", action="version", version=f"stjobs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (summary, build) in COMMANDS.items():
        if only is None or name == only:
            build(commands.add_parser(name, help=summary))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script passes it to sys.exit)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list[0] if args_list and args_list[0] in COMMANDS else None)
    try:
        args, extra = parser.parse_known_args(args_list)
    except SystemExit as done:  # --help, --version, or a one-line usage error already printed (Parser.error)
        return done.code if isinstance(done.code, int) else 2
    if extra:
        prog = f"stjobs {args.command}"
        hint = cliparse.unknown_flag_hint(parser, args, extra)
        print(f"{prog}: error: arguments: got {' '.join(extra)!r}; expected only the options of {prog} "
              f"({hint + ' ' if hint else ''}see {prog} --help)", file=sys.stderr)
        return 2
    try:
        code: int = args.run(args)
    except UsageFailure as error:
        print(f"stjobs {args.command}: error: {error}", file=sys.stderr)
        return 2
    except StjobsError as error:
        print(f"stjobs: error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:
        # The machine refused (disk full, permission denied) somewhere stjobs has no better message for: the
        # cause and the path, not a traceback.
        where = f": {error.filename}" if error.filename else ""
        print(f"stjobs: error: {error.strerror or error}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
