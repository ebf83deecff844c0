"""Deterministic, resumable global batches for the stream loader, cut as the in-memory loader cuts them.

An epoch's order is the permutation `seedrun.data.sampling.epoch_order(n, seed, epoch)` (the one the
in-memory loader uses). Global batch t of an epoch is order[t*B:(t+1)*B], B the global batch (the
rank's batch x the world size), drop_last as the official SEED code does; rank r of W takes part r of
it, order[t*B + r*b : t*B + (r+1)*b] with b = B / W. So step t reads the same images whatever the number
of processes: 2 ranks and 1 process train on the same global batches, and a run checkpointed at step t
on one world size resumes on another at global batch t, neither repeating nor skipping an image. (Each
rank reading a contiguous 1/W of the epoch, as before, made global batch t depend on W.) A run resumed
at step p of an epoch starts at global batch p: the consumed samples are skipped by index, never read
or decoded.

Each sampled item is (sample index, epoch): the dataset seeds a sample's augmentation from
(seed, epoch, index, view), so the worker that happens to decode it does not matter.
"""

from __future__ import annotations

from typing import Iterator

from seedrun.data.sampling import epoch_order


def rank_part(n: int, seed: int, epoch: int, step: int, batch_size: int, rank: int = 0, world: int = 1) -> list[int]:
    """The sample indices rank `rank` of `world` reads at step `step` of `epoch`: part `rank` of global
    batch `step`, `batch_size` being the rank's batch."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in 0..{world - 1}")
    first = step * batch_size * world + rank * batch_size
    return epoch_order(n, seed, epoch)[first:first + batch_size].tolist()


class ShardedBatchSampler:
    """A DataLoader batch_sampler over one rank's part of each global batch; set_epoch(epoch, start)
    before iterating. batch_size is the rank's. Yields lists of (index, epoch)."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in 0..{world - 1}")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch, self.start = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        """Whole global batches in an epoch: n // B, as the in-memory loader and one process count them."""
        return self.n // (self.batch_size * self.world)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return max(0, self.steps_per_epoch - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = epoch_order(self.n, self.seed, self.epoch).tolist()
        b, global_batch = self.batch_size, self.batch_size * self.world
        for step in range(self.start, self.steps_per_epoch):
            first = step * global_batch + self.rank * b
            yield [(index, self.epoch) for index in order[first:first + b]]


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
