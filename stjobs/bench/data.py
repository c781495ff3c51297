"""The bench's data: the docs' recipe on generated data of the same shape, and the GPU check's pairs.

The docs train MultiNLI + SNLI (premise, hypothesis, a label of three classes) with SoftmaxLoss together with STSB
(two sentences and a similarity score) with CosineSimilarityLoss. Offline, the same shapes come from
:mod:`stjobs.train.recipe_data` (NLI-like labelled pairs of short texts, STS-like scored pairs), seeded. Standard
library only.
"""

from __future__ import annotations

import json
from pathlib import Path
from random import Random

TEXT_COLUMNS = ("premise", "hypothesis", "sentence1", "sentence2")


def recipe(out: Path, rows: int, seed: int) -> dict[str, Path]:
    """The docs' two training sets (``nli-train``, ``sts-train``; ``rows`` each) and an STS eval set, seeded."""
    from stjobs.train.recipe_data import write_recipe

    return write_recipe(out, train_rows=rows, eval_rows=max(100, rows // 10), seed=seed)


def texts_of(paths: list[Path]) -> list[str]:
    """Every text of these JSONL files, in file order: the generated model's vocabulary input."""
    texts: list[str] = []
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts.extend(str(row[column]) for column in TEXT_COLUMNS if column in row)
    return texts


def variable_length_pairs(path: Path, rows: int, seed: int) -> Path:
    """Question/passage pairs whose lengths spread from a few words to a few hundred (log-normal), seeded: the GPU
    check's data (benchmarks/gpu_check.py).

    Learnable: a passage repeats a few of its question's rare words among filler, so the loss falls as the model
    learns to match them; other rows share no rare words.
    """
    rng = Random(seed)
    syllables = ["ka", "lo", "mi", "ren", "tos", "vu", "sha", "dri", "pel", "qua", "zim", "ob", "ert", "nia"]
    rare = sorted({"".join(rng.choice(syllables) for _ in range(3)) for _ in range(4000)})
    common = ["the", "a", "of", "and", "in", "to", "is", "for", "on", "with", "as", "by", "at", "from"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for _ in range(rows):
            keys = rng.sample(rare, 4)
            question = " ".join([*keys, *rng.choices(common, k=rng.randint(1, 6))])
            length = min(400, max(4, int(rng.lognormvariate(3.2, 0.9))))
            words = rng.choices(common + rare[:200], k=length) + keys[: rng.randint(2, 4)]
            rng.shuffle(words)
            out.write(json.dumps({"anchor": question, "positive": " ".join(words)}) + "\n")
    return path
