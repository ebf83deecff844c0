"""Tests of seedrun.evaluate.knn on constructed data whose answers are worked out by hand."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from seedrun.evaluate import knn as knn_module
from seedrun.evaluate.knn import default_chunk_size, knn_accuracy, knn_classify, top_classes

TAU = 0.07

# Training set on four unit directions in R^4 (cosines to e0: 1, 0.8, 0.6, -1):
#   class 0: 5 points at A = e0
#   class 1: 30 points at B = 0.8 e0 + 0.6 e1
#   class 2: 250 points at C = 0.6 e0 + 0.8 e2
#   class 3: 100 points at -e0
# Classes 4 and 5 have no training points (they exercise the top-5 tie order).
NUM_CLASSES = 6
A = [1.0, 0.0, 0.0, 0.0]
B = [0.8, 0.6, 0.0, 0.0]
C = [0.6, 0.0, 0.8, 0.0]
MINUS_A = [-1.0, 0.0, 0.0, 0.0]
CLUSTERS = [(A, 0, 5), (B, 1, 30), (C, 2, 250), (MINUS_A, 3, 100)]


def clustered_train(scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The training set above, scaled by ``scale`` (normalisation inside must undo it)."""
    feats = [torch.tensor(d) for d, _, n in CLUSTERS for _ in range(n)]
    labels = [c for _, c, n in CLUSTERS for _ in range(n)]
    return scale * torch.stack(feats), torch.tensor(labels)


def weight_shares(counts: dict[int, tuple[int, float]], tau: float = TAU) -> list[float]:
    """Hand formula: class c gets n_c * exp(s_c / tau) / sum over classes (one similarity each)."""
    raw = [0.0] * NUM_CLASSES
    for c, (n, s) in counts.items():
        raw[c] = n * math.exp(s / tau)
    total = sum(raw)
    return [r / total for r in raw]


# Query e0: the nearest neighbours are 5 x class 0 (s = 1), then 30 x class 1 (s = 0.8), then 250 x
# class 2 (s = 0.6). The neighbour counts per class for each k, worked out by hand:
E0_NEIGHBOURS = {
    1: {0: (1, 1.0)},
    20: {0: (5, 1.0), 1: (15, 0.8)},
    200: {0: (5, 1.0), 1: (30, 0.8), 2: (165, 0.6)},
}
# Weighted, class 0 always wins: 5 e^(1/0.07) = 8.0e6 beats 15 e^(0.8/0.07) = 1.4e6 (k = 20) and
# 30 e^(0.8/0.07) + 165 e^(0.6/0.07) = 2.8e6 + 0.9e6 (k = 200). Majority vote: 1 (k = 20: 15 of 20
# votes) and 2 (k = 200: 165 of 200 votes). 1-NN: class 0 either way.
E0_EXPECTED = {
    (1, True): 0,
    (1, False): 0,
    (20, True): 0,
    (20, False): 1,
    (200, True): 0,
    (200, False): 2,
}


@pytest.mark.parametrize(("k", "weighted"), sorted(E0_EXPECTED))
def test_known_answer_for_each_variant(k: int, weighted: bool) -> None:
    train, labels = clustered_train()
    query = torch.tensor([A]) * 0.5
    scores = knn_classify(train, labels, query, NUM_CLASSES, k=k, tau=TAU, weighted=weighted)
    assert scores.shape == (1, NUM_CLASSES) and scores.dtype == torch.float32
    assert top_classes(scores)[0, 0].item() == E0_EXPECTED[(k, weighted)]
    counts = E0_NEIGHBOURS[k]
    if weighted:
        expected = weight_shares(counts)
    else:
        expected = [counts.get(c, (0, 0.0))[0] / k for c in range(NUM_CLASSES)]
    torch.testing.assert_close(scores[0], torch.tensor(expected), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(scores.sum(dim=1), torch.ones(1))


def test_weighting_changes_the_answer() -> None:
    train, labels = clustered_train()
    query = torch.tensor([A])
    for k, majority in ((20, 1), (200, 2)):
        weighted = knn_classify(train, labels, query, NUM_CLASSES, k=k, weighted=True)
        votes = knn_classify(train, labels, query, NUM_CLASSES, k=k, weighted=False)
        assert weighted.argmax().item() == 0
        assert votes.argmax().item() == majority


def test_one_nn_weighting_makes_no_difference() -> None:
    train, labels = clustered_train()
    queries = torch.tensor([A, B, C, MINUS_A, [0.7, 0.7, 0.1, 0.0]])
    weighted = knn_classify(train, labels, queries, NUM_CLASSES, k=1, weighted=True)
    votes = knn_classify(train, labels, queries, NUM_CLASSES, k=1, weighted=False)
    assert torch.equal(weighted, votes)
    # (0.7, 0.7, 0.1, 0) is closest to B (cosines: A 0.70, B 0.98, C 0.50).
    assert top_classes(weighted)[:, 0].tolist() == [0, 1, 2, 3, 1]


def test_top5_order_and_tie_break_to_lower_class() -> None:
    train, labels = clustered_train()
    queries = torch.tensor([A, C])
    scores = knn_classify(train, labels, queries, NUM_CLASSES, k=200)
    # e0: scores 0 > 1 > 2 > 0 = 0 = 0, the zero-score classes 3, 4, 5 in index order.
    # C: all 200 neighbours are class 2 (cosine 1; the next, A, is at 0.6); the rest tie at 0.
    assert top_classes(scores, 5).tolist() == [[0, 1, 2, 3, 4], [2, 0, 1, 3, 4]]
    assert top_classes(scores, 99).shape == (2, NUM_CLASSES)

    # Classes 3 and 1 get five neighbours each at the same similarity: an exact tie -> class 1.
    tie_train = torch.tensor([A] * 5 + [A] * 5 + [MINUS_A] * 3)
    tie_labels = torch.tensor([3] * 5 + [1] * 5 + [0] * 3)
    for weighted in (True, False):
        tied = knn_classify(tie_train, tie_labels, torch.tensor([A]), 4, k=10, weighted=weighted)
        assert tied[0, 1].item() == tied[0, 3].item() == 0.5
        assert top_classes(tied, 4).tolist() == [[1, 3, 0, 2]]


def test_accuracy_known_answer() -> None:
    train, labels = clustered_train()
    queries = torch.tensor([A, C, A])
    targets = torch.tensor([0, 2, 1])
    # Weighted k=200 predicts 0, 2, 0: right, right, wrong; label 1 is second for e0 -> in top 5.
    weighted = knn_accuracy(train, labels, queries, targets, NUM_CLASSES, k=200)
    assert weighted == pytest.approx({"top1": 200 / 3, "top5": 100.0})
    # Majority vote k=200 predicts 2, 2, 2: only the second is right; top-5 of e0 is 2, 1, 0, 3, 4.
    votes = knn_accuracy(train, labels, queries, targets, NUM_CLASSES, k=200, weighted=False)
    assert votes == pytest.approx({"top1": 100 / 3, "top5": 100.0})
    # 1-NN predicts 0, 2, 0; top-5 of e0 is 0, 1, 2, 3, 4 (zero-score classes in index order).
    one_nn = knn_accuracy(train, labels, queries, targets, NUM_CLASSES, k=1)
    assert one_nn == pytest.approx({"top1": 200 / 3, "top5": 100.0})


def test_fewer_than_five_classes_reports_top_c() -> None:
    train = torch.tensor([A, B, MINUS_A])
    labels = torch.tensor([0, 1, 2])
    queries = torch.tensor([A, MINUS_A])
    acc = knn_accuracy(train, labels, queries, torch.tensor([1, 1]), 3, k=1)
    assert acc == {"top1": 0.0, "top5": 100.0}  # top-3 of 3 classes holds every label
    acc = knn_accuracy(train[:2], labels[:2] * 0, queries[:1], torch.tensor([0]), 1, k=2)
    assert acc == {"top1": 100.0, "top5": 100.0}


def random_problem(
    n_train: int = 2000, n_test: int = 203, dim: int = 64, classes: int = 10, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n_train, dim, generator=gen),
        torch.randint(0, classes, (n_train,), generator=gen),
        torch.randn(n_test, dim, generator=gen),
        torch.randint(0, classes, (n_test,), generator=gen),
    )


@pytest.mark.parametrize("k", [1, 20, 200])
@pytest.mark.parametrize("weighted", [True, False])
def test_chunked_equals_unchunked_exactly(k: int, weighted: bool) -> None:
    train, labels, test, test_labels = random_problem()
    whole = knn_classify(train, labels, test, 10, k=k, chunk_size=len(test), weighted=weighted)
    acc = knn_accuracy(
        train, labels, test, test_labels, 10, k=k, chunk_size=len(test), weighted=weighted
    )
    for chunk_size in (1, 2, 3, 7, 16, 50, 202, 10_000, None):
        chunked = knn_classify(
            train, labels, test, 10, k=k, chunk_size=chunk_size, weighted=weighted
        )
        assert torch.equal(chunked, whole), chunk_size
        assert (
            knn_accuracy(
                train, labels, test, test_labels, 10, k=k, chunk_size=chunk_size, weighted=weighted
            )
            == acc
        )


@pytest.mark.parametrize(("k", "tau"), [(1, 0.07), (20, 0.07), (200, 0.07), (20, 0.5)])
def test_matches_moco_demo_formula_in_float64(k: int, tau: float) -> None:
    """Against the MoCo CIFAR demo's knn_predict (one-hot x exp(s/tau), summed), in float64."""
    train, labels, test, _ = random_problem(n_train=300, n_test=100, dim=16, classes=5, seed=1)
    train64 = torch.nn.functional.normalize(train.double(), dim=1)
    test64 = torch.nn.functional.normalize(test.double(), dim=1)
    sim_weight, sim_idx = (test64 @ train64.T).topk(k, dim=1)
    one_hot = torch.zeros(len(test) * k, 5, dtype=torch.float64)
    one_hot.scatter_(1, labels[sim_idx].view(-1, 1), 1.0)
    ref = (one_hot.view(len(test), k, 5) * (sim_weight / tau).exp().unsqueeze(-1)).sum(dim=1)
    ref = ref / ref.sum(dim=1, keepdim=True)

    scores = knn_classify(train, labels, test, 5, k=k, tau=tau)
    torch.testing.assert_close(scores.double(), ref, rtol=1e-4, atol=1e-6)
    assert torch.equal(scores.argmax(dim=1), ref.argmax(dim=1))


def test_one_nn_matches_scikit_learn() -> None:
    neighbors = pytest.importorskip("sklearn.neighbors")
    train, labels, test, _ = random_problem(n_train=500, n_test=300, dim=32, seed=2)
    clf = neighbors.KNeighborsClassifier(n_neighbors=1, metric="cosine", algorithm="brute")
    expected = clf.fit(train.numpy(), labels.numpy()).predict(test.numpy())
    ours = top_classes(knn_classify(train, labels, test, 10, k=1))[:, 0]
    assert ours.tolist() == expected.tolist()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_compute_in_float32(dtype: torch.dtype) -> None:
    train, labels, test, _ = random_problem(n_train=500, n_test=50, seed=3)
    low_train, low_test = train.to(dtype), test.to(dtype)
    scores = knn_classify(low_train, labels, low_test, 10, k=20)
    assert scores.dtype == torch.float32
    assert torch.equal(scores, knn_classify(low_train.float(), labels, low_test.float(), 10, k=20))


def test_tiny_tau_does_not_overflow_and_grad_is_ignored() -> None:
    train, labels = clustered_train()
    train.requires_grad_(True)
    scores = knn_classify(train, labels, torch.tensor([A]), NUM_CLASSES, k=200, tau=1e-3)
    assert torch.isfinite(scores).all() and not scores.requires_grad
    assert scores[0, 0].item() == pytest.approx(1.0)  # exp((0.8 - 1) / 1e-3) is ~0


def test_zero_test_rows() -> None:
    train, labels = clustered_train()
    assert knn_classify(train, labels, torch.empty(0, 4), NUM_CLASSES, k=5).shape == (0, 6)
    with pytest.raises(ValueError):
        knn_accuracy(train, labels, torch.empty(0, 4), torch.empty(0, dtype=torch.long), 6)


def test_rejects_bad_arguments() -> None:
    train, labels = clustered_train()
    query = torch.tensor([A])
    with pytest.raises(ValueError, match="k must be"):
        knn_classify(train, labels, query, NUM_CLASSES, k=len(train) + 1)
    with pytest.raises(ValueError, match="k must be"):
        knn_classify(train, labels, query, NUM_CLASSES, k=0)
    with pytest.raises(ValueError, match="train_labels must lie"):
        knn_classify(train, labels, query, 3)
    with pytest.raises(ValueError, match="feature dims"):
        knn_classify(train, labels, torch.zeros(1, 5), NUM_CLASSES)
    with pytest.raises(ValueError, match="tau"):
        knn_classify(train, labels, query, NUM_CLASSES, tau=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        knn_classify(train, labels, query, NUM_CLASSES, chunk_size=0)
    with pytest.raises(TypeError):
        knn_classify(train, labels.float(), query, NUM_CLASSES)
    with pytest.raises(ValueError, match="test_labels"):
        knn_accuracy(train, labels, query, torch.tensor([0, 1]), NUM_CLASSES)


def test_gpu_class_sum_agrees_with_cpu_class_sum() -> None:
    """The masked sum used off-CPU gives the CPU scatter_add_ result (checked here on CPU)."""
    gen = torch.Generator().manual_seed(5)
    top_labels = torch.randint(0, 7, (40, 20), generator=gen)
    weights = torch.softmax(torch.randn(40, 20, generator=gen), dim=1)
    classes = torch.arange(7)
    masked = knn_module._masked_class_sum(top_labels, weights, classes)
    torch.testing.assert_close(masked, knn_module._scatter_class_sum(top_labels, weights, classes))
    counts = knn_module._masked_class_sum(top_labels, torch.ones(40, 20), classes)
    assert torch.equal(
        counts, knn_module._scatter_class_sum(top_labels, torch.ones(40, 20), classes)
    )


def test_default_chunk_size_fits_the_budget() -> None:
    rows = default_chunk_size(60_000, 10, 200)
    assert rows % 16 == 0 and rows * 60_000 * 4 <= 256 * 2**20
    assert default_chunk_size(10**9, 1000, 200) == 16  # at least one padded matmul block


def test_evaluate_package_import_does_not_import_torch() -> None:
    code = (
        "import sys, seedrun; before = 'torch' in sys.modules; import seedrun.evaluate; "
        "assert ('torch' in sys.modules) == before, 'seedrun.evaluate imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_is_repeatable() -> None:
    train, labels, test, test_labels = random_problem(seed=4)
    cpu = knn_classify(train, labels, test, 10, k=20)
    gpu = knn_classify(train.cuda(), labels, test.cuda(), 10, k=20)
    assert gpu.device.type == "cuda"
    assert torch.equal(gpu, knn_classify(train.cuda(), labels, test.cuda(), 10, k=20))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-6)
    clustered, clustered_labels = clustered_train()
    for (k, weighted), expected in E0_EXPECTED.items():
        scores = knn_classify(
            clustered.cuda(),
            clustered_labels,
            torch.tensor([A]).cuda(),
            NUM_CLASSES,
            k=k,
            weighted=weighted,
        )
        assert scores.argmax().item() == expected
    assert knn_accuracy(train.cuda(), labels, test.cuda(), test_labels, 10)["top1"] >= 0.0


# --- knn_variants: several k-NN variants from one similarity pass -----------------------------

from seedrun.evaluate.knn import DEFAULT_VARIANTS, knn_variants, variant_name  # noqa: E402


def test_variant_names() -> None:
    assert [variant_name(k, tau) for k, tau in DEFAULT_VARIANTS] == ["knn", "knn20", "nn1"]
    assert variant_name(1, 0.07) == "nn1"
    assert variant_name(20, None) == "knn20_vote"
    assert variant_name(200, 0.1) == "knn_t0.1"


def test_variants_known_answer() -> None:
    """Queries e0, C, e0 with labels 0, 2, 1 on the clustered set (neighbour counts above).

    k=200 weighted: 0, 2, 0 -> 2/3; label 1 is 2nd for e0 -> top-5 all.
    k=20 weighted: e0 -> 0 (5 e^(1/.07) beats 15 e^(.8/.07)); C -> 2 (all 20 at cosine 1) -> 2/3.
    1-NN: 0, 2, 0 -> 2/3 (no top-5 key by default).
    k=20 vote: e0 -> 1 (15 of 20), C -> 2: right on the 2nd and 3rd -> 2/3, but other samples.
    k=200 vote: 2, 2, 2 -> 1/3.
    """
    train, labels = clustered_train()
    queries = torch.tensor([A, C, A])
    targets = torch.tensor([0, 2, 1])
    acc = knn_variants(train, labels, queries, targets, NUM_CLASSES)
    assert set(acc) == {"knn_top1", "knn_top5", "knn20_top1", "knn20_top5", "nn1_top1"}
    assert acc == pytest.approx(
        {
            "knn_top1": 200 / 3,
            "knn_top5": 100.0,
            "knn20_top1": 200 / 3,
            "knn20_top5": 100.0,
            "nn1_top1": 200 / 3,
        }
    )
    votes = knn_variants(
        train, labels, queries, targets, NUM_CLASSES, variants=((20, None), (200, None))
    )
    assert votes["knn20_vote_top1"] == pytest.approx(200 / 3)
    assert votes["knn_vote_top1"] == pytest.approx(100 / 3)
    # Each variant on its own: the 1-NN of the third query (e0, label 1) is class 0 -> wrong.
    single = knn_variants(train, labels, queries[2:], targets[2:], NUM_CLASSES, variants=((1, None),))
    assert single == {"nn1_top1": 0.0}
    vote20 = knn_variants(train, labels, queries[2:], targets[2:], NUM_CLASSES, variants=((20, None),))
    assert vote20["knn20_vote_top1"] == 100.0  # the majority of e0's 20 neighbours is class 1


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_variants_equal_knn_accuracy_per_variant(chunk_size: int | None) -> None:
    train, labels, test, test_labels = random_problem(seed=6)
    variants = ((200, 0.07), (20, 0.07), (1, None), (20, None), (50, 0.5))
    acc = knn_variants(
        train, labels, test, test_labels, 10, variants=variants, chunk_size=chunk_size,
        top5_for_1nn=True,
    )
    for k, tau in variants:
        ref = knn_accuracy(
            train, labels, test, test_labels, 10, k=k, tau=tau or 1.0, weighted=tau is not None,
            chunk_size=chunk_size,
        )
        name = variant_name(k, tau)
        assert acc[f"{name}_top1"] == ref["top1"], name
        assert acc[f"{name}_top5"] == ref["top5"], name


def test_variants_reject_bad_arguments() -> None:
    train, labels = clustered_train()
    query, target = torch.tensor([A]), torch.tensor([0])
    with pytest.raises(ValueError, match="duplicate"):
        knn_variants(train, labels, query, target, NUM_CLASSES, variants=((20, 0.07), (20, 0.07)))
    with pytest.raises(ValueError, match="k must be"):
        knn_variants(train, labels, query, target, NUM_CLASSES, variants=((len(train) + 1, 0.07),))
    with pytest.raises(ValueError, match="k must be"):
        knn_variants(train, labels, query, target, NUM_CLASSES, variants=((0, 0.07), (5, 0.07)))
    with pytest.raises(ValueError, match="tau"):
        knn_variants(train, labels, query, target, NUM_CLASSES, variants=((5, 0.0), (6, 0.07)))
    with pytest.raises(ValueError, match="at least one"):
        knn_variants(train, labels, query, target, NUM_CLASSES, variants=())
    with pytest.raises(ValueError, match="test_labels"):
        knn_variants(train, labels, query, torch.tensor([0, 1]), NUM_CLASSES)
