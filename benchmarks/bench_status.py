"""`stjobs status` of 200 SLURM jobs on the test cluster: scheduler calls and time, beside one bare sacct.

The benchmark submits N tiny jobs (``sbatch --wrap true``; ``--held`` of them with ``--hold``, so the listing has
jobs that wait and must ask squeue for their reason), waits until the others have finished, and writes one stjobs
job record for each into a scratch STJOBS_HOME. Then, in one run:
  * calls: ``sacct`` and ``squeue`` shims first on PATH log each call and hand it to the real command, for the
    listing in process (``stjobs.status()``) and through the command (``stjobs status --json``); target <= 2;
  * time, rounds interleaved so machine noise hits all alike: one bare ``sacct -j <all ids>`` (the fields stjobs
    asks for), the listing in process, and ``stjobs status --json`` as a user runs it (Python's start and
    imports included, a report). Target: the listing in process within 1.5x of the bare sacct.
Needs the cluster: ``sudo slurm/cluster/up.sh`` first.

    python benchmarks/bench_status.py [--jobs 200] [--held 50] [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STJOBS = Path(sys.executable).with_name("stjobs")
PARTITION = "gpu"
SHIM = '#!/bin/sh\necho "$(basename "$0") $*" >> "$STJOBS_BENCH_CALLS"\nexec {real} "$@"\n'


def submit_jobs(count: int, held: int, work: Path) -> list[str]:
    ids = []
    for index in range(count):
        hold = ["--hold"] if index >= count - held else []
        done = subprocess.run(["sbatch", "--parsable", f"--partition={PARTITION}", "--time=1", "--job-name=bench",
                               f"--output={work / 'out' / '%j.out'}", *hold, "--wrap", "true"],
                              capture_output=True, text=True, check=True)
        ids.append(done.stdout.strip().split(";")[0])
    return ids


def bare_sacct(ids: list[str]) -> list[str]:
    return ["sacct", "-j", ",".join(ids), "-X", "--duplicates", "-n", "-P", "-o", "JobIDRaw,State,ExitCode"]


def wait_finished(ids: list[str], timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        text = subprocess.run(bare_sacct(ids), capture_output=True, text=True, check=True).stdout
        states = {line.split("|")[0]: line.split("|")[1] for line in text.splitlines() if line}
        if all(states.get(job, "").startswith("COMPLETED") for job in ids):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs not finished after {timeout_s} s: {states}")
        time.sleep(2)


def write_records(ids: list[str], home: Path, work: Path) -> None:
    from stjobs.jobs import JobRecord

    for number, slurm_id in enumerate(ids):
        job_dir = home / "jobs" / f"bench-{number:04d}"
        job_dir.mkdir(parents=True)
        JobRecord(job_id=job_dir.name, backend="slurm", name="bench", job_dir=str(job_dir),
                  submitted_at=time.time(), nodes=1, procs_per_node=1,
                  details={"slurm_job_id": slurm_id, "mode": "sbatch", "max_requeues": 0,
                           "output": str(work / "out" / f"{slurm_id}.out")}).save()


def count_calls(work: Path) -> dict[str, list[str]]:
    """The scheduler commands each way of listing runs, through logging shims in front of the real ones."""
    import stjobs

    shims = work / "shims"
    shims.mkdir()
    for name in ("sacct", "squeue"):
        real = shutil.which(name)
        assert real, f"{name} not on PATH: run this on the test cluster"
        (shims / name).write_text(SHIM.format(real=real))
        (shims / name).chmod(0o755)
    log = work / "calls.log"
    saved = dict(os.environ)
    os.environ.update(PATH=f"{shims}{os.pathsep}{saved['PATH']}", STJOBS_BENCH_CALLS=str(log))
    try:
        calls = {}
        stjobs.status()
        calls["stjobs.status()"] = log.read_text().splitlines()
        log.unlink()
        subprocess.run([str(STJOBS), "status", "--json"], check=True, capture_output=True)
        calls["stjobs status --json"] = log.read_text().splitlines()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return calls


def measure(ids: list[str], rounds: int) -> dict[str, list[float]]:
    import stjobs

    def bare() -> None:
        subprocess.run(bare_sacct(ids), check=True, stdout=subprocess.DEVNULL)

    def listing() -> None:
        stjobs.status()

    def command() -> None:
        subprocess.run([str(STJOBS), "status", "--json"], check=True, stdout=subprocess.DEVNULL)

    cases = {"bare sacct -j <ids>": bare, "stjobs.status() in process": listing, "stjobs status --json": command}
    for run in cases.values():  # one warm-up each: page cache, .pyc files, slurmdbd's caches
        run()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, run in cases.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--held", type=int, default=50, help="of them held in the queue (pending, with a reason)")
    parser.add_argument("--rounds", type=int, default=15)
    options = parser.parse_args()
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # a user's Python caches bytecode (see the README)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        home = work / "home"
        os.environ["STJOBS_HOME"] = str(home)
        (work / "out").mkdir()
        ids = submit_jobs(options.jobs, options.held, work)
        held = ids[len(ids) - options.held:]
        try:
            wait_finished(ids[: len(ids) - options.held])
            write_records(ids, home, work)
            import stjobs

            rows = stjobs.status()
            states = {row.state.value for row in rows[: len(ids) - options.held]}
            waiting = {row.reason for row in rows[len(ids) - options.held:]}
            assert states == {"COMPLETED"}, states
            assert not held or waiting == {"SLURM's pending reason: JobHeldUser"}, waiting
            calls = count_calls(work)
            times = measure(ids, options.rounds)
        finally:
            if held:
                subprocess.run(["scancel", *held], check=False)
    print(f"{len(ids)} SLURM job records ({len(held)} held in the queue), {options.rounds} rounds")
    print(f"{'scheduler calls':28} {'sacct':>6} {'squeue':>7}")
    for name, lines in calls.items():
        sacct, squeue = (sum(line.split()[0] == command for line in lines) for command in ("sacct", "squeue"))
        verdict = "OK" if sacct + squeue <= 2 else "MISSED"
        print(f"{name:28} {sacct:6} {squeue:7}   (target <= 2 in all)  {verdict}")
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"\n{'time':28} {'median ms':>10} {'min ms':>8}")
    for name, values in times.items():
        print(f"{name:28} {median[name] * 1000:10.1f} {min(values) * 1000:8.1f}")
    base = median["bare sacct -j <ids>"]
    ratio = median["stjobs.status() in process"] / base
    print(f"\nstjobs.status() / bare sacct: {ratio:.2f}x  (target <= 1.5)  {'OK' if ratio <= 1.5 else 'MISSED'}")
    print(f"stjobs status --json / bare sacct: {median['stjobs status --json'] / base:.2f}x  (report: Python's "
          "start and imports included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
