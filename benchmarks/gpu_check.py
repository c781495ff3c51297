"""The GPU check: what stjobs decides for this machine's GPU, proven on it, in a few minutes of device time.

On whatever GPUs the machine has it prints the GPU, its compute capability and the precision stjobs chooses
(stjobs.gpus), checks that the installed torch has kernels for it, then runs two real jobs through the local backend
(the spec, launch plan and torchrun a user gets):

* **single**: the built-in training on one GPU at the docs' shape (the mpnet-base architecture with random weights,
  built from its config: no download; max_seq_length 384; 32 per device) for a fixed number of steps, reporting
  the steady-state samples/s beside the docs' single-V100 figure (2,724 samples/s; the goal is at least 5x);
* **fsdp**: FSDP (full_shard, one unit per MPNetLayer, FULL_STATE_DICT before the save) on every GPU there is; a
  world of one still proves the config and the save path, and the saved model is loaded back and encodes.

The result (JSON, with the machine named) goes to benchmarks/results/. ``--dry`` runs the same on CPU with a small
MPNet and short sequences, so the test suite proves the script itself; its figures mean nothing.

    python benchmarks/gpu_check.py [--dry] [--steps 60] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DOCS_V100_SAMPLES_PER_S = 2724.0  # the sentence-transformers docs, no parallelism, one V100
GOAL_OVER_DOCS = 5.0


def gpu_facts() -> dict[str, Any]:
    """The GPUs torch sees and what stjobs decides for the first one (no GPU: the CPU answer)."""
    import torch

    from stjobs import gpus

    facts: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": [],
                             "host": platform.node(), "python": platform.python_version()}
    if not torch.cuda.is_available():
        facts.update(capability=None, architecture=None, precision=gpus.precision_for(None), kernels=None)
        return facts
    facts["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    capability = tuple(torch.cuda.get_device_capability(0))
    flags = (torch._C._cuda_getArchFlags() or "").split()  # what the image build's check reads
    facts.update(capability=f"{capability[0]}.{capability[1]}", architecture=gpus.describe(capability),  # type: ignore[arg-type]
                 precision=gpus.precision_for(capability),  # type: ignore[arg-type]
                 arch_flags=flags, kernels=bool(set(flags) & set(gpus.arch_flags_serving(capability))))  # type: ignore[arg-type]
    return facts


def run_job(name: str, strategy: str, gpus_here: int, model: Path, data: Path, out: Path, options: argparse.Namespace
            ) -> dict[str, Any]:
    """One local job of the built-in training; its throughput, precision, strategy that ran and saved model."""
    from stjobs import api
    from stjobs.config import validate_spec
    from stjobs.train.events import first, parse_events

    procs = max(gpus_here, 1) if strategy == "fsdp" else 1
    args = ["--model", str(model), "--train-data", str(data), "--max-steps", str(options.steps),
            "--per-device-batch-size", str(options.batch), "--max-seq-length", str(options.seq),
            "--logging-steps", "5", "--throughput-skip-steps", str(options.skip), "--no-resume",
            "--no-group-by-length", "--dataloader-workers", "0"]
    spec = validate_spec({
        "name": f"gpu-check-{name}", "strategy": strategy, "procs_per_node": procs,
        "cpus_per_task": max(procs, min(os.cpu_count() or 1, 8)),
        "gpus_per_node": procs if gpus_here else 0, "output_dir": str(out / name),
        "env": {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        "entrypoint": {"module": "stjobs.train", "args": args},
    })
    started = time.perf_counter()
    record = api.submit(spec, "local")
    final = api.wait(record.job_id)
    events = parse_events("".join(api.logs(record.job_id)))
    throughput = first(events, "throughput", rank=0) or {}
    wrapped = first(events, "wrapped", rank=0) or {}
    saved = [e["path"] for e in events if e.get("event") == "saved"]
    row: dict[str, Any] = {
        "job": record.job_id, "state": final.state.value, "reason": final.reason, "strategy": strategy,
        "processes": procs, "ran": wrapped.get("ran"), "precision": wrapped.get("precision"),
        "steady_samples_per_second": throughput.get("steady_samples_per_second"),
        "seconds": round(time.perf_counter() - started, 1), "saved": saved[-1] if saved else None}
    if row["saved"]:
        from sentence_transformers import SentenceTransformer

        embedding = SentenceTransformer(row["saved"], device="cpu").encode(["a saved model encodes"])
        row["reloaded_dimension"] = int(embedding.shape[1])
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", action="store_true", help="on CPU, a small MPNet and short sequences")
    parser.add_argument("--steps", type=int, default=None, help="training steps per job (default 60; dry 8)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    options = parser.parse_args(argv)
    options.steps = options.steps or (8 if options.dry else 60)
    options.skip = 2 if options.dry else 10
    options.batch, options.seq = (8, 64) if options.dry else (32, 384)
    facts = gpu_facts()
    gpus_here = 0 if options.dry else len(facts["gpus"])
    print(f"GPU: {', '.join(facts['gpus']) or 'none'}; torch {facts['torch']} (CUDA {facts['cuda']})")
    print(f"compute capability {facts['capability']} ({facts['architecture']}): precision {facts['precision']}; "
          f"torch has kernels for it: {facts['kernels']}")
    if not options.dry and not gpus_here:
        print("gpu_check: no GPU here; run with --dry to check the script on CPU", file=sys.stderr)
        return 2
    from stjobs.bench import variable_length_pairs
    from stjobs.train.mpnet import build_mpnet

    with tempfile.TemporaryDirectory(prefix="stjobs-gpu-check-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("STJOBS_HOME", str(work / "home"))
        data = variable_length_pairs(work / "data" / "train.jsonl", 400 if options.dry else 4000, seed=42)
        texts = [value for line in data.read_text().splitlines() for value in json.loads(line).values()]
        model = build_mpnet(texts, work / "mpnet", "tiny" if options.dry else "base")
        rows = {name: run_job(name, strategy, gpus_here, model, data, work / "runs", options)
                for name, strategy in (("single", "single"), ("fsdp", "fsdp"))}
    single = rows["single"].get("steady_samples_per_second")
    result = {"machine": facts, "dry": options.dry, "shape": {"model": "mpnet-base architecture, random weights"
                                                             if not options.dry else "MPNet 2 x 64",
                                                             "max_seq_length": options.seq,
                                                             "per_device_batch_size": options.batch,
                                                             "steps": options.steps},
              "rows": rows, "docs_single_v100_samples_per_second": DOCS_V100_SAMPLES_PER_S,
              "over_docs": round(single / DOCS_V100_SAMPLES_PER_S, 2) if single else None}
    for name, row in rows.items():
        print(f"{name:7} {row['state']:10} ran {row['ran']} in {row['precision']}: "
              f"{row['steady_samples_per_second']} samples/s; saved {row['saved']} "
              f"(reloaded: {row.get('reloaded_dimension')} dims)")
    if single and not options.dry:
        print(f"single GPU / docs' V100: {result['over_docs']}x (goal >= {GOAL_OVER_DOCS})")
    options.out.mkdir(parents=True, exist_ok=True)
    name = "dry" if options.dry else "-".join(facts["gpus"][0].lower().split())
    path = options.out / f"gpu-check-{name}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"result: {path}")
    return 0 if all(row["state"] == "COMPLETED" for row in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
