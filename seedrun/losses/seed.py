"""SEED: soft cross-entropy between teacher and student similarity distributions.

Fang et al., "SEED: Self-supervised Distillation for Visual Representation", ICLR 2021; official
code seed/builder.py and tools/utils.py `soft_cross_entropy`. With D+ = [z_T; queue]:

    p_T = softmax(z_T . D+ / tau_T),   log p_S = log_softmax(z_S . D+ / tau_S)
    L   = -(1/N) sum_i sum_j p_T[i, j] log p_S[i, j]

The instance's own teacher embedding is the first key, so z_T . z_T = 1 is the teacher's
largest logit and a small tau_T makes the target close to one-hot on it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from seedrun.losses.precision import fp32


@fp32
def seed_loss(z_student: Tensor, z_teacher: Tensor, queue: Tensor, tau_student: float, tau_teacher: float) -> Tensor:
    """SEED loss for L2-normalised (N, dim) embeddings and a (K, dim) queue; mean over the batch."""
    if tau_student <= 0 or tau_teacher <= 0:
        raise ValueError(f"temperatures must be > 0, got tau_student={tau_student}, tau_teacher={tau_teacher}")
    own_student = (z_student * z_teacher).sum(dim=1, keepdim=True)
    own_teacher = (z_teacher * z_teacher).sum(dim=1, keepdim=True)
    logits_student = torch.cat([own_student, z_student @ queue.T], dim=1) / tau_student
    logits_teacher = torch.cat([own_teacher, z_teacher @ queue.T], dim=1) / tau_teacher
    target = F.softmax(logits_teacher, dim=1)
    return -(target * F.log_softmax(logits_student, dim=1)).sum(dim=1).mean()


class SEEDLoss(nn.Module):
    def __init__(self, tau_student: float = 0.2, tau_teacher: float = 0.01) -> None:
        super().__init__()
        self.tau_student = tau_student
        self.tau_teacher = tau_teacher

    def forward(self, z_student: Tensor, z_teacher: Tensor, queue: Tensor) -> Tensor:
        return seed_loss(z_student, z_teacher, queue, self.tau_student, self.tau_teacher)
