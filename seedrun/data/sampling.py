"""The order of an epoch and the random stream of a step, each seeded so that a run resumed at step s
draws exactly what an uninterrupted run would have drawn: an epoch's permutation from (seed, epoch),
a step's augmentation from (seed, step, view)."""

from __future__ import annotations

import torch


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def step_generator(seed: int, step: int, view: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 4 + view)
