"""SwAV's swapped-prediction loss (Caron et al., NeurIPS 2020; official swav/main_swav.py).

For V views with prototype scores s_v = z_v C^T (B, P) and assignment views A (crops_for_assign):

    q_a = sinkhorn(s_a; epsilon, iterations)                       (no gradient)
    L   = (1/|A|) sum_{a in A} (1/(V-1)) sum_{v != a} -(1/B) sum_i sum_p q_a[i, p] log softmax(s_v / tau)[i, p]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seedrun.losses.online_clustering import sinkhorn
from seedrun.losses.precision import fp32


@fp32
def swav_loss(
    scores_views: Sequence[Tensor],
    tau: float = 0.1,
    epsilon: float = 0.05,
    sinkhorn_iterations: int = 3,
    crops_for_assign: Sequence[int] = (0, 1),
) -> Tensor:
    """Swapped prediction over a list of (B, P) prototype scores, one per view (at least two)."""
    views = len(scores_views)
    if views < 2:
        raise ValueError(f"need at least two views, got {views}")
    if tau <= 0:
        raise ValueError(f"temperature must be > 0, got tau={tau}")
    if not crops_for_assign or any(not 0 <= a < views for a in crops_for_assign):
        raise ValueError(f"crops_for_assign {tuple(crops_for_assign)} must index the {views} views")
    log_probs = [F.log_softmax(s / tau, dim=1) for s in scores_views]
    total = 0
    for a in crops_for_assign:
        with torch.no_grad():
            codes = sinkhorn(scores_views[a], epsilon, sinkhorn_iterations)
        subloss = 0
        for v in range(views):
            if v != a:
                subloss = subloss - (codes * log_probs[v]).sum(dim=1).mean()
        total = total + subloss / (views - 1)
    return total / len(crops_for_assign)


class SwAVLoss(nn.Module):
    def __init__(
        self,
        tau: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        crops_for_assign: Sequence[int] = (0, 1),
    ) -> None:
        super().__init__()
        self.tau = tau
        self.epsilon = epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.crops_for_assign = tuple(crops_for_assign)

    def forward(self, scores_views: Sequence[Tensor]) -> Tensor:
        return swav_loss(scores_views, self.tau, self.epsilon, self.sinkhorn_iterations, self.crops_for_assign)
