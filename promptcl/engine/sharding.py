"""Which samples each process reads, so that N processes see the batches one process would.

Training and evaluation read a dataset in the order of a seeded shuffle, cut into *global*
batches; process r of W reads the r-th contiguous slice of every global batch (``np.array_split``
sizes: they differ by at most one). One process with global batch B and W processes with B/W
each therefore see the same global batches, in the same order, whatever W is.

The shuffled order is the one torch's own ``DataLoader(shuffle=True, generator=...)`` produces
with a generator seeded by the same seed (``shuffled_order``), so a single process reads exactly
what a plain shuffled loader would.

End-of-task statistics read the task's data unshuffled, in contiguous blocks
(``contiguous_shard``): concatenating the blocks in rank order (``all_gather_cat``) gives back the
dataset in order.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler


def shuffled_order(n: int, seed: int) -> list[int]:
    """The order in which ``DataLoader(shuffle=True, generator=Generator().manual_seed(seed))``
    reads ``n`` samples (the loader draws its workers' base seed from the generator, then the
    sampler's permutation): read through torch's own loader, so it stays exact across versions."""
    if n == 0:
        return []
    loader = DataLoader(
        range(n), batch_size=n, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    return next(iter(loader)).tolist()


def shard_sizes(n: int, world: int) -> list[int]:
    """How ``n`` consecutive samples are split among ``world`` processes (first ones get more)."""
    return [len(part) for part in np.array_split(np.arange(n), world)]


def contiguous_shard(n: int, world: int, rank: int) -> range:
    """Process ``rank``'s contiguous block of ``range(n)``."""
    sizes = shard_sizes(n, world)
    start = sum(sizes[:rank])
    return range(start, start + sizes[rank])


class ShardedBatches(Sampler[list[int]]):
    """Batch sampler: this process's slice of each global batch of ``order``.

    ``batch_size`` is the global batch. A process whose slice of the (last, short) global batch
    is empty gets, if ``fill_empty``, the batch's first sample with ``share`` 0: every process must
    run a step for DDP's gradient all-reduce, and a weight of 0 keeps that sample out of the
    gradient (see ``share``).
    """

    def __init__(
        self,
        order: list[int],
        batch_size: int,
        world: int = 1,
        rank: int = 0,
        fill_empty: bool = False,
    ):
        self.order, self.batch_size, self.world, self.rank = order, batch_size, world, rank
        self.fill_empty = fill_empty

    def _slices(self) -> list[tuple[int, int, int, int]]:
        """Per global batch: its first position, this rank's slice [start, end) and its size."""
        out = []
        for begin in range(0, len(self.order), self.batch_size):
            size = min(self.batch_size, len(self.order) - begin)
            part = contiguous_shard(size, self.world, self.rank)
            if part or self.fill_empty:
                out.append((begin, begin + part.start, begin + part.stop, size))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        for begin, start, end, _ in self._slices():
            yield self.order[start:end] if end > start else [self.order[begin]]

    def __len__(self) -> int:
        return len(self._slices())

    def shares(self) -> list[float]:
        """Per batch: this rank's real samples / the global batch, times the world size.

        DDP averages gradients over the W ranks; scaling each rank's mean loss by this factor
        makes the average the gradient of the global batch's mean loss, also when the last global
        batch does not split evenly. It is 1 for every evenly split batch, 0 for a filler.
        """
        return [(end - start) * self.world / size for _, start, end, size in self._slices()]

    def positions(self) -> list[int]:
        """Positions in ``order`` of the samples this rank reads for real (no fillers)."""
        return [i for _, start, end, _ in self._slices() for i in range(start, end)]
