"""Distillation strategies under several processes (issue 25 item 7), gloo on the CPU: 2 ranks, each with
its half of a global batch, compute what one process computes on the whole batch.

Compared in float64. What differs between the layouts is only the order of a few sums (the batch mean
of 4 rows and then of 2 ranks, against a mean of 8 rows): measured 0 for the loss and at most 3.4e-16
for the gradients here, so 1e-12 is a bound with three orders to spare; a rank-local Sinkhorn (the
defect this replaces) is off by 8e-3 in the loss."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from gloo_ranks import spawn

GLOBAL, DIM, QUEUE = 8, 5, 4
TOL = 1e-12  # float64; see the module's docstring
ONLINE = {"strategy": "online_clustering", "prototypes": 6, "tau_student": 0.1, "sinkhorn_epsilon": 0.05,
          "sinkhorn_iterations": 3}


def _batch():
    """A global batch of student and teacher embeddings, and the queue every rank keeps."""
    g = torch.Generator().manual_seed(3)
    z_student = F.normalize(torch.randn(GLOBAL, DIM, generator=g, dtype=torch.float64), dim=1)
    # teacher embeddings close to a few directions, so that Sinkhorn's equipartition matters
    z_teacher = F.normalize(torch.randn(3, DIM, generator=g, dtype=torch.float64)[torch.arange(GLOBAL) % 3]
                            + 0.3 * torch.randn(GLOBAL, DIM, generator=g, dtype=torch.float64), dim=1)
    queue = F.normalize(torch.randn(QUEUE, DIM, generator=g, dtype=torch.float64), dim=1)
    return z_student, z_teacher, queue


def _online_step(rows: slice):
    """The online_clustering objective's loss on `rows` of the global batch, and the gradients of the
    student embeddings and of the prototypes, as the recipe builds and calls it."""
    from seedrun.training.strategies import create_objective

    z_student, z_teacher, queue = _batch()
    objective = create_objective(ONLINE, DIM, 0, student=None).double()
    mine = z_student[rows].clone().requires_grad_(True)
    loss = objective(mine, z_teacher[rows], queue, torch.arange(GLOBAL)[rows], lambda: None)
    loss.backward()
    return loss.detach(), mine.grad, objective.cluster.prototypes.grad


def _online_ranks(rank, world, out):
    part = GLOBAL // world
    loss, student_grad, prototype_grad = _online_step(slice(rank * part, (rank + 1) * part))
    torch.save({"loss": loss, "student_grad": student_grad, "prototype_grad": prototype_grad},
               Path(out) / f"online{rank}.pt")


def test_online_clustering_on_two_ranks_is_one_process_on_the_global_batch(tmp_path):
    spawn(_online_ranks, 2, tmp_path, str(tmp_path))
    ranks = [torch.load(tmp_path / f"online{r}.pt", weights_only=True) for r in (0, 1)]
    loss, student_grad, prototype_grad = _online_step(slice(None))
    # what the recipe records (ranks.mean) and what DDP / average_gradients apply: the ranks' mean
    assert abs(sum(r["loss"] for r in ranks) / 2 - loss) < TOL
    assert torch.allclose(torch.cat([r["student_grad"] for r in ranks]) / 2, student_grad, rtol=0, atol=TOL)
    assert torch.allclose(sum(r["prototype_grad"] for r in ranks) / 2, prototype_grad, rtol=0, atol=TOL)
    # and the defect this replaces: Sinkhorn on each rank's half alone gives other codes, another loss
    from seedrun.losses.online_clustering import online_clustering_loss
    from seedrun.training.strategies import create_objective

    z_student, z_teacher, queue = _batch()
    prototypes = create_objective(ONLINE, DIM, 0, student=None).double().cluster.prototypes.detach()
    local = sum(online_clustering_loss(z_student[h], z_teacher[h], prototypes, 0.1, 0.05, 3, queue)
                for h in (slice(0, 4), slice(4, 8))) / 2
    assert abs(local - loss) > 1e-3
