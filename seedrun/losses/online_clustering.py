"""Online-clustering distillation: the student predicts the teacher's Sinkhorn cluster assignment.

SEED paper (Fang et al., ICLR 2021), distillation-strategy baselines; the assignment is SwAV's
(Caron et al., NeurIPS 2020, official swav/main_swav.py `distributed_sinkhorn`). With learnable
prototypes C (P, dim), normalised, and L2-normalised embeddings z_S, z_T:

    Q   = sinkhorn(z_T C^T; epsilon, iterations)          (no gradient; rows sum to 1)
    L   = -(1/N) sum_i sum_p Q[i, p] log softmax(z_S_i C^T / tau)[p]

Sinkhorn: Q <- exp(scores / epsilon)^T (P x B), normalised to total 1, then `iterations` times
rows (prototypes) rescaled to sum 1/P and columns (samples) to sum 1/B; finally multiplied by B.
Computed in the log domain (same updates, no underflow for large scores / small epsilon).

Under several processes (DDP) the equipartition is over the global batch, as one process computes it:
every rank all-gathers the teacher embeddings (rank order is the global batch's order), runs the same
Sinkhorn on [global batch; queue] and keeps its own rows. SwAV's `distributed_sinkhorn` all-reduces the
row and column sums instead; gathering the (B, dim) embeddings costs as little at these sizes and runs
the very operations one process runs, so 2 ranks give 1 process's codes bit for bit
(tests/test_ddp_strategies.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from seedrun.losses.precision import fp32


@torch.no_grad()
@fp32
def sinkhorn(scores: Tensor, epsilon: float = 0.05, iterations: int = 3) -> Tensor:
    """SwAV's equipartitioned soft codes for (B, P) scores; each row of the (B, P) result sums to 1."""
    if epsilon <= 0 or iterations < 1:
        raise ValueError(f"need epsilon > 0 and iterations >= 1, got {epsilon} and {iterations}")
    dtype = scores.dtype
    scores = scores.detach().float() if dtype in (torch.float16, torch.bfloat16) else scores.detach()
    # Run in the log domain: the same updates as SwAV's, but rows whose scores are all far below the
    # maximum do not underflow to 0 (which would give 0/0).
    log_q = (scores / epsilon).T  # P x B
    num_prototypes, batch = log_q.shape
    log_q = log_q - torch.logsumexp(log_q.flatten(), dim=0)
    for _ in range(iterations):
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(num_prototypes)
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(batch)
    q = torch.exp(log_q)
    return (q * batch).T.to(dtype)


@fp32
def online_clustering_loss(
    z_student: Tensor,
    z_teacher: Tensor,
    prototypes: Tensor,
    tau: float = 0.1,
    epsilon: float = 0.05,
    iterations: int = 3,
    queue: Tensor | None = None,
    first_row: int = 0,
) -> Tensor:
    """Cross-entropy of the student's prototype softmax against the teacher's Sinkhorn codes.

    (N, dim) student embeddings, (M, dim) teacher embeddings, (P, dim) prototypes (normalised here). An
    optional (K, dim) queue of past teacher embeddings joins the Sinkhorn problem (SwAV's queue), so
    equipartition is over M + K. M = N in one process; under several, z_teacher is the global batch
    and z_student its rows first_row .. first_row + N (this rank's), the loss their mean.
    """
    if tau <= 0:
        raise ValueError(f"temperature must be > 0, got tau={tau}")
    n = z_student.shape[0]
    if not 0 <= first_row <= z_teacher.shape[0] - n:
        raise ValueError(f"rows {first_row}..{first_row + n} of the student are not in the {z_teacher.shape[0]} "
                         f"teacher embeddings")
    prototypes = F.normalize(prototypes, dim=1)
    with torch.no_grad():
        teacher = z_teacher.detach()
        if queue is not None:
            teacher = torch.cat([teacher, queue.to(teacher.dtype)], dim=0)
        codes = sinkhorn(teacher @ prototypes.detach().T, epsilon, iterations)[first_row:first_row + n]
    log_p = F.log_softmax(z_student @ prototypes.T / tau, dim=1)
    return -(codes * log_p).sum(dim=1).mean()


class OnlineClusteringLoss(nn.Module):
    """Owns the learnable (P, dim) prototypes; call normalize_prototypes() after each step as SwAV does."""

    def __init__(
        self,
        dim: int = 128,
        num_prototypes: int = 3000,
        tau: float = 0.1,
        epsilon: float = 0.05,
        iterations: int = 3,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(F.normalize(torch.randn(num_prototypes, dim, generator=generator), dim=1))
        self.tau = tau
        self.epsilon = epsilon
        self.iterations = iterations

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        self.prototypes.copy_(F.normalize(self.prototypes, dim=1))

    def forward(self, z_student: Tensor, z_teacher: Tensor, queue: Tensor | None = None) -> Tensor:
        """This rank's loss; under several processes its codes come from Sinkhorn over the global batch.
        DDP and the recipe average the ranks' gradients, so with equal local batches (the recipe splits
        the global batch evenly) the step is one process's on the global batch."""
        teacher, first_row = _global_batch(z_teacher)
        return online_clustering_loss(
            z_student, teacher, self.prototypes, self.tau, self.epsilon, self.iterations, queue, first_row
        )


def _global_batch(z_teacher: Tensor) -> tuple[Tensor, int]:
    """Every rank's teacher embeddings in rank order, and where this rank's start; one process: its own."""
    from seedrun.training import distributed

    ranks = distributed.current()
    if not ranks.active:
        return z_teacher, 0
    gathered = distributed.concat_all_gather(z_teacher.detach())
    # the all-gather needs equal batches on every rank (the recipe's split_batch); rows are in rank order
    return gathered, ranks.rank * z_teacher.shape[0]
