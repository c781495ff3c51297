"""The ``stjobs`` command: each command is a few lines over the public API in :mod:`stjobs.api`."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from stjobs import api
from stjobs.backends import BACKENDS
from stjobs.config import Override, load_spec
from stjobs.errors import StjobsError
from stjobs.spec import JobSpec

F = TypeVar("F", bound=Callable[..., Any])

# Flags that are plain overrides of one spec field: (option, spec field, type).
SPEC_FLAGS: tuple[tuple[str, str, Any], ...] = (
    ("--name", "name", str),
    ("--nodes", "nodes", int),
    ("--procs-per-node", "procs_per_node", int),
    ("--gpus-per-node", "gpus_per_node", int),
    ("--cpus-per-task", "cpus_per_task", int),
    ("--mem-gb", "mem_gb", float),
    ("--time-min", "time_min", int),
    ("--strategy", "strategy", str),
    ("--launcher", "launcher", str),
    ("--image", "image", str),
)
DEFAULT_SPEC = "stjobs.yaml"


def spec_options(command: F) -> F:
    command = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                           help="Override any spec field, e.g. --set slurm.partition=gpu (repeatable).")(command)
    for flag, field, kind in reversed(SPEC_FLAGS):
        command = click.option(flag, field, type=kind, default=None, help=f"Override spec field {field}.")(command)
    command = click.option("--backend", "-b", type=click.Choice(sorted(BACKENDS)), default="local",
                           show_default=True, help="Where the job runs.")(command)
    return click.argument("spec_path", required=False, metavar="[SPEC]")(command)


def spec_from(spec_path: str | None, sets: tuple[str, ...], flags: dict[str, Any]) -> JobSpec:
    if spec_path is None and Path(DEFAULT_SPEC).is_file():
        spec_path = DEFAULT_SPEC
    overrides: list[Override] = [(field, flags[field]) for _, field, _ in SPEC_FLAGS if flags.get(field) is not None]
    return load_spec(spec_path, overrides, sets)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="stjobs")
def cli() -> None:
    """Render and submit distributed sentence-transformers training jobs."""


@cli.command()
@spec_options
@click.option("--output", "-o", type=click.Path(file_okay=False), help="Directory to write the files into.")
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@click.option("--force", is_flag=True, help="Replace a non-empty output directory.")
def render(spec_path: str | None, backend: str, sets: tuple[str, ...], output: str | None, dry_run: bool,
           force: bool, **flags: Any) -> None:
    """Render SPEC for a backend and print the plan (files and command)."""
    spec = spec_from(spec_path, sets, flags)
    if dry_run or output is None:
        if output is None and not dry_run:
            raise click.UsageError("render needs -o DIR to write the files, or --dry-run to only print the plan")
        click.echo(api.render(spec, backend).describe(), nl=False)
        return
    plan = api.render_to(spec, output, backend, force=force)
    click.echo(plan.describe(output), nl=False)


@cli.command()
@spec_options
@click.option("--wait", "wait_", is_flag=True, help="Wait for the job to finish; exit with its exit code.")
@click.option("--follow", "-f", is_flag=True, help="Stream the job's output until it finishes (implies --wait).")
def submit(spec_path: str | None, backend: str, sets: tuple[str, ...], wait_: bool, follow: bool,
           **flags: Any) -> None:
    """Submit SPEC to a backend; prints the job id."""
    spec = spec_from(spec_path, sets, flags)
    record = api.submit(spec, backend)
    click.echo(f"submitted {record.job_id} ({backend}, {record.nodes} node(s) x {record.procs_per_node} "
               f"process(es)); files in {record.job_dir}")
    if follow:
        for chunk in api.logs(record.job_id, follow=True):
            click.echo(chunk, nl=False)
    if wait_ or follow:
        final = api.wait(record.job_id)
        click.echo(f"{record.job_id}: {final.state.value}" + (f" ({final.reason})" if final.reason else ""))
        sys.exit(0 if final.state.value == "COMPLETED" else (final.exit_code or 1))


@cli.command()
@click.argument("job_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job.")
def status(job_id: str | None, as_json: bool) -> None:
    """Show the state of one job, or a table of all jobs."""
    rows = api.status(job_id)
    if as_json:
        for row in rows:
            click.echo(json.dumps({"job_id": row.record.job_id, "backend": row.record.backend,
                                   "state": row.state.value, "exit_code": row.exit_code, "reason": row.reason}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("job", "backend", "nodes x procs", "state", "exit", "reason", box=None)
    for row in rows:
        record = row.record
        table.add_row(record.job_id, record.backend, f"{record.nodes}x{record.procs_per_node}", row.state.value,
                      "" if row.exit_code is None else str(row.exit_code), row.reason)
    Console(width=200).print(table)


@cli.command()
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job finishes.")
@click.option("--rank", type=int, default=None, help="Only this global rank's lines.")
def logs(job_id: str, follow: bool, rank: int | None) -> None:
    """Print a job's output."""
    for chunk in api.logs(job_id, follow=follow, rank=rank):
        click.echo(chunk, nl=False)


@cli.command()
@click.argument("job_id")
def cancel(job_id: str) -> None:
    """Cancel a job and wait until it has stopped."""
    final = api.cancel(job_id)
    click.echo(f"{final.record.job_id}: {final.state.value}")


@cli.command()
def schema() -> None:
    """Print the job spec's JSON Schema (for editor completion)."""
    click.echo(json.dumps(JobSpec.model_json_schema(), indent=2, sort_keys=True))


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="stjobs", standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except StjobsError as error:
        click.echo(f"stjobs: error: {error}", err=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
