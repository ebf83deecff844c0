"""Weighted k-nearest-neighbour evaluation of frozen features.

Protocol (InstDisc: Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination", Sec. 3.5; the same code is the MoCo CIFAR-10 demo's and lightly's ``knn_predict``):

* train and test features are L2-normalised, so the similarity is the cosine
  ``s_ij = <x_i, x_j> / (|x_i| |x_j|)``, computed in float32 whatever the input dtype;
* for each test sample i, take its k most similar training samples N_k(i);
* each neighbour j votes for its label y_j with weight ``w_ij = exp(s_ij / tau)``;
* the class score is ``score_ic = sum_{j in N_k(i)} w_ij * [y_j == c]`` (one-hot of the
  neighbours' labels times the weights, summed per class), and the prediction ranks classes by it.

Defaults k = 200, tau = 0.07 are InstDisc's (the MoCo demo and lightly use tau = 0.1); solo-learn
uses k = 20; CompRess and SimReg report 1-NN (k = 1, where the weighting makes no difference).
``weighted=False`` gives the plain majority vote (every weight 1).

Scores returned here are normalised per test sample: weighted, ``w_ij`` is replaced by
``softmax_j(s_ij / tau)`` over the k neighbours, i.e. ``exp(s_ij / tau)`` divided by the same
positive number for every class of that sample, so the ranking is InstDisc's while ``exp`` can no
longer overflow (float32 overflows at ``s / tau > 88``, e.g. tau = 0.01); unweighted, the scores
are vote counts divided by k. Either way a row's scores sum to 1.

Ties:

* Between neighbours: if several training samples have exactly the same similarity to a test sample
  at the k-th place (duplicated training images, say), which of them are counted is whatever
  ``torch.topk`` picks; it is deterministic for a given input and device but not specified.
* Between classes: equal scores are broken towards the lower class index, for top-1 and top-5 alike
  (a stable sort, see ``top_classes``). In particular with k = 1 every class but the neighbour's
  scores 0, so "top-5" is the neighbour's class followed by the lowest-numbered other classes.
  Unweighted votes are counted in integers, so equal counts are exactly equal scores.

Memory: the work is done in chunks of test rows; the largest temporary is the chunk's similarity
matrix of ``chunk_size x N_train`` float32 (plus, on GPUs, a ``chunk_size x k x num_classes``
one-hot mask). ``default_chunk_size`` fits these into ``DEFAULT_MEMORY_BUDGET_BYTES``. The
normalised float32 copy of the training features (N_train x D) is held for the whole call.

Chunking is meant not to change the result. Every step after the similarity matmul works row by
row. The matmul library does not promise that: MKL rounds differently when it gets only a few rows
(fewer than 12, or not a multiple of 4, on the AVX2 machines checked), so each chunk's matmul is
zero-padded to a multiple of 16 rows; with that, chunked and unchunked scores agreed bit for bit on
CPU in every case tried (tests/test_knn.py checks it). On CUDA, cuBLAS may pick another kernel for
another number of rows, so similarities can differ in the last bit between chunk sizes; the class
sums there use a plain reduction rather than ``scatter_add_`` (atomic adds on CUDA), so repeated
runs with the same chunk size agree exactly.
The similarity matmul honours ``torch.backends.cuda.matmul`` precision settings (PyTorch's default,
no TF32, gives full float32).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DEFAULT_MEMORY_BUDGET_BYTES",
    "DEFAULT_VARIANTS",
    "default_chunk_size",
    "knn_accuracy",
    "knn_classify",
    "knn_variants",
    "top_classes",
    "variant_name",
]

DEFAULT_MEMORY_BUDGET_BYTES: int = 256 * 2**20
"""Bytes the per-chunk temporaries may take when ``chunk_size`` is not given (256 MiB)."""

_ROW_ALIGN = 16
"""Similarity matmuls get a multiple of this many (zero-padded) rows; see ``_iter_chunk_scores``."""


def default_chunk_size(
    num_train: int,
    num_classes: int,
    k: int,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
) -> int:
    """Number of test rows per chunk so that the chunk's temporaries fit ``memory_budget_bytes``.

    Per test row: the similarity row (4 * num_train bytes), the top-k values, indices, labels and
    weights (32 * k) and, for the GPU path, the one-hot mask and its weighted copy (8 * k * C).
    Rounded down to a multiple of 16, and at least 16 (the similarity matmul is padded to a
    multiple of 16 rows anyway).
    """
    per_row = 4 * num_train + 32 * k + 8 * k * num_classes + 4 * num_classes
    rows = memory_budget_bytes // per_row
    return max(_ROW_ALIGN, rows - rows % _ROW_ALIGN)


def top_classes(scores: Tensor, n: int = 1) -> Tensor:
    """Indices of the ``n`` highest-scoring classes per row, best first, shape (rows, n).

    Equal scores are ordered by class index, lowest first (stable descending sort), so the result
    is deterministic. ``n`` is clipped to the number of classes.
    """
    n = min(n, scores.shape[1])
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :n]


def knn_classify(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int = 200,
    tau: float = 0.07,
    chunk_size: int | None = None,
    weighted: bool = True,
) -> Tensor:
    """Class scores of weighted k-NN for every test sample: float32 tensor (N_test, num_classes).

    Args:
        train_features: (N_train, D) float tensor (float32/float16/bfloat16/float64), any norm.
        train_labels: (N_train,) integer labels in [0, num_classes); may live on another device.
        test_features: (N_test, D) on the same device as ``train_features``; the work runs there.
        num_classes: number of classes C.
        k: neighbours per test sample, 1 <= k <= N_train.
        tau: temperature of the weights exp(s / tau).
        chunk_size: test rows per chunk; None picks ``default_chunk_size``. Each chunk's matmul
            is padded to a multiple of 16 rows, so sizes below 16 save no memory.
        weighted: False counts plain votes (majority vote).

    Returns:
        ``scores[i, c]``: the share of test sample i's neighbour weight (or votes) that falls on
        class c; each row sums to 1. Predictions: ``top_classes(scores, n)`` or ``argmax``
        (the former breaks ties towards the lower class index). See the module docstring.
    """
    train, labels = _prepare_train(train_features, train_labels, test_features, num_classes, k, tau)
    scores = torch.empty(test_features.shape[0], num_classes, device=train.device)
    for start, stop, chunk_scores in _iter_chunk_scores(
        train, labels, test_features, num_classes, k, tau, chunk_size, weighted
    ):
        scores[start:stop] = chunk_scores
    return scores


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    k: int = 200,
    tau: float = 0.07,
    chunk_size: int | None = None,
    weighted: bool = True,
) -> dict[str, float]:
    """Top-1 and top-5 accuracy (percent, 0-100) of weighted k-NN, ``{"top1": .., "top5": ..}``.

    Arguments as ``knn_classify``, plus ``test_labels`` (N_test,). With fewer than 5 classes
    "top5" is top-C accuracy (every class is in the top 5, so it is 100). Class ties go to the lower
    class index. Only per-chunk scores are held, never the full (N_test, C) matrix.
    """
    n_test = test_features.shape[0]
    if n_test == 0:
        raise ValueError("knn_accuracy needs at least one test sample")
    if test_labels.shape != (n_test,):
        raise ValueError(f"test_labels must have shape ({n_test},), got {tuple(test_labels.shape)}")
    train, labels = _prepare_train(train_features, train_labels, test_features, num_classes, k, tau)
    targets = test_labels.to(device=train.device, dtype=torch.long)
    top_n = min(5, num_classes)
    hits1 = torch.zeros((), dtype=torch.long, device=train.device)
    hits5 = torch.zeros((), dtype=torch.long, device=train.device)
    for start, stop, chunk_scores in _iter_chunk_scores(
        train, labels, test_features, num_classes, k, tau, chunk_size, weighted
    ):
        ranked = top_classes(chunk_scores, top_n)
        hit = ranked == targets[start:stop].unsqueeze(1)
        hits1 += hit[:, 0].sum()
        hits5 += hit.any(dim=1).sum()
    return {"top1": 100.0 * hits1.item() / n_test, "top5": 100.0 * hits5.item() / n_test}


DEFAULT_VARIANTS: tuple[tuple[int, float | None], ...] = ((200, 0.07), (20, 0.07), (1, None))
"""The k-NN variants of ``knn_variants``: InstDisc's k = 200 (tau 0.07), solo-learn's k = 20 and the
1-NN CompRess and SimReg report (tau None: unweighted; for k = 1 weighting makes no difference)."""


def variant_name(k: int, tau: float | None) -> str:
    """Metric prefix of a k-NN variant: ``knn`` (k = 200, tau 0.07), ``nn1`` (k = 1), else
    ``knn{k}``; a weighted variant whose tau is not 0.07 (k > 1) gets ``_t{tau}``, an unweighted one
    with k > 1 gets ``_vote``."""
    if k == 1:
        return "nn1"
    base = "knn" if k == 200 else f"knn{k}"
    if tau is None:
        return f"{base}_vote"
    if tau != 0.07:
        return f"{base}_t{tau:g}"
    return base


def knn_variants(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    variants: Sequence[tuple[int, float | None]] = DEFAULT_VARIANTS,
    chunk_size: int | None = None,
    top5_for_1nn: bool = False,
) -> dict[str, float]:
    """Accuracies (percent) of several k-NN variants from one pass over the similarities.

    Each variant is ``(k, tau)``; ``tau=None`` is the unweighted majority vote. Keys are
    ``f"{variant_name(k, tau)}_top1"`` and ``..._top5``, e.g. with the defaults
    ``{"knn_top1", "knn_top5", "knn20_top1", "knn20_top5", "nn1_top1"}``. 1-NN "top-5" (the
    neighbour's class, then the lowest-numbered others) means little, so it is left out unless
    ``top5_for_1nn``.

    The similarity matmul and the top-k search are done once, for the largest k; each variant then
    uses the first k of those neighbours. Without exact ties in similarity the result equals
    ``knn_accuracy`` run per variant (the tests check it); with ties, which of the tied neighbours
    are counted is unspecified either way (see the module docstring).
    """
    if not variants:
        raise ValueError("knn_variants needs at least one (k, tau) variant")
    n_test = test_features.shape[0]
    if n_test == 0:
        raise ValueError("knn_variants needs at least one test sample")
    if test_labels.shape != (n_test,):
        raise ValueError(f"test_labels must have shape ({n_test},), got {tuple(test_labels.shape)}")
    names = [variant_name(k, tau) for k, tau in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate k-NN variants: {list(variants)}")
    k_max = max(k for k, _ in variants)
    train, labels = _prepare_train(
        train_features, train_labels, test_features, num_classes, k_max, 1.0
    )
    for k, tau in variants:  # check every variant before any work
        _check_k_tau(k, tau, train.shape[0])
    if chunk_size is None:
        chunk_size = default_chunk_size(train.shape[0], num_classes, k_max)
    targets = test_labels.to(device=train.device, dtype=torch.long)
    classes = torch.arange(num_classes, device=train.device)
    top_n = min(5, num_classes)
    hits = {name: [torch.zeros((), dtype=torch.long, device=train.device)] * 2 for name in names}
    for start, stop, top_sim, top_labels in _iter_chunk_neighbours(
        train, labels, test_features, k_max, chunk_size
    ):
        target = targets[start:stop].unsqueeze(1)
        for name, (k, tau) in zip(names, variants):
            scores = _neighbour_scores(
                top_sim, top_labels, classes, k, 1.0 if tau is None else tau, tau is not None
            )
            hit = top_classes(scores, top_n) == target
            h1, h5 = hits[name]
            hits[name] = [h1 + hit[:, 0].sum(), h5 + hit.any(dim=1).sum()]
    out: dict[str, float] = {}
    for name, (k, _) in zip(names, variants):
        h1, h5 = hits[name]
        out[f"{name}_top1"] = 100.0 * h1.item() / n_test
        if k > 1 or top5_for_1nn:
            out[f"{name}_top5"] = 100.0 * h5.item() / n_test
    return out


def _check_k_tau(k: int, tau: float | None, n_train: int) -> None:
    if not 1 <= k <= n_train:
        raise ValueError(f"k must be between 1 and the {n_train} training samples, got {k}")
    if tau is not None and not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")


def _prepare_train(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int,
    tau: float,
) -> tuple[Tensor, Tensor]:
    """Check the arguments; return normalised float32 training features and long labels."""
    if train_features.dim() != 2 or test_features.dim() != 2:
        raise ValueError(
            "features must be 2-D (samples, dim), got "
            f"train {tuple(train_features.shape)} and test {tuple(test_features.shape)}"
        )
    if not (train_features.is_floating_point() and test_features.is_floating_point()):
        raise TypeError("features must be floating point")
    n_train, dim = train_features.shape
    if test_features.shape[1] != dim:
        raise ValueError(f"feature dims differ: train {dim}, test {test_features.shape[1]}")
    if test_features.device != train_features.device:
        raise ValueError(
            f"train features on {train_features.device}, test features on {test_features.device}"
        )
    if train_labels.shape != (n_train,):
        raise ValueError(
            f"train_labels must have shape ({n_train},), got {tuple(train_labels.shape)}"
        )
    if train_labels.is_floating_point() or train_labels.is_complex():
        raise TypeError("train_labels must be an integer tensor")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not 1 <= k <= n_train:
        raise ValueError(f"k must be between 1 and the {n_train} training samples, got {k}")
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    device = train_features.device
    labels = train_labels.detach().to(device=device, dtype=torch.long)
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"train_labels must lie in [0, {num_classes})")
    train = F.normalize(train_features.detach().to(torch.float32), dim=1)
    return train, labels


def _iter_chunk_scores(
    train: Tensor,
    labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int,
    tau: float,
    chunk_size: int | None,
    weighted: bool,
) -> Iterator[tuple[int, int, Tensor]]:
    """Yield ``(start, stop, scores)`` for consecutive chunks of test rows (no per-sample loop)."""
    if chunk_size is None:
        chunk_size = default_chunk_size(train.shape[0], num_classes, k)
    classes = torch.arange(num_classes, device=train.device)
    for start, stop, top_sim, top_labels in _iter_chunk_neighbours(
        train, labels, test_features, k, chunk_size
    ):
        yield start, stop, _neighbour_scores(top_sim, top_labels, classes, k, tau, weighted)


def _iter_chunk_neighbours(
    train: Tensor,
    labels: Tensor,
    test_features: Tensor,
    k: int,
    chunk_size: int,
) -> Iterator[tuple[int, int, Tensor, Tensor]]:
    """Yield ``(start, stop, top_sim, top_labels)``: each chunk's k nearest training samples,
    most similar first, as similarities and labels, both (rows, k)."""
    n_test, dim = test_features.shape
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    chunk_size = min(chunk_size, max(n_test, 1))
    # Buffers reused by every chunk (no fresh chunk x N_train allocation each time). The matmul
    # always gets a multiple of _ROW_ALIGN rows, zero-padded: MKL picks other kernels (other
    # rounding) for a few rows, and padding keeps each row's similarities independent of the chunk.
    buffer_rows = _round_up(chunk_size, _ROW_ALIGN)
    query_buffer = torch.zeros(buffer_rows, dim, device=train.device)
    sim_buffer = torch.empty(buffer_rows, train.shape[0], device=train.device)
    train_t = train.t()
    with torch.no_grad():
        for start in range(0, n_test, chunk_size):
            stop = min(start + chunk_size, n_test)
            rows, padded_rows = stop - start, _round_up(stop - start, _ROW_ALIGN)
            query_buffer[:rows] = F.normalize(test_features[start:stop].detach().float(), dim=1)
            query_buffer[rows:padded_rows] = 0.0
            torch.mm(query_buffer[:padded_rows], train_t, out=sim_buffer[:padded_rows])
            top_sim, top_idx = sim_buffer[:rows].topk(k, dim=1)  # (rows, k), most similar first
            yield start, stop, top_sim, labels[top_idx]


def _neighbour_scores(
    top_sim: Tensor, top_labels: Tensor, classes: Tensor, k: int, tau: float, weighted: bool
) -> Tensor:
    """Per-class scores (rows, C) of the first ``k`` neighbours (columns) of each row."""
    top_sim, top_labels = top_sim[:, :k], top_labels[:, :k]
    if weighted:
        weights = torch.softmax(top_sim / tau, dim=1)  # exp(s/tau) / row constant
    else:
        weights = torch.ones_like(top_sim)
    scores = _sum_per_class(top_labels, weights, classes)
    if not weighted:
        scores /= k
    return scores


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _sum_per_class(top_labels: Tensor, weights: Tensor, classes: Tensor) -> Tensor:
    """``out[i, c] = sum_j weights[i, j] * [top_labels[i, j] == c]``, shape (m, C)."""
    if top_labels.device.type == "cpu":
        return _scatter_class_sum(top_labels, weights, classes)
    # Elsewhere scatter_add_ uses atomic adds (the order varies run to run); a masked sum does not.
    return _masked_class_sum(top_labels, weights, classes)


def _scatter_class_sum(top_labels: Tensor, weights: Tensor, classes: Tensor) -> Tensor:
    """CPU: scatter_add_ adds each row's k entries serially in neighbour order (deterministic,
    independent of the chunk) and needs no m x k x C one-hot."""
    out = torch.zeros(top_labels.shape[0], classes.numel(), device=top_labels.device)
    return out.scatter_add_(1, top_labels, weights)


def _masked_class_sum(top_labels: Tensor, weights: Tensor, classes: Tensor) -> Tensor:
    """GPU: one-hot mask (m, k, C) times the weights, summed over the k neighbours."""
    one_hot = top_labels.unsqueeze(2) == classes
    return torch.where(one_hot, weights.unsqueeze(2), 0.0).sum(dim=1)
