"""Distillation strategies under several processes (issue 25 item 7), gloo on the CPU: 2 ranks, each with
its half of a global batch, compute what one process computes on the whole batch.

Compared in float64. What differs between the layouts is only the order of a few sums: online
clustering's batch mean of 4 rows and then of 2 ranks against a mean of 8 rows (measured: 0 for the
loss, at most 3.4e-16 for the gradients), K-Means' teacher features computed in other batches (the
centroids measured at most 2.2e-16 apart, the labels equal). 1e-12 bounds both with three orders to
spare; a rank-local Sinkhorn (the defect this replaces) is off by 8e-3 in the loss."""

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


# ---------------------------------------------------------------- K-Means: the teacher's features, sharded

K, ITERATIONS = 6, 10


class Float64Teacher(torch.nn.Module):
    """A frozen float64 network that counts the images it embeds (each rank must embed only its block)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 8)).double()
        self.seen = 0

    def forward(self, x):
        self.seen += len(x)
        return self.net(x.double())


def _tiny_train():
    from conftest import TINY_BASE
    from seedrun.data.loader import open_split
    from seedrun.sweeps.compose import compose_config

    return open_split(compose_config(TINY_BASE)["data"], "train", None, lambda message: None)


def _kmeans(rank, world, out):
    from seedrun.evaluate.sharded_features import teacher_features
    from seedrun.losses import KMeansTargets

    teacher, train = Float64Teacher(), _tiny_train()
    features = teacher_features(teacher, train, torch.device("cpu"), batch_size=64)
    targets = KMeansTargets.fit(features, K, ITERATIONS, seed=0)
    torch.save({"seen": teacher.seen, "gathered": features is not None, **targets.state_dict()},
               Path(out) / f"kmeans{rank}.pt")


def test_kmeans_features_are_embedded_once_across_two_ranks_and_cluster_as_one_process(tmp_path):
    from seedrun.evaluate.sharded_features import teacher_features
    from seedrun.losses import KMeansTargets

    spawn(_kmeans, 2, tmp_path, str(tmp_path))
    ranks = [torch.load(tmp_path / f"kmeans{r}.pt", weights_only=True) for r in (0, 1)]
    teacher, train = Float64Teacher(), _tiny_train()
    one = KMeansTargets.fit(teacher_features(teacher, train, torch.device("cpu"), batch_size=64), K, ITERATIONS, seed=0)
    # each rank embedded its half of the 320 images, not the whole set; rank 0 alone holds them all
    assert [r["seen"] for r in ranks] == [len(train) // 2] * 2 and teacher.seen == len(train)
    assert [r["gathered"] for r in ranks] == [True, False]
    # every rank trains with rank 0's pseudo-labels, and they are one process's (float64: see TOL)
    assert torch.equal(ranks[0]["labels"], ranks[1]["labels"]) and torch.equal(ranks[0]["centroids"], ranks[1]["centroids"])
    assert torch.equal(ranks[0]["labels"], one.labels) and ranks[0]["labels"].dtype == torch.long
    assert torch.allclose(ranks[0]["centroids"], one.centroids, rtol=0, atol=TOL)
    assert len(set(one.labels.tolist())) == K


def test_an_unreadable_training_image_takes_no_part_in_kmeans(tmp_path):
    """Its features are a row of NaN, not another image's: k-means runs on the others, its pseudo-label is
    IGNORE, and the loss leaves it out."""
    from stream_trees import FASHION, write_tree

    if not FASHION.exists():
        import pytest

        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    from seedrun.data.loader import open_split
    from seedrun.evaluate.sharded_features import teacher_features
    from seedrun.losses import KMeansTargets, kmeans
    from seedrun.losses.kmeans import IGNORE, kmeans_loss
    from seedrun.sweeps.compose import compose_config

    root = write_tree(tmp_path / "tree", 40, 10)
    broken = sorted((root / "train").glob("*/*.JPEG"))[5]
    broken.write_bytes(b"not a JPEG")
    cfg = compose_config(["data=imagenet", f"data.root={root}", "data.image_size=16", "data.loader=stream",
                          "data.workers=0"])["data"]
    train = open_split(cfg, "train", log=lambda _: None)
    index = [train.files.path(i) for i in range(len(train))].index(str(broken))
    features = teacher_features(Float64Teacher(), train, torch.device("cpu"), batch_size=16)
    assert features.shape[0] == 40 and torch.isnan(features[index]).all()
    assert torch.isfinite(torch.cat([features[:index], features[index + 1:]])).all()
    targets = KMeansTargets.fit(features, 4, 5, seed=0)
    _, others = kmeans(torch.cat([features[:index], features[index + 1:]]), 4, 5, seed=0)
    assert targets.labels[index] == IGNORE
    assert torch.equal(torch.cat([targets.labels[:index], targets.labels[index + 1:]]), others)
    logits = torch.randn(2, 4, dtype=torch.float64)
    assert torch.equal(kmeans_loss(logits, torch.tensor([IGNORE, 2])), kmeans_loss(logits[1:], torch.tensor([2])))
