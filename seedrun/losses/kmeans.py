"""K-Means distillation: the student classifies pseudo-labels from k-means on the teacher's features.

SEED paper (Fang et al., ICLR 2021), distillation-strategy baselines; CompRess (Abbasi Koohpayegani
et al., NeurIPS 2020) ran FAISS k-means (16,000 clusters, 20 iterations) on the teacher's normalised
features of the training set once, then trained the student with cross-entropy on the cluster ids:

    y_i = argmax_c  mu_c . t_i / (||mu_c|| ||t_i||)          (spherical k-means, Lloyd iterations)
    L   = -(1/N) sum_i log softmax(W f_S(x_i))[y_i]

Here k-means runs in torch: cosine assignment in chunks (60k x 128 features fit on a laptop),
centroids re-normalised each iteration, an initialisation drawn from a seeded generator, and empty
clusters re-seeded with the points farthest from their centroid, so every one of the k clusters
ends up holding at least one point.

Under several processes the teacher's features are extracted once, each rank embedding its block
(seedrun.evaluate.sharded_features.teacher_features), and k-means runs on rank 0 alone, which hands
its labels and centroids to every rank: the ranks hold the same pseudo-labels, those one process
computes from the same features, even where a GPU's index_add_ would round sums differently on two
ranks. A training image whose features could not be extracted (unreadable: a row of NaN) takes no
part in the clustering and gets the label IGNORE, which the loss leaves out.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from seedrun.losses.precision import fp32

#: the pseudo-label of a training image without features (unreadable): cross-entropy's ignore_index
IGNORE = -100


def _assign(features: Tensor, centroids: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Nearest centroid by cosine for each (normalised) feature: (labels, similarity to it)."""
    labels, sims = [], []
    for chunk in features.split(chunk_size):
        sim, label = (chunk @ centroids.T).max(dim=1)
        labels.append(label)
        sims.append(sim)
    return torch.cat(labels), torch.cat(sims)


def _fill_empty(labels: Tensor, sims: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Move the farthest points of clusters with > 1 member into the empty clusters.

    Returns the new labels and, for each re-seeded cluster, (cluster, point) pairs as a (M, 2) tensor.
    """
    counts = torch.bincount(labels, minlength=k)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if not empty:
        return labels, torch.empty(0, 2, dtype=torch.long)
    labels = labels.clone()
    counts = counts.tolist()
    moves = []
    for point in torch.argsort(sims, stable=True).tolist():  # farthest first
        if not empty:
            break
        source = int(labels[point])
        if counts[source] > 1:
            cluster = empty.pop(0)
            counts[source] -= 1
            counts[cluster] += 1
            labels[point] = cluster
            moves.append((cluster, point))
    return labels, torch.tensor(moves, dtype=torch.long).reshape(-1, 2)


def _centroids(features: Tensor, labels: Tensor, k: int) -> Tensor:
    sums = torch.zeros(k, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features)
    return F.normalize(sums, dim=1)


@torch.no_grad()
def kmeans(
    features: Tensor, k: int, iterations: int = 20, seed: int = 0, chunk_size: int = 4096
) -> tuple[Tensor, Tensor]:
    """Spherical k-means on the rows of (N, dim) features; returns ((k, dim) unit centroids, (N,) labels).

    Deterministic given seed (on CPU; GPU index_add_ may reorder float sums). Every label in
    0..k-1 is used: needs N >= k.
    """
    n = features.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= number of features, got k={k} for {n} features")
    if iterations < 0 or chunk_size < 1:
        raise ValueError(f"need iterations >= 0 and chunk_size >= 1, got {iterations} and {chunk_size}")
    x = F.normalize(features.detach(), dim=1)
    generator = torch.Generator().manual_seed(seed)
    start = torch.randperm(n, generator=generator)[:k].to(x.device)
    centroids = x[start].clone()
    for _ in range(iterations):
        labels, sims = _assign(x, centroids, chunk_size)
        labels, _ = _fill_empty(labels, sims, k)
        centroids = _centroids(x, labels, k)
    labels, sims = _assign(x, centroids, chunk_size)
    labels, moves = _fill_empty(labels, sims, k)
    if moves.numel():
        moves = moves.to(x.device)
        centroids[moves[:, 0]] = x[moves[:, 1]]
    return centroids, labels


@fp32
def kmeans_loss(logits: Tensor, pseudo_labels: Tensor) -> Tensor:
    """Cross-entropy of (N, k) student cluster logits against (N,) k-means pseudo-labels; the mean over
    the batch's images that have one (IGNORE: an image k-means could not see)."""
    return F.cross_entropy(logits, pseudo_labels, ignore_index=IGNORE)


class KMeansTargets:
    """Pseudo-labels of the training set, one per dataset index, from k-means on teacher features."""

    def __init__(self, labels: Tensor, centroids: Tensor) -> None:
        self.labels = labels.long()
        self.centroids = centroids

    @classmethod
    def fit(
        cls, teacher_features: Optional[Tensor], k: int, iterations: int = 20, seed: int = 0, chunk_size: int = 4096
    ) -> "KMeansTargets":
        """k-means on the (N, dim) features, one row per training image (NaN rows: images without
        features, labelled IGNORE). Under several processes rank 0 fits and every rank gets its result;
        the other ranks may pass None (seedrun.evaluate.sharded_features.teacher_features gathers the
        features on rank 0 only)."""
        from seedrun.training import distributed

        def fit_here() -> "KMeansTargets":
            if teacher_features is None:
                raise ValueError("k-means needs the teacher's features on rank 0")
            seen = torch.isfinite(teacher_features).all(dim=1)
            centroids, labels = kmeans(teacher_features[seen], k, iterations, seed, chunk_size)
            all_labels = torch.full((len(teacher_features),), IGNORE, dtype=torch.long, device=labels.device)
            all_labels[seen] = labels
            return cls(all_labels, centroids)

        ranks = distributed.current()
        if not ranks.active:
            return fit_here()
        import torch.distributed as dist

        # minutes on ImageNet: the other ranks wait with the long phase timeout, not a step's
        targets = distributed.on_main("k-means", fit_here, ranks)
        # pickled through the process group: N labels and k centroids, once before training
        shared = [targets.state_dict() if ranks.is_main else None]
        dist.broadcast_object_list(shared, src=0, device=distributed._device())
        return targets if ranks.is_main else cls.from_state_dict(shared[0])

    @property
    def num_clusters(self) -> int:
        return self.centroids.shape[0]

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, indices: Tensor) -> Tensor:
        """Pseudo-labels of the given dataset indices (moved to the indices' device)."""
        return self.labels[indices.to(self.labels.device)].to(indices.device)

    def state_dict(self) -> dict:
        return {"labels": self.labels.cpu(), "centroids": self.centroids.cpu()}

    @classmethod
    def from_state_dict(cls, state: dict) -> "KMeansTargets":
        return cls(state["labels"], state["centroids"])


class KMeansLoss(nn.Module):
    """A linear classifier over the student embedding onto the k clusters, trained with cross-entropy."""

    def __init__(self, dim: int, num_clusters: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(dim, num_clusters)

    @fp32  # the classifier's logits too: under bf16 autocast the Linear would return bf16
    def forward(self, z_student: Tensor, pseudo_labels: Tensor) -> Tensor:
        return kmeans_loss(self.classifier(z_student), pseudo_labels)
