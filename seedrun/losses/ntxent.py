"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al., ICML 2020).

For N images with two views each, z = normalize([z1; z2]) holds 2N embeddings; view a's positive
is its pair p(a) (a +- N) and the other 2N - 2 embeddings are its negatives:

    L = -(1/2N) sum_a log exp(z_a . z_p(a) / tau) / sum_{b != a} exp(z_a . z_b / tau)

(official simclr objective.py, lightly NTXentLoss without a memory bank).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from seedrun.losses.precision import fp32


@fp32
def ntxent_loss(z1: Tensor, z2: Tensor, tau: float = 0.5) -> Tensor:
    """Mean NT-Xent over the 2N views of (N, dim) view-1 and view-2 embeddings (normalised here)."""
    if tau <= 0:
        raise ValueError(f"temperature must be > 0, got tau={tau}")
    if z1.shape != z2.shape:
        raise ValueError(f"views must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    logits = z @ z.T / tau
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    labels = (torch.arange(2 * n, device=z.device) + n) % (2 * n)
    return F.cross_entropy(logits, labels)


class NTXentLoss(nn.Module):
    def __init__(self, tau: float = 0.5) -> None:
        super().__init__()
        self.tau = tau

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return ntxent_loss(z1, z2, self.tau)
