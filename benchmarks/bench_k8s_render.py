"""``stjobs render --backend k8s`` against TorchX's Kubernetes dry run, measured side by side in one run.

Whole process (2 nodes x 8 GPUs, rounds interleaved so noise hits every command alike; medians):
  * TorchX ``torchx run --dryrun -s kubernetes dist.ddp -j 2x8`` / ``stjobs render -b k8s``    (target >= 4)
In process:
  * ``stjobs.render(spec, "k8s")`` renders per second, and the manifest alone through stjobs.yamlio (PyYAML),
    as a report: a render is done once per submission, so this is no target to hand-write a dumper for

    python benchmarks/bench_k8s_render.py [--rounds 15] [--with-torchx]

TorchX's Kubernetes dry run is not pure either: without ``--workspace ""`` it asks a Docker daemon to build an image
(and fails on a machine without one), and it needs ``-cfg queue=...`` for Volcano. We give it both.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_render import REPO, bench_options, measure, stjobs_command, workspace

SPEC = """\
name: bench
nodes: 2
gpus_per_node: 8
image: ghcr.io/example/stjobs-gpu:0.1.0
entrypoint:
  script: train.py
"""
SCHEMAS = REPO.parent / "shared" / "k8s-schemas"


def whole_process(work: Path, torchx: str | None, rounds: int) -> dict[str, float]:
    stjobs = [*stjobs_command(), "render", str(work / "spec.yaml"), "-b", "k8s", "--force"]
    cases = {"python -c pass": [sys.executable, "-c", "pass"],
             "stjobs render -b k8s": [*stjobs, "-o", str(work / "out")]}
    if SCHEMAS.is_dir():
        cases["stjobs render -b k8s (CRD check)"] = [*stjobs, "-o", str(work / "out2"), "--k8s-schemas",
                                                     str(SCHEMAS)]
    if torchx:
        _ensure_kubernetes(torchx)
        cases["torchx dryrun -s kubernetes"] = [torchx, "run", "--workspace", "", "--dryrun", "-s", "kubernetes",
                                                "-cfg", "queue=default", "dist.ddp", "-j", "2x8", "--script",
                                                "train.py"]
    times = measure(cases, rounds, work)
    return {name: statistics.median(values) for name, values in times.items()}


def _ensure_kubernetes(torchx: str) -> None:
    """TorchX's kubernetes scheduler imports the kubernetes client; install it next to TorchX if missing."""
    import subprocess

    python = str(Path(torchx).parent / "python")
    if subprocess.run([python, "-c", "import kubernetes"], capture_output=True).returncode != 0:
        subprocess.run([python, "-m", "pip", "install", "--quiet", "-c", str(REPO / "constraints.txt"), "kubernetes"],
                       check=True)


def in_process(work: Path, seconds: float = 2.0) -> dict[str, float]:
    import stjobs
    from stjobs import yamlio
    from stjobs.backends.k8s import manifest as k8s_manifest
    from stjobs.launch import build_launch

    spec = stjobs.load_spec(work / "spec.yaml")
    rates = {}
    variants = {"stjobs.render(spec, 'k8s')": lambda: stjobs.render(spec, "k8s")}
    if SCHEMAS.is_dir():
        variants["... with the CRD check"] = lambda: stjobs.render(spec, "k8s", SCHEMAS)
    manifest = k8s_manifest.build(spec, build_launch(spec, rendezvous_from_env=True))
    variants["stjobs.yamlio.dump, manifest only"] = lambda: yamlio.dump(manifest)
    for name, call in variants.items():
        call()
        best = 0.0
        for _ in range(3):  # best of three windows: the least disturbed one
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds / 3:
                call()
                count += 1
            best = max(best, count / (time.perf_counter() - start))
        rates[name] = best
    return rates


def main() -> int:
    options, torchx = bench_options(__doc__ or "")
    with workspace(SPEC) as work:
        median = whole_process(work, torchx, options.rounds)
        rates = in_process(work)

    print(f"{'whole process':36} {'median ms':>10}")
    for name, value in median.items():
        print(f"{name:36} {value * 1000:10.1f}")
    torchx_ms = median.get("torchx dryrun -s kubernetes")
    for name in [n for n in median if n.startswith("stjobs")]:
        if torchx_ms:
            ratio = torchx_ms / median[name]
            print(f"torchx dryrun / {name}: {ratio:.2f}x  (target >= 4)  {'OK' if ratio >= 4 else 'MISSED'}")
    if not torchx_ms:
        print("TorchX not installed: run with --with-torchx for that comparison")
    print()
    print(f"{'in process':36} {'per second':>10} {'ms each':>8}")
    for name, rate in rates.items():
        print(f"{name:36} {rate:10.0f} {1000 / rate:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
