"""The order of an epoch and the random stream of a step, each seeded so that a run resumed at step s
draws exactly what an uninterrupted run would have drawn: an epoch's permutation from (seed, epoch),
a step's augmentation from (seed, step, view).

Stream seeds come from `stream_seed`, a SplitMix64 mix of the whole tuple: a linear formula such as
(seed * P + step) * 4 + view gives step s view 4 the stream of step s + 1 view 0 once a run asks for
more views than the multiplier (SEED's small patches are views 2-7). Absorbing one part at a time
through a bijection of 64-bit integers keeps tuples that differ only in their last part apart for sure
and any others apart but for a 2^-64 chance, whatever the number of views. The stream loader
(seedrun.data.stream) seeds each image's views from the same function.
"""

from __future__ import annotations

import torch

_MASK = 2 ** 64 - 1
# One tag per kind of stream, so that a step's batch stream never equals an image's stream.
STEP_STREAM, SAMPLE_STREAM = 1, 2


def _splitmix64(x: int) -> int:
    """SplitMix64's finaliser (Steele et al. 2014): a bijection of 64-bit integers that mixes every bit."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def stream_seed(*parts: int) -> int:
    """A 64-bit seed for torch's generators from a tuple of integers (negative ones taken mod 2^64)."""
    h = _splitmix64(len(parts))
    for part in parts:
        h = _splitmix64(h ^ (int(part) & _MASK))
    return h


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def step_generator(seed: int, step: int, view: int = 0) -> torch.Generator:
    """The generator a step's view of the whole batch is drawn from (the memory loader)."""
    return torch.Generator().manual_seed(stream_seed(STEP_STREAM, seed, step, view))
