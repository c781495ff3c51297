"""Length-grouped batches: texts of similar length share a batch, so little of each batch is padding.

A transformer pays for the longest text of a batch on every row; with randomly mixed lengths most of that work is
padding. The sampler shuffles the data, cuts it into windows of ``WINDOW_STEPS`` steps, sorts each window by
text length and cuts it into batches, then shuffles the order of the steps: batches stay random across an epoch
while each holds texts of one length range.

Under data parallelism, accelerate hands out consecutive batches to the ranks of one step (batch ``i`` to rank
``i % world``). Steps, not batches, are shuffled, so the ranks of one step get neighbouring lengths: a rank with
short texts would otherwise wait at the gradient all-reduce for one with long texts. Windows are counted in steps,
so 2 processes x B/2 rows get, step for step, the same rows as 1 process x B (the parity test relies on it).

For in-batch-negative losses a batch never holds the same text twice (it would be its own negative): a row whose
text is already in the batch being filled moves to the next one.

Several datasets (each with its own loss): every dataset gets its own sampler (:class:`DatasetBatchSamplers`), and
the choice of dataset is made per step, so the ranks of one step all train the same dataset and loss
(:class:`StepProportionalBatchSampler`, :class:`StepRoundRobinBatchSampler`).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import accumulate
from typing import Any

import torch
from sentence_transformers.base.sampler import (
    DefaultBatchSampler,
    NoDuplicatesBatchSampler,
    ProportionalBatchSampler,
    RoundRobinBatchSampler,
)
from torch.utils.data import RandomSampler, SubsetRandomSampler

from stjobs.train.data import TEXT_COLUMNS

WINDOW_STEPS = 64


def row_texts(dataset: Any) -> list[tuple[str, ...]]:
    """Each row's texts (anchor, positive, ...): what a batch must not repeat, and what its length is made of."""
    columns = [dataset[name] for name in dataset.column_names if name in TEXT_COLUMNS]
    return list(zip(*columns, strict=True)) if columns else [() for _ in range(len(dataset))]


def text_lengths(dataset: Any) -> list[int]:
    """Characters per row over its text columns: a tokenizer-free stand-in for tokens, good enough to sort by."""
    return [sum(map(len, texts)) for texts in row_texts(dataset)]


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class LengthGroupedBatchSampler(DefaultBatchSampler):
    """Batches of similar text length, in random order; see the module docstring."""

    unique_texts = False  # see UniqueTextBatchSampler

    def __init__(self, dataset: Any, batch_size: int, drop_last: bool, valid_label_columns: list[str] | None = None,
                 generator: torch.Generator | None = None, seed: int = 0) -> None:
        super().__init__(dataset, batch_size=batch_size, drop_last=drop_last,
                         valid_label_columns=valid_label_columns, generator=generator, seed=seed)
        texts = row_texts(dataset)
        self.lengths = [sum(map(len, row)) for row in texts]
        self.world = _world_size()
        self._texts = texts if self.unique_texts else None

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        return full if self.drop_last or not rest else full + 1

    def _batches(self, order: list[int]) -> list[list[int]]:
        out: list[list[int]] = []
        window = self.batch_size * self.world * WINDOW_STEPS
        for start in range(0, len(order), window):
            chunk = sorted(order[start:start + window], key=lambda i: self.lengths[i], reverse=True)
            out.extend(self._fill(chunk))
        return out

    def _fill(self, chunk: list[int]) -> list[list[int]]:
        if self._texts is None:
            return [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        batches: list[list[int]] = []
        waiting = chunk
        while waiting:
            batch: list[int] = []
            seen: set[str] = set()
            later: list[int] = []
            for index in waiting:
                texts = self._texts[index]
                if len(batch) < self.batch_size and seen.isdisjoint(texts):
                    batch.append(index)
                    seen.update(texts)
                else:
                    later.append(index)
            batches.append(batch)
            waiting = later
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        batches = self._batches(order)
        if self.drop_last:
            batches = [batch for batch in batches if len(batch) == self.batch_size]
        # Shuffle whole steps (``world`` consecutive batches), keeping each step's batches of neighbouring lengths.
        # A step short of rows goes last: in the middle it would shift which rank gets which batch from there on.
        steps = [batches[i:i + self.world] for i in range(0, len(batches), self.world)]
        rows = self.batch_size * self.world
        full = [step for step in steps if sum(map(len, step)) == rows]
        for position in torch.randperm(len(full), generator=generator).tolist():
            yield from full[position]
        for step in steps:
            if sum(map(len, step)) != rows:
                yield from step


class UniqueTextBatchSampler(LengthGroupedBatchSampler):
    """Length-grouped batches that never hold one text twice, for losses that use the batch as negatives.

    A subclass rather than an option: the Trainer takes a sampler class and builds it with fixed arguments.
    """

    unique_texts = True


class DatasetBatchSamplers:
    """``batch_sampler`` of a multi-dataset run: sentence-transformers calls it once per dataset of the
    DatasetDict, with the same arguments as a sampler class; each dataset gets the sampler its loss needs (unique
    texts only where the loss takes the batch as negatives). The datasets are told apart by identity: the Trainer
    passes the very objects it was given (it adds the dataset-name column in place).

    A module-level class with plain attributes, so the Trainer can pickle its arguments into a checkpoint.
    """

    def __init__(self, in_batch_negatives: dict[int, bool], group_by_length: bool) -> None:
        self.in_batch_negatives = in_batch_negatives  # id(dataset) -> its loss has in-batch negatives
        self.group_by_length = group_by_length

    def __call__(self, dataset: Any, batch_size: int, drop_last: bool, valid_label_columns: list[str] | None = None,
                 generator: torch.Generator | None = None, seed: int = 0) -> Any:
        if id(dataset) not in self.in_batch_negatives:
            raise RuntimeError("the Trainer asked for a batch sampler of a dataset it was not given (did "
                               "sentence-transformers start copying the datasets of a DatasetDict?)")
        unique = self.in_batch_negatives[id(dataset)]
        kwargs: dict[str, Any] = {"batch_size": batch_size, "drop_last": drop_last,
                                  "valid_label_columns": valid_label_columns, "generator": generator, "seed": seed}
        if self.group_by_length:
            return (UniqueTextBatchSampler if unique else LengthGroupedBatchSampler)(dataset, **kwargs)
        if unique:
            return NoDuplicatesBatchSampler(dataset, **kwargs)
        return DefaultBatchSampler(RandomSampler(dataset, generator=generator), **kwargs)


def _offsets(dataset: Any) -> list[int]:
    """Where each dataset of a ConcatDataset starts in it."""
    return [0, *accumulate(len(part) for part in dataset.datasets)]


def _steps_of(multi: Any, world: int) -> tuple[list[int], list[list[list[list[int]]]]]:
    """A multi-dataset sampler's epoch, seeded as sentence-transformers seeds it: where each dataset starts, and each
    dataset's batches cut into steps."""
    if multi.generator is not None and multi.seed is not None:
        multi.generator.manual_seed(multi.seed + multi.epoch)
    return _offsets(multi.dataset), [_full_steps(sampler, world) for sampler in multi.batch_samplers]


def _full_steps(sampler: Any, world: int) -> list[list[list[int]]]:
    """The sampler's batches cut into steps of ``world`` consecutive batches; a last, short step is dropped: it would
    put batches of two datasets into one step."""
    batches = list(sampler)
    return [batches[i:i + world] for i in range(0, len(batches) - world + 1, world)]


class StepProportionalBatchSampler(ProportionalBatchSampler):
    """sentence-transformers' proportional choice of dataset, made per step instead of per batch.

    accelerate deals consecutive batches to the ranks of one step. Drawn per batch, the ranks of one step would get
    batches of different datasets: one rank in SoftmaxLoss, another in MultipleNegativesRankingLoss, which gathers
    embeddings from all ranks while the other never joins that all-gather. Here each step's ``world`` batches come
    from one dataset; with one process the order is exactly sentence-transformers'.
    """

    def __iter__(self) -> Iterator[list[int]]:
        world = _world_size()
        if world == 1:
            yield from super().__iter__()
            return
        offsets, steps = _steps_of(self, world)
        which = [index for index, own in enumerate(steps) for _ in own]
        taken = [iter(own) for own in steps]
        for index in SubsetRandomSampler(which, generator=self.generator):
            for batch in next(taken[index]):
                yield [i + offsets[index] for i in batch]

    def __len__(self) -> int:
        world = _world_size()
        return sum(len(sampler) // world * world for sampler in self.batch_samplers)


class StepRoundRobinBatchSampler(RoundRobinBatchSampler):
    """sentence-transformers' round robin over the datasets, one step (``world`` batches) at a time; see
    :class:`StepProportionalBatchSampler` for why."""

    def __iter__(self) -> Iterator[list[int]]:
        world = _world_size()
        if world == 1:
            yield from super().__iter__()
            return
        offsets, steps = _steps_of(self, world)
        for round_ in zip(*steps, strict=False):
            for index, step in enumerate(round_):
                for batch in step:
                    yield [i + offsets[index] for i in batch]

    def __len__(self) -> int:
        world = _world_size()
        return min(len(sampler) // world for sampler in self.batch_samplers) * world * len(self.batch_samplers)


MULTI_DATASET_SAMPLER_CLASSES = {"proportional": StepProportionalBatchSampler,
                                 "round_robin": StepRoundRobinBatchSampler}
