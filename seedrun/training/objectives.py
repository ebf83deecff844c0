"""How the distillation recipe uses each strategy: one Objective class a strategy, each calling its loss
from seedrun.losses. The table naming them (strategy, loss, state kept) is seedrun.training.strategies,
and its create_objective() is how training builds one.

Each objective sees a step as: the student's and the frozen teacher's normalised embeddings of one
augmented view, the queue of past teacher embeddings, and the batch's dataset indices. Objectives
with parameters of their own (a classifier, prototypes, a momentum student) expose them for the
optimiser and the checkpoint.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seedrun.losses import (KMeansLoss, KMeansTargets, OnlineClusteringLoss, binary_contrastive_loss, l2_loss,
                            seed_loss, seed_mocov2_loss)
from seedrun.training.queue import EmbeddingQueue
from seedrun.training.distributed import concat_all_gather


@torch.no_grad()
def momentum_update(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * source, parameter by parameter (MoCo's key encoder)."""
    for param_k, param_q in zip(target.parameters(), source.parameters()):
        param_k.mul_(momentum).add_(param_q.detach(), alpha=1 - momentum)


class LossWithState(nn.Module):
    """A loss that may keep state of its own (a queue, a momentum copy, pseudo-labels): the training loop
    calls after_step() after each optimiser step and checkpoints extra_state() beside state_dict()."""

    def after_step(self) -> None:
        pass

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass


class Objective(LossWithState):
    """Base: no parameters of its own, nothing to do before or after a step."""

    def __init__(self, d: dict[str, Any] | None = None, **_):
        super().__init__()

    def prepare(self, teacher_embeddings: Callable[[], Tensor]) -> None:
        """Called once before training (k-means needs the teacher's view of the whole training set)."""

    def forward(self, z_student: Tensor, z_teacher: Tensor, queue: Tensor, indices: Tensor,
                another_view: Callable[[], Tensor]) -> Tensor:
        raise NotImplementedError


class SEED(Objective):
    def __init__(self, d: dict[str, Any], **_):
        super().__init__()
        self.tau_student, self.tau_teacher = d["tau_student"], d["tau_teacher"]

    def forward(self, z_student, z_teacher, queue, indices, another_view):
        return seed_loss(z_student, z_teacher, queue, self.tau_student, self.tau_teacher)


class BinaryContrastive(Objective):
    def __init__(self, d: dict[str, Any], **_):
        super().__init__()
        self.tau = d["tau_student"]

    def forward(self, z_student, z_teacher, queue, indices, another_view):
        return binary_contrastive_loss(z_student, z_teacher, queue, self.tau)


class L2(Objective):
    def forward(self, z_student, z_teacher, queue, indices, another_view):
        return l2_loss(z_student, z_teacher)


class KMeans(Objective):
    """Pseudo-labels from k-means on the teacher's embeddings of the (un-augmented) training set."""

    def __init__(self, d: dict[str, Any], dim: int, seed: int, **_):
        super().__init__()
        self.k, self.iterations, self.seed = d["kmeans_k"], d["kmeans_iterations"], seed
        self.classify = KMeansLoss(dim, self.k)
        self.targets: KMeansTargets | None = None

    def prepare(self, teacher_embeddings):
        if self.targets is None:
            self.targets = KMeansTargets.fit(teacher_embeddings(), self.k, self.iterations, self.seed)

    def forward(self, z_student, z_teacher, queue, indices, another_view):
        return self.classify(z_student, self.targets[indices].to(z_student.device))

    def extra_state(self):
        return {"kmeans": self.targets.state_dict()}

    def load_extra_state(self, state):
        self.targets = KMeansTargets.from_state_dict(state["kmeans"])


class OnlineClustering(Objective):
    def __init__(self, d: dict[str, Any], dim: int, seed: int, **_):
        super().__init__()
        self.cluster = OnlineClusteringLoss(dim, d["prototypes"], d["tau_student"], d["sinkhorn_epsilon"],
                                            d["sinkhorn_iterations"], torch.Generator().manual_seed(seed))

    def forward(self, z_student, z_teacher, queue, indices, another_view):
        return self.cluster(z_student, z_teacher, queue)

    def after_step(self):
        self.cluster.normalize_prototypes()


class SEEDMoCoV2(Objective):
    """SEED plus the student's own MoCo-v2 loss: a momentum copy of the student encodes a second view."""

    def __init__(self, d: dict[str, Any], dim: int, seed: int, student: nn.Module, **_):
        super().__init__()
        self.d = d
        self._student = [student]  # in a list, not a submodule: the optimiser already has its parameters
        self.momentum_student = [copy.deepcopy(student).requires_grad_(False)]  # in a list: not a submodule
        self.student_queue = EmbeddingQueue(d["queue_size"], dim, torch.Generator().manual_seed(seed + 1))

    def forward(self, z_student, z_teacher, queue, indices, another_view):
        momentum = self.momentum_student[0]
        momentum_update(momentum, self._student[0], self.d["moco_momentum"])
        with torch.no_grad():
            key = F.normalize(momentum(another_view()).float(), dim=1)
        self._last_key = key
        return seed_mocov2_loss(z_student, z_teacher, queue, self.d["tau_student"], self.d["tau_teacher"],
                                z_student, key, self.student_queue.embeddings.to(key.device), self.d["moco_tau"],
                                self.d["moco_weight"])

    def after_step(self):
        self.student_queue.push(concat_all_gather(self._last_key).cpu())  # every rank's keys, in rank order

    def extra_state(self):
        return {"momentum_student": self.momentum_student[0].state_dict(), "student_queue": self.student_queue.state_dict()}

    def load_extra_state(self, state):
        self.momentum_student[0].load_state_dict(state["momentum_student"])
        self.student_queue.load_state_dict(state["student_queue"])
