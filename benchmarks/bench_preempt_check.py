"""What the per-step preemption check costs in samples/s: DDP training of the tiny model, 2 processes, gloo, CPU.

Each rank trains the same DDP model (the tiny BERT that ``python -m stjobs.train.models --tiny-from`` builds, mean
pooling, MultipleNegativesRankingLoss) with a hand-written loop, so nothing but the check differs between:
  * ``none``     no check at all (the docs' training script);
  * ``blocking`` the check stjobs had before: an all-reduce of the flag and a host read of it at every step end;
  * ``lagged``   stjobs' check now (``stjobs.train.distributed.agreed``): the vote started at one step end is read at
                 the next, so no step waits for it.
Rounds are interleaved (the order rotates each round) so machine noise hits all alike. Reported: the median over
rounds of each variant's samples/s (the slowest rank's time over a segment of steps), the median over rounds of
each round's own ratio to ``none`` (noise that hits one round hits all its variants), and the time a step spends
inside the check on rank 0 (what it adds to the critical path, free of the other variants' noise).
Target: lagged / none >= 0.99 (a cost that does not show).

    python benchmarks/bench_preempt_check.py [--rounds 15] [--steps 20] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "examples" / "data" / "train.jsonl"
VARIANTS = ("none", "blocking", "lagged")
TARGET = 0.99


def blocking_check(preemption: Any, device: Any) -> bool:
    """The check as stjobs had it: one all-reduce and a host read of it at every step end."""
    import torch
    import torch.distributed as dist

    flagged = torch.tensor([1 if preemption.signum is not None else 0], device=device)
    dist.all_reduce(flagged, op=dist.ReduceOp.MAX)
    return bool(flagged.item())


def rank_main(model_dir: str, rounds: int, steps: int, batch: int, result: str) -> None:
    import torch
    import torch.distributed as dist
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    from stjobs.train.distributed import Preemption, agreed
    from stjobs.train.models import unused_parameters

    torch.set_num_threads(1)  # one core per rank, as stjobs runs CPU ranks
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = SentenceTransformer(model_dir, device="cpu")
    model.max_seq_length = 64
    unused = set(unused_parameters(model))  # BERT's pooler: mean pooling never uses it, and DDP would refuse it
    for name, param in model.named_parameters():
        param.requires_grad_(name not in unused)
    loss = MultipleNegativesRankingLoss(model)
    ddp = torch.nn.parallel.DistributedDataParallel(loss)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-4)
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    batches = []
    for start in range(rank * batch, len(rows) - batch, world * batch):
        chunk = rows[start:start + batch]
        batches.append([model.preprocess([row["anchor"] for row in chunk]),
                        model.preprocess([row["positive"] for row in chunk])])
    checks = {"none": None, "blocking": blocking_check, "lagged": agreed}
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    in_check: dict[str, list[float]] = {name: [] for name in VARIANTS}  # seconds per step inside the check
    position = 0

    def train(count: int, check: Any, name: str = "") -> None:
        nonlocal position
        preemption = Preemption()  # never signalled: what is measured is the cost of asking
        spent = 0.0
        for _ in range(count):
            features = batches[position % len(batches)]
            position += 1
            optimizer.zero_grad(set_to_none=True)
            ddp(features, None).backward()
            optimizer.step()
            if check is not None:
                before = time.perf_counter()
                if check(preemption, torch.device("cpu")):
                    raise RuntimeError("nobody was signalled, yet the check said stop")
                spent += time.perf_counter() - before
        if name:
            in_check[name].append(spent / count)

    train(10, None)  # warm-up: allocator, DDP buckets
    for index in range(rounds):
        order = VARIANTS[index % len(VARIANTS):] + VARIANTS[:index % len(VARIANTS)]
        for name in order:
            dist.barrier()
            started = time.perf_counter()
            train(steps, checks[name], name)
            dist.barrier()  # the slowest rank's time: the job's rate
            rates[name].append(steps * batch * world / (time.perf_counter() - started))
    if rank == 0:
        Path(result).write_text(json.dumps({"rates": rates, "in_check": in_check}), encoding="utf-8")
    dist.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20, help="steps per variant per round")
    parser.add_argument("--batch", type=int, default=32, help="per-rank batch size")
    parser.add_argument("--rank", nargs=2, metavar=("MODEL", "RESULT"), help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.rank:  # one of the two torchrun workers
        rank_main(ns.rank[0], ns.rounds, ns.steps, ns.batch, ns.rank[1])
        return 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory(prefix="bench-preempt-") as scratch:
        model = Path(scratch) / "model"
        subprocess.run([sys.executable, "-m", "stjobs.train.models", "--tiny-from", str(DATA), "--out", str(model)],
                       check=True, cwd=REPO, env=env, capture_output=True)
        result = Path(scratch) / "rates.json"
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        __file__, "--rounds", str(ns.rounds), "--steps", str(ns.steps), "--batch", str(ns.batch),
                        "--rank", str(model), str(result)], check=True, cwd=REPO, env=env)
        found = json.loads(result.read_text(encoding="utf-8"))
    rates: dict[str, list[float]] = found["rates"]
    in_check: dict[str, list[float]] = found["in_check"]
    median = {name: statistics.median(values) for name, values in rates.items()}
    paired = {name: statistics.median(a / b for a, b in zip(rates[name], rates["none"], strict=True))
              for name in VARIANTS}
    step_s = {name: 2 * ns.batch / median[name] for name in VARIANTS}
    print(f"DDP, 2 processes x 1 thread, gloo, tiny BERT, {ns.batch} per rank, {ns.steps} steps x {ns.rounds} "
          "rounds per variant (interleaved)")
    for name in VARIANTS:
        values = rates[name]
        print(f"  {name:9} median {median[name]:8.1f} samples/s  (min {min(values):.1f}, max {max(values):.1f}); "
              f"in the check {statistics.median(in_check[name]) * 1e6:7.1f} us/step "
              f"({statistics.median(in_check[name]) / step_s[name]:.2%} of a step)")
    for name in ("lagged", "blocking"):
        ratio = paired[name]
        verdict = f"(target >= {TARGET}) {'OK' if ratio >= TARGET else 'MISSED'}" if name == "lagged" \
            else "(the check before this change, for scale)"
        print(f"{name} / none: {ratio:.3f} per round, {median[name] / median['none']:.3f} of medians  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
