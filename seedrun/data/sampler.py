"""Deterministic, sharded, resumable batch sampling for the stream loader.

An epoch's order is the permutation `seedrun.data.sampling.epoch_order(n, seed, epoch)` (the one the
in-memory loader uses, so one rank reads the same batches either way). With W ranks the first
(n // W) * W positions are cut into W contiguous slices and rank r takes slice r: disjoint, equal
sizes, their union one epoch (less the n mod W left over). A rank's slice is cut into batches with
drop_last, as the official SEED code does. A run resumed at position p (its step within the epoch)
starts at batch p: the consumed samples are skipped by index, never read or decoded.

Each sampled item is (sample index, epoch): the dataset seeds a sample's augmentation from
(seed, epoch, index, view), so the worker that happens to decode it does not matter.
"""

from __future__ import annotations

from typing import Iterator

from seedrun.data.sampling import epoch_order


def shard(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[int]:
    """The sample indices rank `rank` of `world` reads in `epoch`, in order."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in 0..{world - 1}")
    per_rank = n // world
    return epoch_order(n, seed, epoch)[rank * per_rank:(rank + 1) * per_rank].tolist()


class ShardedBatchSampler:
    """A DataLoader batch_sampler over one rank's slice of each epoch; set_epoch(epoch, start) before
    iterating. Yields lists of (index, epoch)."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch, self.start = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return (self.n // self.world) // self.batch_size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return max(0, self.steps_per_epoch - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = shard(self.n, self.seed, self.epoch, self.rank, self.world)
        b = self.batch_size
        for position in range(self.start, self.steps_per_epoch):
            yield [(index, self.epoch) for index in order[position * b:(position + 1) * b]]


class SequentialBatchSampler:
    """Every sample once, in order, in chunks (the last one short): evaluation views. Yields lists of
    (index, -1)."""

    def __init__(self, n: int, batch_size: int):
        self.n, self.batch_size = n, batch_size

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for start in range(0, self.n, self.batch_size):
            yield [(index, -1) for index in range(start, min(self.n, start + self.batch_size))]
