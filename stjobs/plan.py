"""The printable plan a renderer returns: the files it would write and the command that runs them."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from stjobs.errors import RenderError
from stjobs.launch import LaunchPlan, shell_line
from stjobs.spec import JobSpec


@dataclass(frozen=True)
class RenderedFile:
    path: str  # relative to the output directory, '/'-separated
    content: str
    executable: bool = False


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

    def file(self, path: str) -> RenderedFile:
        for item in self.files:
            if item.path == path:
                return item
        raise KeyError(path)

    def describe(self, out_dir: str | None = None) -> str:
        where = f" -> {out_dir}" if out_dir else ""
        lines = [f"backend: {self.backend}", f"job: {self.job_name}{where}", "files:"]
        for item in self.files:
            mode = " (executable)" if item.executable else ""
            lines.append(f"  {item.path}  {len(item.content.encode())} bytes{mode}")
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


def write_plan(plan: Plan, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write every file or none: they go to a temporary sibling directory that is renamed into place."""
    target = Path(out_dir)
    if target.exists() and not target.is_dir():
        raise RenderError(f"output: {target} exists and is not a directory")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise RenderError(f"output: {target} is not empty; pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for item in plan.files:
            path = staging / item.path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(item.content, encoding="utf-8")
            os.chmod(path, 0o755 if item.executable else 0o644)
        os.chmod(staging, 0o755)
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
    return target
