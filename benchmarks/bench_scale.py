"""Scale (issue 17): a 64-node x 8-GPU render, a 1,000-point sweep render, and `stjobs status` of a 1,000-point
SLURM sweep, each measured side by side with its small counterpart in one run (these machines are noisy).

* render: ``stjobs.render`` of a 64 x 8 job on SLURM and Kubernetes beside a 1 x 8 one; target well under 1 s.
* sweep: a 1,000-point sweep (10 x 10 x 10 grid) rendered for SLURM (one job array), local and Kubernetes beside a
  10-point one, with the cost per point of each; target well under 1 s.
* status: a 1,000-point SLURM sweep's records listed with ``stjobs.status`` against ``sacct``/``squeue`` stand-ins
  first on PATH that log each call and answer from a table (no cluster needed): the scheduler calls stay bounded
  (one sacct and one squeue per 500 ids), and the time is the listing's own.

    python benchmarks/bench_scale.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import stjobs  # noqa: E402
from stjobs.config import validate_spec  # noqa: E402

TRAIN = {"args": ["--model", "m", "--train-data", "d.jsonl", "--max-steps", "100"]}
GRID = {"--learning-rate": [f"{n}e-5" for n in range(1, 11)], "--warmup-ratio": [n / 10 for n in range(10)],
        "--seed": list(range(10))}
SHIM = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["BENCH_CALLS"], "a") as log:
    log.write("{name}\\n")
for job in args[args.index("-j") + 1].split(","):
    print(job + ("|COMPLETED|0:0" if "{name}" == "sacct" else "|PENDING|Priority"))
"""


def median_s(work: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def job(nodes: int, gpus: int, **extra: object) -> stjobs.JobSpec:
    return validate_spec({"name": "scale", "nodes": nodes, "gpus_per_node": gpus, "gpu_type": "h100",
                          "slurm": {"partition": "gpu"}, "image": "ghcr.io/org/train:1", "entrypoint": TRAIN,
                          **extra})


def sweep(points: int) -> stjobs.JobSpec:
    grid = dict(GRID) if points == 1000 else {"--learning-rate": GRID["--learning-rate"][:points]}
    return job(2, 8, sweep={"grid": grid})


def status_of_a_sweep(points: int, rounds: int) -> tuple[float, dict[str, int]]:
    """List a SLURM sweep of ``points`` points through stand-ins for sacct and squeue: (seconds, calls)."""
    from stjobs.jobs import JobRecord

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        bin_dir = root / "bin"
        bin_dir.mkdir()
        for name in ("sacct", "squeue"):
            (bin_dir / name).write_text(SHIM.format(python=sys.executable, name=name))
            (bin_dir / name).chmod(0o755)
        os.environ.update(STJOBS_HOME=str(root / "home"), BENCH_CALLS=str(root / "calls"),
                          PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        sweep_dir = root / "home" / "jobs" / "sweep-1"
        listed = []
        for index in range(points):
            point = JobRecord(job_id=f"sweep-1-p{index}", backend="slurm", name=f"scale-p{index}",
                              job_dir=str(sweep_dir / "points" / str(index)), submitted_at=time.time() - 3600,
                              nodes=2, procs_per_node=8, details={"slurm_job_id": f"7000_{index}", "mode": "sbatch",
                                                                  "output": str(sweep_dir / f"slurm-7000_{index}.out")})
            Path(point.job_dir).mkdir(parents=True)
            point.save()
            listed.append({"index": index, "label": "", "job_id": point.job_id, "job_dir": point.job_dir})
        JobRecord(job_id="sweep-1", backend="slurm", name="scale", job_dir=str(sweep_dir), submitted_at=time.time(),
                  nodes=2, procs_per_node=8, details={"sweep": {"points": listed}}).save()
        seconds = median_s(lambda: stjobs.status(), rounds)
        (root / "calls").write_text("")
        rows = stjobs.status("sweep-1")
        calls = (root / "calls").read_text().split()
        assert len(rows) == points + 1 and rows[0].state.value == "COMPLETED", rows[0]
        return seconds, {name: calls.count(name) for name in ("sacct", "squeue")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rounds = args.rounds
    results: dict[str, object] = {}
    print(f"render (median of {rounds})          small         big     big/small")
    for backend in ("slurm", "k8s"):
        small = median_s(lambda b=backend: stjobs.render(job(1, 8), b), rounds)
        big = median_s(lambda b=backend: stjobs.render(job(64, 8), b), rounds)
        results[f"render_64x8_{backend}_s"] = big
        print(f"  {backend:6} 1 x 8 vs 64 x 8   {small * 1000:8.1f} ms {big * 1000:8.1f} ms  {big / small:6.2f}x")
    print("sweep render                   10 points   1000 points  per point (1000)")
    for backend in ("slurm", "local", "k8s"):
        small = median_s(lambda b=backend: stjobs.render(sweep(10), b), rounds)
        big = median_s(lambda b=backend: stjobs.render(sweep(1000), b), max(1, rounds // 2))
        results[f"sweep_1000_{backend}_s"] = big
        print(f"  {backend:6}                  {small * 1000:8.1f} ms {big * 1000:8.1f} ms  "
              f"{big:.3f} s ({big / 1000 * 1000:.2f} ms)")
    seconds, calls = status_of_a_sweep(1000, rounds)
    results.update(status_1000_points_s=seconds, status_calls=calls)
    print(f"status of a 1000-point SLURM sweep: {seconds * 1000:.0f} ms, scheduler calls {json.dumps(calls)} "
          "(one sacct and one squeue per 500 ids)")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
