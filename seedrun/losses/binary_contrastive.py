"""Binary contrastive distillation: InfoNCE with the teacher's embedding of the same image as the positive.

SEED paper (Fang et al., ICLR 2021), distillation-strategy baselines; the paper's exact definition
could not be read, so this follows the description "student embedding as query, the same image's
teacher embedding as positive, queue entries as negatives". For L2-normalised z_S, z_T and a queue D:

    L = -(1/N) sum_i log exp(z_S_i . z_T_i / tau) / (exp(z_S_i . z_T_i / tau) + sum_d exp(z_S_i . d / tau))

This is SEED with a one-hot target on the instance's own teacher embedding (tau_T -> 0).
"""

from __future__ import annotations

from torch import Tensor, nn

from seedrun.losses.infonce import infonce_loss
from seedrun.losses.precision import fp32


@fp32
def binary_contrastive_loss(z_student: Tensor, z_teacher: Tensor, queue: Tensor, tau: float) -> Tensor:
    """Mean InfoNCE over the batch: (N, dim) student queries, (N, dim) teacher positives, (K, dim) queue."""
    if tau <= 0:
        raise ValueError(f"temperature must be > 0, got tau={tau}")
    return infonce_loss(z_student, z_teacher, queue, tau)


class BinaryContrastiveLoss(nn.Module):
    def __init__(self, tau: float = 0.2) -> None:
        super().__init__()
        self.tau = tau

    def forward(self, z_student: Tensor, z_teacher: Tensor, queue: Tensor) -> Tensor:
        return binary_contrastive_loss(z_student, z_teacher, queue, self.tau)
