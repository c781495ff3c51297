"""Deterministic NLI-like and STS-like data for the sentence-transformers docs' recipe (SoftmaxLoss on NLI, then
CosineSimilarityLoss on STS benchmark, evaluated by Spearman correlation on STS), small enough for two CPU cores.

``python -m stjobs.train.recipe_data --out DIR [--train-rows 600] [--eval-rows 120] [--seed 0]`` writes
``nli-train.jsonl`` (premise, hypothesis, label), ``sts-train.jsonl`` and ``sts-eval.jsonl`` (sentence1, sentence2,
score); the same arguments always give byte-identical files.

Every sentence describes a scene: who (a young woman), doing what (playing the violin), where (in the park). Each
specific word has a general one (woman, making music, outdoors), so the labels follow from the texts:

* NLI, SNLI's label ids: 0 entailment (the hypothesis says the scene in general words), 1 neutral (the same scene
  plus a detail the premise does not give: a reason or a time), 2 contradiction (the same person doing something of
  another kind, in the other kind of place: indoors for outdoors).
* STS, scores in [0, 1] as sentence-transformers/stsb: 1.0 the same scene in other words, 0.75 the same person and
  activity elsewhere, 0.5 the same activity only, 0.25 the same place only, 0.0 nothing shared.

Both kinds share the vocabulary, which is what the recipe relies on: NLI teaches what the words mean, STS how close
two scenes are. Standard library only (``random.Random(seed)``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from random import Random

# (specific, general)
SUBJECTS = (
    ("young woman", "woman"), ("grey-haired woman", "woman"), ("tall man", "man"), ("bearded man", "man"),
    ("little girl", "child"), ("small boy", "child"), ("brown dog", "dog"), ("black dog", "dog"),
    ("chef", "cook"), ("nurse", "worker"), ("student", "learner"), ("farmer", "worker"),
)
# (specific, general, category): a contradiction swaps in an activity of another category
ACTIVITIES = (
    ("playing the violin", "making music", "music"), ("playing the guitar", "making music", "music"),
    ("singing a song", "making music", "music"), ("reading a novel", "reading", "quiet"),
    ("writing a letter", "writing", "quiet"), ("sleeping soundly", "resting", "quiet"),
    ("riding a bicycle", "riding", "sport"), ("running a race", "running", "sport"),
    ("kicking a ball", "playing a game", "sport"), ("cooking pasta", "preparing food", "food"),
    ("eating an apple", "eating", "food"), ("baking bread", "preparing food", "food"),
    ("painting a portrait", "making art", "art"), ("drawing a map", "making art", "art"),
)
# (specific, general)
PLACES = (
    ("in the park", "outdoors"), ("on the beach", "outdoors"), ("on a mountain trail", "outdoors"),
    ("in the garden", "outdoors"), ("in the kitchen", "indoors"), ("in a library", "indoors"),
    ("in a classroom", "indoors"), ("in the living room", "indoors"),
)
DETAILS = ("to win a prize", "before breakfast", "for a large crowd", "because it is a holiday",
           "while waiting for a friend", "for the first time")
# What an NLI premise may add about the scene: how the person looks and who or what is near. Never a reason, a time
# or a place (a neutral hypothesis adds those, and the place decides contradictions), so no label changes.
EXTRAS = ("wearing a red coat", "wearing round glasses", "with a friend nearby", "with a bag over one shoulder",
          "in a bright yellow shirt", "with a big smile", "beside a sleeping cat", "next to a pile of old books",
          "with a second person waiting close by", "holding a small notebook", "in a long striped scarf",
          "while a dog watches")
# Premise lengths of MultiNLI + SNLI are long-tailed (SNLI's mean about 14 tokens, MultiNLI's about 22, a few past
# 60): extras drawn so most premises are short and some run long; hypotheses stay short, as they are there.
EXTRA_MEAN = 1.6
EXTRA_MAX = 8
# How a scene is said: two wordings, so a paraphrase shares the words but not their order.
WORDINGS = ("A {s} is {a} {p}.", "{P}, a {s} is {a}.")
NLI_LABELS = {"entailment": 0, "neutral": 1, "contradiction": 2}
STS_SCORES = (1.0, 0.75, 0.5, 0.25, 0.0)


@dataclass(frozen=True)
class Scene:
    subject: int
    activity: int
    place: int

    def say(self, wording: int = 0) -> str:
        place = PLACES[self.place][0]
        text = WORDINGS[wording].format(s=SUBJECTS[self.subject][0], a=ACTIVITIES[self.activity][0], p=place,
                                        P=place[0].upper() + place[1:])
        return text


def _scene(rng: Random) -> Scene:
    return Scene(rng.randrange(len(SUBJECTS)), rng.randrange(len(ACTIVITIES)), rng.randrange(len(PLACES)))


def _other(rng: Random, count: int, *avoid: int) -> int:
    return rng.choice([i for i in range(count) if i not in avoid])


def _check(rows: int, what: str) -> None:
    if rows < 1:
        raise ValueError(f"{what}: got {rows}; expected a positive integer")


def nli_rows(n: int, seed: int = 0) -> list[dict[str, object]]:
    """``n`` rows of premise, hypothesis, label (0 entailment, 1 neutral, 2 contradiction), the labels in turn."""
    _check(n, "nli rows")
    rng = Random(f"nli-{seed}")
    rows: list[dict[str, object]] = []
    for i in range(n):
        scene = _scene(rng)
        premise = scene.say(rng.randrange(len(WORDINGS)))
        extras = rng.sample(EXTRAS, min(EXTRA_MAX, int(rng.expovariate(1 / EXTRA_MEAN))))
        if extras:
            premise = f"{premise[:-1]}, {', '.join(extras)}."
        general = SUBJECTS[scene.subject][1]
        label = ("entailment", "neutral", "contradiction")[i % 3]
        if label == "entailment":
            hypothesis = f"A {general} is {ACTIVITIES[scene.activity][1]} {PLACES[scene.place][1]}."
        elif label == "neutral":
            hypothesis = f"A {general} is {ACTIVITIES[scene.activity][0]} {rng.choice(DETAILS)}."
        else:
            category = ACTIVITIES[scene.activity][2]
            activity = rng.choice([a for a in ACTIVITIES if a[2] != category])
            elsewhere = "indoors" if PLACES[scene.place][1] == "outdoors" else "outdoors"
            hypothesis = f"A {general} is {activity[0]} {elsewhere}."
        rows.append({"premise": premise, "hypothesis": hypothesis, "label": NLI_LABELS[label]})
    return rows


def sts_rows(n: int, seed: int = 0) -> list[dict[str, object]]:
    """``n`` rows of sentence1, sentence2, score in [0, 1], the five grades in turn."""
    _check(n, "sts rows")
    rng = Random(f"sts-{seed}")
    rows: list[dict[str, object]] = []
    for i in range(n):
        scene = _scene(rng)
        score = STS_SCORES[i % len(STS_SCORES)]
        subject, activity, place = scene.subject, scene.activity, scene.place
        if score == 1.0:
            other = scene
        elif score == 0.75:
            other = Scene(subject, activity, _other(rng, len(PLACES), place))
        elif score == 0.5:
            other = Scene(_other(rng, len(SUBJECTS), subject), activity, _other(rng, len(PLACES), place))
        elif score == 0.25:
            other = Scene(_other(rng, len(SUBJECTS), subject), _other(rng, len(ACTIVITIES), activity), place)
        else:
            other = Scene(_other(rng, len(SUBJECTS), subject), _other(rng, len(ACTIVITIES), activity),
                          _other(rng, len(PLACES), place))
        wording = rng.randrange(len(WORDINGS))
        # A paraphrase is said the other way round, so a score of 1 is never two identical strings.
        other_wording = 1 - wording if other == scene else rng.randrange(len(WORDINGS))
        rows.append({"sentence1": scene.say(wording), "sentence2": other.say(other_wording), "score": score})
    return rows


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    # Fixed encoding, newline and key order: byte-identical output for identical arguments on every platform.
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_recipe(out_dir: Path, train_rows: int = 600, eval_rows: int = 120, seed: int = 0) -> dict[str, Path]:
    """Write ``nli-train.jsonl``, ``sts-train.jsonl`` (``train_rows`` each) and ``sts-eval.jsonl`` (``eval_rows``,
    another random stream) under ``out_dir``; their paths by file stem."""
    _check(train_rows, "train rows")
    _check(eval_rows, "eval rows")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"nli-train": nli_rows(train_rows, seed), "sts-train": sts_rows(train_rows, seed),
             "sts-eval": sts_rows(eval_rows, seed + 1_000_003)}
    paths = {}
    for stem, rows in files.items():
        paths[stem] = out_dir / f"{stem}.jsonl"
        _write_jsonl(paths[stem], rows)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stjobs.train.recipe_data",
                                     description="Write deterministic NLI-like and STS-like recipe data.")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--train-rows", type=int, default=600)
    parser.add_argument("--eval-rows", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args(argv)
    try:
        paths = write_recipe(ns.out, ns.train_rows, ns.eval_rows, ns.seed)
    except ValueError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    print("wrote " + ", ".join(str(path) for path in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
