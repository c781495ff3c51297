"""Deterministic, learnable example data: questions about invented countries and the sentences that answer them.

``python -m stjobs.train.example_data --out DIR [--train-rows 2000] [--eval-rows 200] [--seed 0] [--kind pairs]``
writes ``DIR/train.jsonl`` and ``DIR/eval.jsonl``; the same arguments always give byte-identical files.

Why this shape: every country has ten facets (capital, currency, ...), each asked with several question templates
and answered with several answer templates that mostly share no words with the question ("Which city is X governed
from?" -> "The parliament and ministries of X are located in Y."). So the entity name alone narrows a query down to
ten candidate answers, and a model only ranks the right one first after it has learned how question wordings map to
answer wordings. That mapping is shared by all countries, which makes it learnable from the training split and
testable on held-out countries: train and eval use disjoint countries, so no anchor or positive text is in both.

Standard library only (``random.Random(seed)``), so the launcher can produce demo data without torch.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from random import Random

KINDS = ("pairs", "triplets", "scored")

_SYLLABLES = (
    "val", "dor", "mer", "en", "ka", "ri", "tho", "lu", "ven", "sar", "bel", "quo", "mi", "zan", "tor", "el",
    "gra", "nis", "ost", "ur", "pel", "dra", "vi", "cor", "hal", "ith", "mon", "ra", "sel", "tav", "bru", "fen",
)
_COUNTRY_ENDINGS = ("ia", "land", "stan", "ora", "mark", "is", "ova", "ea")


@dataclass(frozen=True)
class Facet:
    name: str
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    values: tuple[str, ...] = ()  # empty: the value is generated (a name or a number)


FACETS: tuple[Facet, ...] = (
    Facet("capital",
          ("What is the capital of {e}?", "Which city is {e} governed from?",
           "Where does the government of {e} sit?", "Name the main administrative city of {e}."),
          ("{v} serves as the seat of government for {e}.",
           "The parliament and ministries of {e} are located in {v}.")),
    Facet("currency",
          ("What money is used in {e}?", "Which currency do shops in {e} accept?",
           "How do people pay for things in {e}?"),
          ("In {e}, prices are quoted in the {v}.", "The {v} is the legal tender of {e}."),
          ("silver mark", "crown", "dinar", "florin", "guilder", "rupee", "peso", "shilling", "thaler", "ducat")),
    Facet("population",
          ("How many people live in {e}?", "What is the population of {e}?", "How crowded is {e}?"),
          ("Roughly {v} million residents call {e} home.", "{e} has about {v} million inhabitants.")),
    Facet("language",
          ("What language is spoken in {e}?", "Which tongue do the people of {e} speak?",
           "What do locals in {e} talk in?"),
          ("Most residents of {e} converse in {v}.", "Schools in {e} teach mainly in {v}.")),
    Facet("climate",
          ("What is the weather like in {e}?", "Describe the climate of {e}.", "Is it hot or cold in {e}?"),
          ("{e} has a {v} climate all year.", "Visitors to {e} should pack for {v} conditions."),
          ("humid tropical", "dry desert", "cold alpine", "mild oceanic", "snowy subarctic", "rainy monsoon",
           "windy steppe", "temperate forest")),
    Facet("founded",
          ("When was {e} founded?", "In which year did {e} become independent?", "How old is the nation of {e}?"),
          ("{e} was established in the year {v}.", "Independence for {e} came in {v}.")),
    Facet("export",
          ("What does {e} sell to other countries?", "What is the main export of {e}?",
           "Which goods does {e} ship abroad?"),
          ("The economy of {e} depends on shipping {v} overseas.",
           "Most foreign trade revenue of {e} comes from {v}."),
          ("copper", "timber", "wool", "olive oil", "coffee", "rice", "salt", "tin", "silk", "wine")),
    Facet("leader",
          ("Who leads {e}?", "Who is the head of state of {e}?", "Who is in charge of {e}?"),
          ("{e} is ruled by {v}.", "Decrees in {e} are signed by {v}.")),
    Facet("sport",
          ("What sport is popular in {e}?", "Which game do fans in {e} love most?",
           "What do crowds in {e} cheer for?"),
          ("Stadiums across {e} fill up for {v} matches.", "The national pastime of {e} is {v}."),
          ("football", "cricket", "rugby", "handball", "polo", "curling", "hockey", "volleyball", "tennis", "chess")),
    Facet("animal",
          ("What is the national animal of {e}?", "Which creature symbolizes {e}?", "What beast represents {e}?"),
          ("The {v} appears on the coat of arms of {e}.", "{e} chose the {v} as its emblem."),
          ("lynx", "heron", "stag", "falcon", "otter", "ibex", "swan", "bison", "wolf", "tortoise")),
)


def _word(rng: Random, parts: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts))


def _countries(rng: Random, count: int) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()  # membership only: iteration order of a set must never reach the output
    while len(names) < count:
        name = (_word(rng, rng.randint(1, 2)) + rng.choice(_COUNTRY_ENDINGS)).capitalize()
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _value(rng: Random, facet: Facet) -> str:
    if facet.values:
        return rng.choice(facet.values)
    if facet.name == "population":
        return str(rng.randint(1, 95))
    if facet.name == "founded":
        return str(rng.randint(1050, 1990))
    if facet.name == "language":
        return _word(rng, 2).capitalize() + rng.choice(("ic", "ese", "ish", "an"))
    if facet.name == "leader":
        title = rng.choice(("Queen", "King", "President", "Chancellor", "Prince"))
        return f"{title} {_word(rng, 2).capitalize()}"
    return (_word(rng, 2) + rng.choice(("burg", "ton", "grad", "polis", "haven"))).capitalize()


@dataclass(frozen=True)
class _Fact:
    country: str
    facet: int
    question: str
    answer: str


def _facts(rng: Random, countries: Sequence[str]) -> list[_Fact]:
    facts = []
    for country in countries:
        for index, facet in enumerate(FACETS):
            value = _value(rng, facet)
            question = rng.choice(facet.questions).format(e=country)
            answer = rng.choice(facet.answers).format(e=country, v=value)
            facts.append(_Fact(country, index, question, answer))
    return facts


def _rows(rng: Random, facts: list[_Fact], count: int, kind: str) -> list[dict[str, object]]:
    chosen = list(facts)
    rng.shuffle(chosen)
    chosen = chosen[:count]
    by_country: dict[str, list[_Fact]] = {}
    for fact in facts:
        by_country.setdefault(fact.country, []).append(fact)
    rows: list[dict[str, object]] = []
    for i, fact in enumerate(chosen):
        if kind == "pairs":
            rows.append({"anchor": fact.question, "positive": fact.answer})
        elif kind == "triplets":
            # Hard negative: the same country, another facet, so the entity name alone cannot separate them.
            other = rng.choice([f for f in by_country[fact.country] if f.facet != fact.facet])
            rows.append({"anchor": fact.question, "positive": fact.answer, "negative": other.answer})
        else:
            # Cycle through graded cases so every batch sees high, middle and low scores.
            case = i % 4
            if case == 0:
                partner, score = fact, 1.0
            elif case == 1:
                partner = rng.choice([f for f in by_country[fact.country] if f.facet != fact.facet])
                score = 0.3
            elif case == 2:
                partner = rng.choice([f for f in facts if f.facet == fact.facet and f.country != fact.country])
                score = 0.2
            else:
                partner = rng.choice([f for f in facts if f.facet != fact.facet and f.country != fact.country])
                score = 0.0
            rows.append({"sentence1": fact.question, "sentence2": partner.answer, "score": score})
    return rows


def generate(train_rows: int, eval_rows: int, seed: int = 0, kind: str = "pairs") -> tuple[list[dict[str, object]],
                                                                                         list[dict[str, object]]]:
    """The train and eval rows; the two splits are about disjoint countries."""
    if kind not in KINDS:
        raise ValueError(f"kind: got {kind!r}; expected one of {', '.join(KINDS)}")
    if train_rows < 1 or eval_rows < 1:
        raise ValueError(f"rows: got train={train_rows}, eval={eval_rows}; expected positive integers")
    rng = Random(seed)
    n_train = -(-train_rows // len(FACETS))
    n_eval = -(-eval_rows // len(FACETS))
    countries = _countries(rng, n_train + n_eval)
    train = _rows(rng, _facts(rng, countries[:n_train]), train_rows, kind)
    evaluation = _rows(rng, _facts(rng, countries[n_train:]), eval_rows, kind)
    return train, evaluation


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    # Fixed encoding, newline and key order: byte-identical output for identical arguments on every platform.
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def write(out: Path, train_rows: int = 2000, eval_rows: int = 200, seed: int = 0, kind: str = "pairs") -> tuple[
        Path, Path]:
    """Write ``out/train.jsonl`` and ``out/eval.jsonl`` and return their paths."""
    train, evaluation = generate(train_rows, eval_rows, seed, kind)
    out.mkdir(parents=True, exist_ok=True)
    train_path, eval_path = out / "train.jsonl", out / "eval.jsonl"
    _write_jsonl(train_path, train)
    _write_jsonl(eval_path, evaluation)
    return train_path, eval_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stjobs.train.example_data", description="Write deterministic example data.")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--eval-rows", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kind", choices=KINDS, default="pairs")
    ns = parser.parse_args(argv)
    try:
        train_path, eval_path = write(ns.out, ns.train_rows, ns.eval_rows, ns.seed, ns.kind)
    except ValueError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    print(f"wrote {train_path} ({ns.train_rows} rows) and {eval_path} ({ns.eval_rows} rows), kind={ns.kind}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
