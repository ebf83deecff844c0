"""The FIFO queue of past teacher (or key) embeddings that SEED and MoCo contrast against."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class EmbeddingQueue:
    """K embeddings of size dim, oldest overwritten first; starts as random unit vectors (official code)."""

    def __init__(self, size: int, dim: int, generator: torch.Generator | None = None) -> None:
        self.embeddings = F.normalize(torch.randn(size, dim, generator=generator), dim=1)
        self.pointer = 0

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def push(self, batch: Tensor) -> None:
        """Write a batch at the pointer and advance it; K divisible by the batch keeps writes contiguous."""
        n = batch.shape[0]
        size = len(self)
        index = (torch.arange(n) + self.pointer) % size
        self.embeddings[index] = batch.detach().to(self.embeddings.dtype)
        self.pointer = (self.pointer + n) % size

    def to(self, device: torch.device) -> "EmbeddingQueue":
        self.embeddings = self.embeddings.to(device)
        return self

    def state_dict(self) -> dict:
        return {"embeddings": self.embeddings.cpu(), "pointer": self.pointer}

    def load_state_dict(self, state: dict) -> None:
        self.embeddings = state["embeddings"].to(self.embeddings.device)
        self.pointer = int(state["pointer"])
