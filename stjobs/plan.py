"""The printable plan a renderer returns: the files it would write and the command that runs them."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from stjobs.errors import OutputError
from stjobs.launch import LaunchPlan, shell_line
from stjobs.spec import JobSpec


@dataclass(frozen=True)
class RenderedFile:
    path: str  # relative to the output directory, '/'-separated
    content: str
    executable: bool = False
    site_template: str | None = None  # the site's template file it was rendered from (None: stjobs' own)


@dataclass(frozen=True)
class Plan:
    backend: str
    job_name: str
    files: tuple[RenderedFile, ...]
    # How a person runs what was rendered, relative to the output directory.
    command: tuple[str, ...]
    launch: LaunchPlan | None  # None for a plan that launches nothing (the image build files)
    spec: JobSpec
    notes: tuple[str, ...] = ()
    # A sweep's: each point's own plan (its spec, launch and files, which also appear under points/<index>/).
    points: tuple[Plan, ...] = ()

    def file(self, path: str) -> RenderedFile:
        for item in self.files:
            if item.path == path:
                return item
        raise KeyError(path)

    def describe(self, out_dir: str | None = None) -> str:
        where = f" -> {out_dir}" if out_dir else ""
        lines = [f"backend: {self.backend}", f"job: {self.job_name}{where}", "files:"]
        shown = [item for item in self.files if not (self.points and item.path.startswith("points/"))]
        if self.points:
            each = ", ".join(item.path for item in self.points[0].files)
            lines.append(f"  points/0 .. points/{len(self.points) - 1}/  {len(self.points)} point(s), each: {each}")
        for item in shown:
            mode = " (executable)" if item.executable else ""
            site = f" from site template {item.site_template}" if item.site_template else ""
            lines.append(f"  {item.path}  {len(item.content.encode())} bytes{mode}{site}")
        if self.launch is None and self.points:
            lines.append("launch (point 0, on each node; `stjobs render -o DIR` writes every point's):")
            lines.append(f"  {shell_line(self.points[0].launch.argv)}" if self.points[0].launch else "  -")
        if self.launch is not None:
            lines.append("launch (on each node):")
            lines.append(f"  {shell_line(self.launch.argv)}")
            if self.launch.required_vars:
                lines.append(f"  run-time values: {', '.join(self.launch.required_vars)}")
            if self.launch.secrets:
                lines.append(f"  secrets taken from the environment: {', '.join(self.launch.secrets)}")
        lines.append("command:")
        lines.append(f"  {' '.join(self.command)}")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines) + "\n"


@contextmanager
def no_world_write() -> Iterator[None]:
    """Nothing made inside (by stjobs or by a process started here, such as a job's supervisor, which inherits
    it) gets the world-write bit, whatever the caller's umask: a world-writable launch script or job directory
    lets any local user run code as the job's owner. Only o+w is added to the mask, so a group-shared setup
    (umask 002) keeps its group write. The umask is per process: callers are the single-threaded CLI or API."""
    old = os.umask(0o022)  # reading the umask means setting it: never to something looser in between
    os.umask(old | 0o002)
    try:
        yield
    finally:
        os.umask(old)


def write_plan(plan: Plan, out_dir: str | Path, overwrite: bool = False, dir_mode: int = 0o755) -> Path:
    """Write every file or none: they go to a temporary sibling directory that is renamed into place.

    Files get 0o644 (0o755 when executable) and directories ``dir_mode``, never the umask's choice."""
    target = Path(out_dir)
    if target.exists() and not target.is_dir():
        raise OutputError("output", str(target), "a directory (it exists and is not one)")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise OutputError("output", str(target), "a new or empty directory (it is not empty; pass --force to "
                          "replace it)")
    with no_world_write():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        except OSError as error:
            raise OutputError("output", str(target), f"a directory stjobs can create ({error.strerror}: "
                              f"{error.filename})") from None
        _fill(staging, plan, target, dir_mode)
    return target


def _fill(staging: Path, plan: Plan, target: Path, dir_mode: int) -> None:
    made: set[Path] = set()
    try:
        for item in plan.files:
            path = staging / item.path
            for parent in reversed(path.relative_to(staging).parents[:-1]):  # e.g. images/, outermost first
                if parent not in made:
                    (staging / parent).mkdir(exist_ok=True)
                    os.chmod(staging / parent, 0o755)
                    made.add(parent)
            path.write_text(item.content, encoding="utf-8", newline="\n")
            os.chmod(path, 0o755 if item.executable else 0o644)
        os.chmod(staging, dir_mode)
        if target.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.rename(target, backup / "old")
            os.rename(staging, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
