"""l2-distance distillation: squared Euclidean distance between normalised student and teacher embeddings.

SEED paper (Fang et al., ICLR 2021), distillation-strategy baselines; SimReg (Navaneet et al., BMVC
2022) regresses the teacher's feature the same way (with an MLP predictor on the student). With
z_S, z_T L2-normalised (done here, so raw embeddings may be passed):

    L = (1/N) sum_i ||z_S_i - z_T_i||^2 = (1/N) sum_i (2 - 2 z_S_i . z_T_i)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from seedrun.losses.precision import fp32


@fp32
def l2_loss(z_student: Tensor, z_teacher: Tensor) -> Tensor:
    """Mean over the batch of ||normalize(z_S) - normalize(z_T)||^2 for (N, dim) embeddings."""
    z_student = F.normalize(z_student, dim=1)
    z_teacher = F.normalize(z_teacher, dim=1)
    return (z_student - z_teacher).pow(2).sum(dim=1).mean()


class L2Loss(nn.Module):
    def forward(self, z_student: Tensor, z_teacher: Tensor) -> Tensor:
        return l2_loss(z_student, z_teacher)
