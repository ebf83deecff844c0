"""Tests of the distillation-strategy and self-supervised losses in seedrun.losses.

Each loss is checked against a naive implementation written here with Python loops and the math
module (float64, to 1e-6), against hand-computed values on one- or two-element cases, and for
decreasing under a few SGD steps on a tiny linear model.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from seedrun.losses import (
    BinaryContrastiveLoss,
    KMeansLoss,
    KMeansTargets,
    L2Loss,
    NTXentLoss,
    OnlineClusteringLoss,
    SEEDMoCoV2Loss,
    SwAVLoss,
    binary_contrastive_loss,
    kmeans,
    kmeans_loss,
    l2_loss,
    ntxent_loss,
    online_clustering_loss,
    seed_loss,
    seed_mocov2_loss,
    sinkhorn,
    swav_loss,
)

torch.set_num_threads(1)

DT = torch.float64
TOL = 1e-6
N, K, DIM, P = 5, 7, 6, 4


def unit(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=DT), dim=-1)


# ---------------------------------------------------------------- naive reference implementations


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def log_softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    lse = m + math.log(sum(math.exp(x - m) for x in xs))
    return [x - lse for x in xs]


def softmax(xs: list[float]) -> list[float]:
    return [math.exp(v) for v in log_softmax(xs)]


def normalize(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def naive_infonce(q: list, k: list, queue: list, tau: float) -> float:
    total = 0.0
    for qi, ki in zip(q, k):
        logits = [dot(qi, ki) / tau] + [dot(qi, d) / tau for d in queue]
        total -= log_softmax(logits)[0]
    return total / len(q)


def naive_seed(zs: list, zt: list, queue: list, tau_s: float, tau_t: float) -> float:
    total = 0.0
    for s, t in zip(zs, zt):
        keys = [t] + queue
        target = softmax([dot(t, key) / tau_t for key in keys])
        logp = log_softmax([dot(s, key) / tau_s for key in keys])
        total -= sum(p * lp for p, lp in zip(target, logp))
    return total / len(zs)


def naive_sinkhorn(scores: list, epsilon: float, iterations: int) -> list:
    """SwAV's algorithm with lists: Q is P x B here as in the official code, returned B x P."""
    b, p = len(scores), len(scores[0])
    q = [[math.exp(scores[i][j] / epsilon) for i in range(b)] for j in range(p)]
    total = sum(sum(row) for row in q)
    q = [[x / total for x in row] for row in q]
    for _ in range(iterations):
        for j in range(p):
            s = sum(q[j])
            q[j] = [x / s / p for x in q[j]]
        for i in range(b):
            s = sum(q[j][i] for j in range(p))
            for j in range(p):
                q[j][i] = q[j][i] / s / b
    return [[q[j][i] * b for j in range(p)] for i in range(b)]


def naive_soft_ce(codes: list, logits: list) -> float:
    total = 0.0
    for c, row in zip(codes, logits):
        total -= sum(ci * li for ci, li in zip(c, log_softmax(row)))
    return total / len(codes)


# ---------------------------------------------------------------- SEED vs binary contrastive


def test_seed_with_tiny_teacher_temperature_is_binary_contrastive():
    zs, zt, queue = unit(N, DIM, seed=1), unit(N, DIM, seed=2), unit(K, DIM, seed=3)
    seed = seed_loss(zs, zt, queue, 0.2, 1e-4)
    binary = binary_contrastive_loss(zs, zt, queue, 0.2)
    assert seed.item() == pytest.approx(binary.item(), abs=TOL)


# ---------------------------------------------------------------- binary contrastive


def test_binary_contrastive_matches_naive():
    zs, zt, queue = unit(N, DIM, seed=1), unit(N, DIM, seed=2), unit(K, DIM, seed=3)
    for tau in (0.07, 0.2, 1.0):
        got = binary_contrastive_loss(zs, zt, queue, tau).item()
        want = naive_infonce(zs.tolist(), zt.tolist(), queue.tolist(), tau)
        assert got == pytest.approx(want, abs=TOL)
    assert BinaryContrastiveLoss(0.2)(zs, zt, queue).item() == pytest.approx(
        naive_infonce(zs.tolist(), zt.tolist(), queue.tolist(), 0.2), abs=TOL
    )


def test_binary_contrastive_hand_computed():
    # z_S = e0, z_T = e1, queue = [e0], tau = 1: logits [0, 1], positive first -> log(1 + e).
    zs = torch.tensor([[1.0, 0.0]], dtype=DT)
    zt = torch.tensor([[0.0, 1.0]], dtype=DT)
    queue = torch.tensor([[1.0, 0.0]], dtype=DT)
    assert binary_contrastive_loss(zs, zt, queue, 1.0).item() == pytest.approx(math.log(1 + math.e), abs=1e-12)
    # Student equal to teacher, queue orthogonal, tau = 0.5: logits [2, 0] -> log(1 + e^-2).
    assert binary_contrastive_loss(zt, zt, queue, 0.5).item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-12)


def test_binary_contrastive_rejects_bad_temperature():
    zs = unit(2, DIM, seed=1)
    with pytest.raises(ValueError):
        binary_contrastive_loss(zs, zs, unit(3, DIM, seed=2), 0.0)


# ---------------------------------------------------------------- l2


def test_l2_matches_naive_and_normalises():
    g = torch.Generator().manual_seed(4)
    zs, zt = torch.randn(N, DIM, generator=g, dtype=DT) * 3, torch.randn(N, DIM, generator=g, dtype=DT)
    want = 0.0
    for s, t in zip(zs.tolist(), zt.tolist()):
        s, t = normalize(s), normalize(t)
        want += sum((a - b) ** 2 for a, b in zip(s, t))
    want /= N
    assert l2_loss(zs, zt).item() == pytest.approx(want, abs=TOL)
    assert L2Loss()(zs, zt).item() == pytest.approx(want, abs=TOL)
    # = 2 - 2 cos on normalised vectors
    cos = F.cosine_similarity(zs, zt, dim=1)
    assert l2_loss(zs, zt).item() == pytest.approx((2 - 2 * cos).mean().item(), abs=TOL)


def test_l2_hand_computed():
    e0 = torch.tensor([[1.0, 0.0]], dtype=DT)
    e1 = torch.tensor([[0.0, 1.0]], dtype=DT)
    assert l2_loss(e0, e1).item() == pytest.approx(2.0, abs=1e-12)
    assert l2_loss(e0, -e0).item() == pytest.approx(4.0, abs=1e-12)
    assert l2_loss(torch.cat([e0, e0]), torch.cat([e0, e1])).item() == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------- k-means


def blobs(centres: torch.Tensor, per: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = centres.repeat_interleave(per, dim=0)
    x = x + noise * torch.randn(x.shape, generator=g, dtype=x.dtype)
    truth = torch.arange(centres.shape[0]).repeat_interleave(per)
    perm = torch.randperm(x.shape[0], generator=g)
    return x[perm], truth[perm]


def test_kmeans_recovers_well_separated_clusters():
    centres = torch.eye(8, dtype=DT)[:5] * 4.0  # five orthogonal directions; scale is irrelevant
    x, truth = blobs(centres, 40, 0.3, seed=5)
    for seed in range(3):
        centroids, labels = kmeans(x, 5, iterations=20, seed=seed)
        assert centroids.shape == (5, 8)
        assert torch.allclose(centroids.norm(dim=1), torch.ones(5, dtype=DT))
        assert sorted(labels.unique().tolist()) == list(range(5))
        # a bijection between found and true clusters
        pairs = {(int(t), int(l)) for t, l in zip(truth, labels)}
        assert len(pairs) == 5
        assert len({t for t, _ in pairs}) == 5 and len({l for _, l in pairs}) == 5


def test_kmeans_uses_every_cluster_even_with_more_clusters_than_blobs():
    centres = torch.eye(6, dtype=DT)[:3]
    x, _ = blobs(centres, 30, 0.05, seed=6)
    # duplicated points make empty clusters likely at initialisation and during iterations
    x = torch.cat([x, x[:1].repeat(20, 1)])
    for k in (3, 10, 40):
        centroids, labels = kmeans(x, k, iterations=10, seed=0)
        assert torch.bincount(labels, minlength=k).min().item() >= 1
        assert labels.max().item() == k - 1
    # k == N: every point its own cluster
    _, labels = kmeans(x[:12], 12, iterations=5, seed=1)
    assert sorted(labels.tolist()) == list(range(12))


def test_kmeans_is_deterministic_and_chunk_independent():
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(7), dtype=DT)
    c1, l1 = kmeans(x, 12, iterations=8, seed=3, chunk_size=4096)
    c2, l2 = kmeans(x, 12, iterations=8, seed=3, chunk_size=17)
    assert torch.equal(l1, l2) and torch.allclose(c1, c2)
    _, l3 = kmeans(x, 12, iterations=8, seed=4)
    assert not torch.equal(l1, l3)


def test_kmeans_assignment_is_nearest_centroid_by_cosine():
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(8), dtype=DT)
    centroids, labels = kmeans(x, 6, iterations=10, seed=0)
    xs, cs = x.tolist(), centroids.tolist()
    for xi, li in zip(xs, labels.tolist()):
        xi = normalize(xi)
        sims = [dot(xi, c) for c in cs]
        assert sims[li] == pytest.approx(max(sims), abs=1e-12)


def test_kmeans_rejects_too_many_clusters():
    with pytest.raises(ValueError):
        kmeans(torch.randn(3, 4), 4)


def test_kmeans_loss_matches_naive():
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(N, P, generator=g, dtype=DT)
    labels = torch.randint(0, P, (N,), generator=g)
    want = -sum(log_softmax(row)[y] for row, y in zip(logits.tolist(), labels.tolist())) / N
    assert kmeans_loss(logits, labels).item() == pytest.approx(want, abs=TOL)
    # hand: two classes, equal logits -> log 2
    assert kmeans_loss(torch.zeros(1, 2, dtype=DT), torch.tensor([1])).item() == pytest.approx(math.log(2), abs=1e-12)


def test_kmeans_targets_index_by_dataset_index():
    centres = torch.eye(4, dtype=DT)[:2]
    x, truth = blobs(centres, 10, 0.05, seed=10)
    targets = KMeansTargets.fit(x, 2, iterations=5, seed=0)
    assert len(targets) == 20 and targets.num_clusters == 2
    idx = torch.tensor([3, 0, 7])
    assert torch.equal(targets[idx], targets.labels[idx])
    restored = KMeansTargets.from_state_dict(targets.state_dict())
    assert torch.equal(restored.labels, targets.labels)


# ---------------------------------------------------------------- Sinkhorn and online clustering


def test_sinkhorn_matches_naive():
    scores = unit(N, DIM, seed=11) @ unit(P, DIM, seed=12).T
    for epsilon, iterations in ((0.05, 3), (0.5, 1), (0.1, 10)):
        got = sinkhorn(scores, epsilon, iterations)
        want = naive_sinkhorn(scores.tolist(), epsilon, iterations)
        assert torch.allclose(got, torch.tensor(want, dtype=DT), atol=TOL, rtol=0)


def test_sinkhorn_marginals():
    scores = unit(12, DIM, seed=13) @ unit(P, DIM, seed=14).T
    q = sinkhorn(scores, 0.05, 3)
    assert (q >= 0).all()
    assert torch.allclose(q.sum(dim=1), torch.ones(12, dtype=DT), atol=1e-12)  # each sample a distribution
    q = sinkhorn(scores, 0.05, 300)  # converged: each prototype gets B / P of the mass
    assert torch.allclose(q.sum(dim=0), torch.full((P,), 12 / P, dtype=DT), atol=1e-6)
    # large scores do not overflow (global max subtracted)
    q = sinkhorn(scores * 1000, 0.05, 3)
    assert torch.isfinite(q).all()


def test_sinkhorn_hand_computed():
    # Two samples, two prototypes, sample i prefers prototype i with weight a = e^{1/eps}:
    # Q (P x B) = [[a, 1], [1, a]] / (2a + 2); symmetric, so every step keeps it doubly stochastic
    # and the codes are rows [a, 1] / (a + 1).
    eps = 0.5
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=DT)
    a = math.exp(1 / eps)
    want = torch.tensor([[a, 1.0], [1.0, a]], dtype=DT) / (a + 1)
    assert torch.allclose(sinkhorn(scores, eps, 3), want, atol=1e-12)


def test_online_clustering_matches_naive():
    zs, zt = unit(N, DIM, seed=15), unit(N, DIM, seed=16)
    protos = torch.randn(P, DIM, generator=torch.Generator().manual_seed(17), dtype=DT)  # not normalised
    tau, eps, its = 0.1, 0.05, 3
    cs = [normalize(c) for c in protos.tolist()]
    codes = naive_sinkhorn([[dot(t, c) for c in cs] for t in zt.tolist()], eps, its)
    logits = [[dot(s, c) / tau for c in cs] for s in zs.tolist()]
    want = naive_soft_ce(codes, logits)
    assert online_clustering_loss(zs, zt, protos, tau, eps, its).item() == pytest.approx(want, abs=TOL)
    # with a queue of teacher embeddings joining the Sinkhorn problem
    queue = unit(K, DIM, seed=18)
    codes = naive_sinkhorn([[dot(t, c) for c in cs] for t in zt.tolist() + queue.tolist()], eps, its)[:N]
    want = naive_soft_ce(codes, logits)
    assert online_clustering_loss(zs, zt, protos, tau, eps, its, queue=queue).item() == pytest.approx(want, abs=TOL)


def test_online_clustering_module_and_gradients():
    loss_module = OnlineClusteringLoss(DIM, P, tau=0.1, generator=torch.Generator().manual_seed(0)).double()
    assert loss_module.prototypes.shape == (P, DIM)
    assert torch.allclose(loss_module.prototypes.norm(dim=1), torch.ones(P, dtype=DT))
    zs = unit(N, DIM, seed=19).requires_grad_()
    zt = unit(N, DIM, seed=20).requires_grad_()
    loss = loss_module(zs, zt)
    assert loss.item() == pytest.approx(online_clustering_loss(zs, zt, loss_module.prototypes, 0.1).item(), abs=TOL)
    loss.backward()
    assert zt.grad is None  # the teacher's codes carry no gradient
    assert zs.grad is not None and loss_module.prototypes.grad is not None
    with torch.no_grad():
        loss_module.prototypes.mul_(3)
    loss_module.normalize_prototypes()
    assert torch.allclose(loss_module.prototypes.norm(dim=1), torch.ones(P, dtype=DT))


# ---------------------------------------------------------------- SEED + MoCo-v2


def test_seed_mocov2_matches_naive():
    zs, zt, queue = unit(N, DIM, seed=21), unit(N, DIM, seed=22), unit(K, DIM, seed=23)
    q, k, squeue = unit(N, DIM, seed=24), unit(N, DIM, seed=25), unit(K + 2, DIM, seed=26)
    for weight in (0.0, 0.5, 1.0):
        got = seed_mocov2_loss(zs, zt, queue, 0.2, 0.01, q, k, squeue, 0.2, weight).item()
        want = naive_seed(zs.tolist(), zt.tolist(), queue.tolist(), 0.2, 0.01) + weight * naive_infonce(
            q.tolist(), k.tolist(), squeue.tolist(), 0.2
        )
        assert got == pytest.approx(want, abs=TOL)
    module = SEEDMoCoV2Loss(tau_student=0.2, tau_teacher=0.01, tau_moco=0.2, weight=1.0)
    assert module(zs, zt, queue, q, k, squeue).item() == pytest.approx(
        seed_mocov2_loss(zs, zt, queue, 0.2, 0.01, q, k, squeue, 0.2, 1.0).item(), abs=1e-12
    )


def test_seed_mocov2_hand_computed():
    # SEED part: z_S = e0, z_T = e1, D = [e0], taus 1 -> log(1 + e) - 1/(1 + e);
    # MoCo part: q = k = e0, D_S = [e1], tau 1 -> logits [1, 0] -> log(1 + e^-1).
    e0 = torch.tensor([[1.0, 0.0]], dtype=DT)
    e1 = torch.tensor([[0.0, 1.0]], dtype=DT)
    want = math.log(1 + math.e) - 1 / (1 + math.e) + 0.5 * math.log(1 + math.exp(-1))
    got = seed_mocov2_loss(e0, e1, e0, 1.0, 1.0, e0, e0, e1, 1.0, 0.5).item()
    assert got == pytest.approx(want, abs=1e-12)


# ---------------------------------------------------------------- NT-Xent


def naive_ntxent(z1: list, z2: list, tau: float) -> float:
    z = [normalize(v) for v in z1 + z2]
    n2 = len(z)
    total = 0.0
    for a in range(n2):
        pos = (a + n2 // 2) % n2
        logits = [dot(z[a], z[b]) / tau for b in range(n2) if b != a]
        others = [b for b in range(n2) if b != a]
        total -= log_softmax(logits)[others.index(pos)]
    return total / n2


def test_ntxent_matches_naive():
    g = torch.Generator().manual_seed(27)
    z1, z2 = torch.randn(N, DIM, generator=g, dtype=DT), torch.randn(N, DIM, generator=g, dtype=DT)
    for tau in (0.1, 0.5):
        assert ntxent_loss(z1, z2, tau).item() == pytest.approx(naive_ntxent(z1.tolist(), z2.tolist(), tau), abs=TOL)
    assert NTXentLoss(0.5)(z1, z2).item() == pytest.approx(naive_ntxent(z1.tolist(), z2.tolist(), 0.5), abs=TOL)


def test_ntxent_hand_computed():
    # One image, two views: each view's only other embedding is its positive -> loss 0.
    z = unit(1, DIM, seed=28)
    assert ntxent_loss(z, unit(1, DIM, seed=29), 0.5).item() == pytest.approx(0.0, abs=1e-12)
    # Two images, views identical, images orthogonal, tau = 1: for each view the other three
    # logits are [1 (pair), 0, 0] -> log(e + 2) - 1.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=DT)
    assert ntxent_loss(z, z, 1.0).item() == pytest.approx(math.log(math.e + 2) - 1, abs=1e-12)


# ---------------------------------------------------------------- SwAV


def naive_swav(scores: list, tau: float, eps: float, its: int, assign: tuple) -> float:
    views = len(scores)
    total = 0.0
    for a in assign:
        codes = naive_sinkhorn(scores[a], eps, its)
        sub = 0.0
        for v in range(views):
            if v != a:
                sub += naive_soft_ce(codes, [[x / tau for x in row] for row in scores[v]])
        total += sub / (views - 1)
    return total / len(assign)


def test_swav_matches_naive():
    protos = unit(P, DIM, seed=30)
    views = [unit(N, DIM, seed=31 + v) @ protos.T for v in range(4)]
    for assign in ((0, 1), (0,), (2, 3, 1)):
        got = swav_loss(views, 0.1, 0.05, 3, assign).item()
        want = naive_swav([s.tolist() for s in views], 0.1, 0.05, 3, assign)
        assert got == pytest.approx(want, abs=TOL)
    assert SwAVLoss()(views[:2]).item() == pytest.approx(naive_swav([s.tolist() for s in views[:2]], 0.1, 0.05, 3, (0, 1)), abs=TOL)


def test_swav_hand_computed():
    # Two views, the same two samples; scores [[1, 0], [0, 1]], eps = 0.5, tau = 1: codes are
    # [a, 1] / (a + 1) per row (see test_sinkhorn_hand_computed), log-probs [1, 0] - log(1 + e).
    eps = 0.5
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=DT)
    a = math.exp(1 / eps)
    want = -(a / (a + 1) * (1 - math.log(1 + math.e)) + 1 / (a + 1) * (0 - math.log(1 + math.e)))
    assert swav_loss([s, s], tau=1.0, epsilon=eps).item() == pytest.approx(want, abs=1e-12)


def test_swav_rejects_bad_views():
    s = torch.zeros(2, 3)
    with pytest.raises(ValueError):
        swav_loss([s])
    with pytest.raises(ValueError):
        swav_loss([s, s], crops_for_assign=(2,))


# ---------------------------------------------------------------- each loss decreases under SGD


def descends(make_loss, params, steps: int = 20, lr: float = 0.5) -> tuple[float, float]:
    opt = torch.optim.SGD(params, lr=lr)
    first = None
    for _ in range(steps):
        opt.zero_grad()
        loss = make_loss()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    with torch.no_grad():
        last = make_loss().item()
    return first, last


def tiny_student(seed: int, inputs: int = 8, out: int = DIM) -> tuple[torch.nn.Linear, torch.Tensor]:
    torch.manual_seed(seed)
    return torch.nn.Linear(inputs, out).double(), torch.randn(16, inputs, dtype=DT)


@pytest.mark.parametrize(
    "name",
    ["seed", "binary_contrastive", "l2", "kmeans", "online_clustering", "seed_mocov2", "ntxent", "swav"],
)
def test_loss_decreases_under_sgd(name):
    torch.manual_seed(0)
    student, x = tiny_student(0)
    zt = unit(16, DIM, seed=40)
    queue = unit(32, DIM, seed=41)
    params = list(student.parameters())

    def zs():
        return F.normalize(student(x), dim=1)

    if name == "seed":
        make = lambda: seed_loss(zs(), zt, queue, 0.2, 0.05)  # noqa: E731
    elif name == "binary_contrastive":
        make = lambda: binary_contrastive_loss(zs(), zt, queue, 0.2)  # noqa: E731
    elif name == "l2":
        make = lambda: l2_loss(student(x), zt)  # noqa: E731
    elif name == "kmeans":
        _, labels = kmeans(zt, 4, iterations=5, seed=0)
        head = KMeansLoss(DIM, 4).double()
        params += list(head.parameters())
        make = lambda: head(zs(), labels)  # noqa: E731
    elif name == "online_clustering":
        module = OnlineClusteringLoss(DIM, P, tau=0.1, epsilon=0.05).double()
        params += list(module.parameters())
        make = lambda: module(zs(), zt)  # noqa: E731
    elif name == "seed_mocov2":
        x2 = x + 0.1 * torch.randn(x.shape, dtype=DT)
        squeue = unit(32, DIM, seed=42)

        def make():
            k = F.normalize(student(x2), dim=1).detach()
            return seed_mocov2_loss(zs(), zt, queue, 0.2, 0.05, zs(), k, squeue, 0.2, 1.0)

    elif name == "ntxent":
        x2 = x + 0.1 * torch.randn(x.shape, dtype=DT)
        make = lambda: ntxent_loss(student(x), student(x2), 0.5)  # noqa: E731
    elif name == "swav":
        x2 = x + 0.1 * torch.randn(x.shape, dtype=DT)
        protos = torch.nn.Parameter(unit(P, DIM, seed=43).clone())
        params.append(protos)

        def make():
            c = F.normalize(protos, dim=1)
            return swav_loss([zs() @ c.T, F.normalize(student(x2), dim=1) @ c.T], tau=0.1, epsilon=0.05)

    first, last = descends(make, params)
    assert math.isfinite(first) and last < first


# ---------------------------------------------------------------- strategy registry


def test_strategy_registry_is_torch_free_and_resolves():
    code = "import sys, seedrun.training.strategies as s; assert 'torch' not in sys.modules; print(','.join(s.STRATEGIES))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out.split(",") == ["seed", "binary_contrastive", "l2", "kmeans", "online_clustering", "seed_mocov2"]
    from seedrun.training import strategies
    assert strategies.loss_for("seed") is seed_loss
    assert strategies.loss_for("l2") is l2_loss
    assert strategies.loss_module_for("online_clustering") is OnlineClusteringLoss
    for name, strategy in strategies.STRATEGIES.items():
        assert strategy.name == name and strategy.description
        assert callable(strategies.loss_for(name))
        assert issubclass(strategies.loss_module_for(name), torch.nn.Module)
    with pytest.raises(KeyError, match="known"):
        strategies.loss_for("nope")
