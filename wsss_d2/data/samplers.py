"""Pair sampling for CIAN: each query image goes into the batch with its reference images.

:class:`PairTrainingSampler` is an infinite index stream, like Detectron2's ``TrainingSampler``,
made of groups ``[query, ref_1, ..., ref_R]``:

- ``"common_class"``: every reference shares at least one tag with the query (the paper's
  common-class pairs). The sampler draws one of the query's tags uniformly, then an image
  with that tag uniformly, so rare classes get paired as often as their images are queries.
- ``"random"``: references drawn uniformly from the other images (the paper's ablation).

An image whose classes appear in no other image (or that has no tags) cannot be paired: it is
paired with itself (a second, independently augmented view of the same image; the model then
uses it as its self pair), and the count and the first such file are logged once. With
``strict=True`` (``DATALOADER.PAIR_STRICT``) that is an error naming the file instead.

Distributed training: every process draws the same group stream (shared seed) and keeps every
``world_size``-th group, so groups are never split between processes; the per-process batch must
be a multiple of the group size so that the loader's batches hold whole groups (Detectron2's
loader shards workers by whole batches, which keeps the order).
"""

from __future__ import annotations

import itertools
import logging
from typing import Iterator, Sequence

import torch
from detectron2.utils import comm
from torch.utils.data.sampler import Sampler

logger = logging.getLogger(__name__)

__all__ = ["PairTrainingSampler", "PAIR_MODES"]

PAIR_MODES = ("common_class", "random")


class PairTrainingSampler(Sampler):
    """Infinite stream of dataset indices in groups of ``group_size`` (query + references).

    Args:
        tags: per dataset image, its class ids (any hashable ids; empty = untagged).
        group_size: 1 + references per query (>= 2).
        mode: "common_class" or "random".
        shuffle: queries in a random order each pass (else in dataset order).
        seed: shared by all processes; None draws one with ``comm.shared_random_seed``.
        strict: raise for an image that cannot be paired instead of pairing it with itself.
        names: per image, a name for messages (its file name).
    """

    def __init__(
        self,
        tags: Sequence[Sequence[int]],
        group_size: int = 2,
        mode: str = "common_class",
        shuffle: bool = True,
        seed: int | None = None,
        strict: bool = False,
        names: Sequence[str] | None = None,
    ):
        if mode not in PAIR_MODES:
            raise ValueError(f"DATALOADER.PAIR_SAMPLING must be one of {PAIR_MODES}, got '{mode}'")
        if group_size < 2:
            raise ValueError(f"a pair group needs at least 2 images, got group_size={group_size}")
        if len(tags) == 0:
            raise ValueError("PairTrainingSampler: the dataset is empty")
        self._size = len(tags)
        self._group_size = int(group_size)
        self._mode = mode
        self._shuffle = shuffle
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()
        self._tags = [sorted(set(t)) for t in tags]
        names = list(names) if names is not None else [f"image #{i}" for i in range(self._size)]

        by_class: dict = {}
        for i, ts in enumerate(self._tags):
            for t in ts:
                by_class.setdefault(t, []).append(i)
        self._by_class = by_class
        if mode == "common_class":
            # per image, the tags it shares with at least one other image
            self._pair_tags = [[t for t in ts if len(by_class[t]) > 1] for ts in self._tags]
            lonely = [i for i, ts in enumerate(self._pair_tags) if not ts]
        else:
            self._pair_tags = None
            lonely = list(range(self._size)) if self._size < 2 else []
        self.partnerless = lonely
        if lonely:
            what = (
                f"{len(lonely)} of {self._size} images have no other image sharing a tag "
                f"(first: {names[lonely[0]]}, tags {self._tags[lonely[0]]})"
            )
            if strict:
                raise ValueError(
                    f"{mode} pair sampling: {what}; set DATALOADER.PAIR_STRICT False "
                    "to pair them with themselves"
                )
            logger.warning("%s pair sampling: %s; they are paired with themselves", mode, what)

    def reference(self, i: int, gen: torch.Generator) -> int:
        """One reference for query ``i`` (``i`` itself when it has no partner)."""
        if self._mode == "random":
            if self._size < 2:
                return i
            j = int(torch.randint(self._size - 1, (1,), generator=gen))
            return j + (j >= i)  # uniform over the other images
        tags = self._pair_tags[i]
        if not tags:
            return i
        t = tags[int(torch.randint(len(tags), (1,), generator=gen))]
        members = self._by_class[t]
        while True:  # terminates: the class has another member
            j = members[int(torch.randint(len(members), (1,), generator=gen))]
            if j != i:
                return j

    def groups(self) -> Iterator[list[int]]:
        """The shared infinite group stream (every process draws the same one)."""
        gen = torch.Generator()
        gen.manual_seed(self._seed)
        while True:
            order = (
                torch.randperm(self._size, generator=gen) if self._shuffle else range(self._size)
            )
            for q in order:
                q = int(q)
                yield [q] + [self.reference(q, gen) for _ in range(self._group_size - 1)]

    def __iter__(self) -> Iterator[int]:
        mine = itertools.islice(self.groups(), self._rank, None, self._world_size)
        for group in mine:
            yield from group
