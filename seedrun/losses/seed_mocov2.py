"""SEED + MoCo-v2: the SEED distillation loss plus the student's own two-view MoCo-v2 InfoNCE loss.

SEED paper (Fang et al., ICLR 2021), distillation-strategy baselines ("SEED + MoCo-v2"). With the
SEED loss of seedrun.losses.seed and MoCo-v2's InfoNCE (Chen et al., 2020) on the student's query
q (one view) and momentum-encoder key k+ (the other view) against the student's own queue:

    L = L_SEED(z_S, z_T, D_T; tau_S, tau_T) + weight * L_InfoNCE(q, k+, D_S; tau_moco)
"""

from __future__ import annotations

from torch import Tensor, nn

from seedrun.losses.infonce import infonce_loss
from seedrun.losses.seed import seed_loss
from seedrun.losses.precision import fp32


@fp32
def seed_mocov2_loss(
    z_student: Tensor,
    z_teacher: Tensor,
    queue: Tensor,
    tau_student: float,
    tau_teacher: float,
    q_student: Tensor,
    k_student_momentum: Tensor,
    student_queue: Tensor,
    tau_moco: float,
    weight: float = 1.0,
) -> Tensor:
    """SEED loss on (z_student, z_teacher, teacher queue) + weight * InfoNCE(q, k, student queue)."""
    distill = seed_loss(z_student, z_teacher, queue, tau_student, tau_teacher)
    if weight == 0:
        return distill
    return distill + weight * infonce_loss(q_student, k_student_momentum, student_queue, tau_moco)


class SEEDMoCoV2Loss(nn.Module):
    def __init__(
        self, tau_student: float = 0.2, tau_teacher: float = 0.01, tau_moco: float = 0.2, weight: float = 1.0
    ) -> None:
        super().__init__()
        self.tau_student = tau_student
        self.tau_teacher = tau_teacher
        self.tau_moco = tau_moco
        self.weight = weight

    def forward(
        self,
        z_student: Tensor,
        z_teacher: Tensor,
        queue: Tensor,
        q_student: Tensor,
        k_student_momentum: Tensor,
        student_queue: Tensor,
    ) -> Tensor:
        return seed_mocov2_loss(
            z_student, z_teacher, queue, self.tau_student, self.tau_teacher,
            q_student, k_student_momentum, student_queue, self.tau_moco, self.weight,
        )
