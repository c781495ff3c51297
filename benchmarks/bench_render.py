"""Whole-process cost of ``stjobs render`` (2 nodes x 8 GPUs), side by side with its yardsticks, in one run.

Every command runs once per round, rounds interleaved, so machine noise hits all of them alike; we report the
median and the minimum over rounds, and the ratio the target is set on:
  * TorchX's ``torchx run --dryrun -s slurm dist.ddp -j 2x8`` / stjobs render   (target >= 1.5)
and, as a report without a target, what the libraries a render needs cost to import alone:
``python -c "import jinja2"``, ``"import yaml"`` and, for scale, ``"import submitit"``.

    python benchmarks/bench_render.py [--rounds 15] [--with-torchx]

``--with-torchx`` installs TorchX (no torch needed) into benchmarks/.venv-torchx on first use.

TorchX's "dry run" is not pure: it runs ``sinfo`` to read partition memory. We run it with only its own venv on
PATH, as on a laptop without SLURM (no sinfo: it skips the call). With an unreachable controller configured the
same dry run takes 10-60 s here; with a live one it adds a controller round trip. stjobs render runs no command.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPEC = """\
name: bench
nodes: 2
gpus_per_node: 8
entrypoint:
  script: train.py
"""


def torchx_binary(install: bool) -> str | None:
    found = shutil.which("torchx")
    if found:
        return found
    venv = REPO / "benchmarks" / ".venv-torchx"
    binary = venv / "bin" / "torchx"
    if not binary.exists() and install:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "-c",
                        str(REPO / "constraints.txt"), "torchx"], check=True)
    return str(binary) if binary.exists() else None


def has_module(name: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True).returncode == 0


def stjobs_command() -> list[str]:
    """The console script users run (as TorchX's is); `python -m stjobs` where stjobs is not installed as one."""
    script = Path(sys.executable).with_name("stjobs")
    return [str(script)] if script.exists() else [sys.executable, "-m", "stjobs"]


def commands(work: Path, torchx: str | None) -> dict[str, list[str]]:
    stjobs = stjobs_command()
    out: dict[str, list[str]] = {"python -c pass": [sys.executable, "-c", "pass"],
                                 "import jinja2": [sys.executable, "-c", "import jinja2"],
                                 "import yaml": [sys.executable, "-c", "import yaml"]}
    if has_module("submitit"):
        out["import submitit"] = [sys.executable, "-c", "import submitit"]
    for backend in ("local", "slurm"):  # k8s has its own benchmark: bench_k8s_render.py
        out[f"stjobs render -b {backend}"] = [*stjobs, "render", str(work / "spec.yaml"), "-b", backend,
                                             "-o", str(work / f"out-{backend}"), "--force"]
    if torchx:
        out["torchx dryrun"] = [torchx, "run", "--dryrun", "-s", "slurm", "dist.ddp", "-j", "2x8", "--script",
                                "train.py"]
    return out


def environment_for(argv: list[str]) -> dict[str, str] | None:
    if Path(argv[0]).name != "torchx":
        return None
    env = dict(os.environ)
    env["PATH"] = str(Path(argv[0]).parent)  # no sinfo: see the module docstring
    return env


def measure(cases: dict[str, list[str]], rounds: int, cwd: Path) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in cases}
    envs = {name: environment_for(argv) for name, argv in cases.items()}
    for name, argv in cases.items():  # one warm-up each: .pyc files, page cache
        subprocess.run(argv, cwd=cwd, check=True, capture_output=True, env=envs[name])
    for _ in range(rounds):
        for name, argv in cases.items():
            start = time.perf_counter()
            subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=envs[name])
            times[name].append(time.perf_counter() - start)
    return times


def bench_options(doc: str) -> tuple[argparse.Namespace, str | None]:
    """The options both render benchmarks take, and TorchX's binary (installed with --with-torchx)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--with-torchx", action="store_true", help="install TorchX for the comparison")
    options = parser.parse_args()
    # A user's Python caches bytecode; a shell that disables it (PYTHONDONTWRITEBYTECODE) would make every run
    # recompile stjobs and TorchX from source and measure the compiler instead.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    return options, torchx_binary(options.with_torchx)


@contextlib.contextmanager
def workspace(spec: str) -> Iterator[Path]:
    """A scratch project: the spec and the script it names."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "spec.yaml").write_text(spec)
        (work / "train.py").write_text("print('hello')\n")
        yield work


def main() -> int:
    options, torchx = bench_options(__doc__ or "")
    with workspace(SPEC) as work:
        times = measure(commands(work, torchx), options.rounds, work)

    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{'command':32} {'median ms':>10} {'min ms':>8}")
    for name, values in times.items():
        print(f"{name:32} {median[name] * 1000:10.1f} {min(values) * 1000:8.1f}")
    print()
    renders = [name for name in median if name.startswith("stjobs render")]
    for name in renders:
        if "torchx dryrun" in median:
            ratio = median["torchx dryrun"] / median[name]
            print(f"torchx dryrun / {name}: {ratio:.2f}x  (target >= 1.5)  {'OK' if ratio >= 1.5 else 'MISSED'}")
        if "import submitit" in median:
            print(f"{name} / import submitit: {median[name] / median['import submitit']:.2f}x  (report)")
    if "torchx dryrun" not in median:
        print("TorchX not installed: run with --with-torchx for that comparison")
    return 0


if __name__ == "__main__":
    sys.exit(main())
