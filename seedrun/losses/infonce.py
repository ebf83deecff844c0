"""InfoNCE with a queue of negatives, as MoCo (He et al., CVPR 2020) and MoCo-v2 (Chen et al., 2020) use it.

For a query q and its positive key k+ (both L2-normalised) and queue negatives D:
    L = -log exp(q.k+ / tau) / (exp(q.k+ / tau) + sum_d exp(q.d / tau))
i.e. cross-entropy with the positive at index 0 (official moco/builder.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from seedrun.losses.precision import fp32


@fp32
def infonce_loss(query: Tensor, positive: Tensor, queue: Tensor, tau: float) -> Tensor:
    """Mean InfoNCE over the batch for (N, dim) queries and positives and a (K, dim) queue."""
    logits = torch.cat([(query * positive).sum(dim=1, keepdim=True), query @ queue.T], dim=1) / tau
    labels = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    return F.cross_entropy(logits, labels)
