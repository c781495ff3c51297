"""The code a local or SLURM job runs, copied at submit into its job directory (``code/``).

A job that waits in a queue would otherwise run whatever the workdir holds when it starts: an edit made in the
meantime, or a branch switched, changes the run. So ``stjobs submit`` copies the workdir's code and the node script
starts there (a rendered file submitted by hand has no copy and starts in the workdir itself).

What is copied: in a git work tree, what git would keep, tracked files and untracked ones that are not ignored
(``git ls-files --cached --others --exclude-standard``), as they are on disk now, edits included; elsewhere every
file under the workdir but version-control, virtualenv and cache directories. The job's output directory is
never copied. Above ``snapshot.max_mb`` the submit is refused (data or checkpoints in the tree, most likely);
``snapshot.enabled: false`` runs the live workdir instead.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from stjobs.errors import SpecError
from stjobs.jobs import stjobs_home
from stjobs.spec import JobSpec
from stjobs.train.args import data_paths

CODE_DIR = "code"
# Never code, and often huge: skipped when the workdir is not a git work tree.
SKIPPED_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache",
                          "node_modules", ".tox", ".nox", ".ipynb_checkpoints"})


@dataclass(frozen=True)
class Snapshot:
    root: Path
    files: tuple[str, ...]  # relative to root
    size_bytes: int
    from_git: bool


def plan_snapshot(spec: JobSpec, workdir: Path) -> Snapshot | None:
    """What would be copied for ``spec`` from ``workdir`` (its resolved directory), or None when disabled;
    refuses a snapshot over the limit, naming the biggest files."""
    if not spec.snapshot.enabled:
        return None
    root = workdir.resolve()
    skip = [Path(root, spec.output_dir).resolve(), stjobs_home()]
    listed = _git_files(root)
    files = listed if listed is not None else _walk(root)
    kept, sizes = [], {}
    for name in files:
        path = root / name
        if any(_under(path, other) for other in skip) or not (path.is_file() or path.is_symlink()):
            continue  # the job's own outputs, stjobs' records, a tracked file deleted in the work tree
        kept.append(name)
        sizes[name] = path.lstat().st_size
    total = sum(sizes.values())
    limit = spec.snapshot.max_mb * 1024 * 1024
    if total > limit:
        biggest = ", ".join(f"{name} ({size / 2**20:.1f} MB)" for name, size in
                            sorted(sizes.items(), key=lambda item: -item[1])[:3])
        raise SpecError("snapshot.max_mb", spec.snapshot.max_mb,
                        f"at least the {total / 2**20:.1f} MB of code under {root} that the job would be copied "
                        f"(biggest: {biggest}); ignore data in .gitignore, raise snapshot.max_mb, or set "
                        "snapshot.enabled: false to run the live workdir")
    snapshot = Snapshot(root=root, files=tuple(kept), size_bytes=total, from_git=listed is not None)
    _refuse_missing_data(spec, snapshot)
    return snapshot


def _refuse_missing_data(spec: JobSpec, snapshot: Snapshot) -> None:
    """A relative data file the workdir has but the copy lacks (git ignores it) would fail only in the job."""
    if spec.entrypoint.module != "stjobs.train":
        return
    kept = set(snapshot.files)
    for option, source in data_paths(spec.entrypoint.args):  # [NAME=]PATH[:LOSS]: only the path is a file
        value = source.path
        if not os.path.isabs(value) and (snapshot.root / value).is_file() and os.path.normpath(value) not in kept:
            raise SpecError("entrypoint.args", f"{option} {source.text}", "a data file the job can read: the "
                            "job runs from a copy of the workdir's code, which leaves out files git ignores; "
                            "give an absolute path, or set snapshot.enabled: false")


def copy_snapshot(snapshot: Snapshot, job_dir: Path) -> Path:
    """Copy the planned files into ``job_dir/code`` (modes kept, symlinks as symlinks); its path."""
    dest = job_dir / CODE_DIR
    dest.mkdir(mode=0o700)
    for name in snapshot.files:
        target = dest / name
        for parent in reversed(target.relative_to(dest).parents[:-1]):
            (dest / parent).mkdir(mode=0o700, exist_ok=True)  # never the umask's choice (test_permissions)
        shutil.copy2(snapshot.root / name, target, follow_symlinks=False)
        if not target.is_symlink():
            # The owner's copy: no group or world write, whatever the source allowed; executable bits kept.
            target.chmod(stat.S_IMODE(target.stat().st_mode) & 0o755)
    return dest


def snapshot_details(snapshot: Snapshot | None) -> dict[str, object] | None:
    """What the job record keeps about the copy."""
    if snapshot is None:
        return None
    return {"files": len(snapshot.files), "size_bytes": snapshot.size_bytes, "from_git": snapshot.from_git,
            "source": str(snapshot.root)}


def _git_files(root: Path) -> list[str] | None:
    git = shutil.which("git")
    if git is None:
        return None
    try:
        inside = subprocess.run([git, "-C", str(root), "rev-parse", "--is-inside-work-tree"], capture_output=True,
                                text=True, timeout=60)
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            return None
        # Paths relative to root, only those under it; -z: names may hold newlines or quotes.
        done = subprocess.run([git, "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard",
                               "--", "."], capture_output=True, timeout=120, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return sorted({name for name in os.fsdecode(done.stdout).split("\0") if name})


def _walk(root: Path) -> list[str]:
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not (Path(folder, d) / "pyvenv.cfg").exists()]
        found += [os.path.relpath(os.path.join(folder, f), root) for f in files]
    return sorted(found)


def _under(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True
