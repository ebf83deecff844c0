"""Tests of the SEED loss (seedrun.losses.seed) and the FIFO embedding queue (seedrun.training.queue)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seedrun.losses import SEEDLoss, seed_loss
from seedrun.training.queue import EmbeddingQueue

torch.set_num_threads(1)

DT = torch.float64


def unit(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=DT), dim=-1)


def naive_seed(zs: list, zt: list, queue: list, tau_s: float, tau_t: float) -> float:
    """Loop version: keys D+ = [own teacher embedding] + queue rows; soft cross-entropy, batch mean."""
    total = 0.0
    for s, t in zip(zs, zt):
        keys = [t] + queue
        lt = [sum(a * b for a, b in zip(t, k)) / tau_t for k in keys]
        ls = [sum(a * b for a, b in zip(s, k)) / tau_s for k in keys]
        mt, ms = max(lt), max(ls)
        zt_sum = sum(math.exp(v - mt) for v in lt)
        lse_s = ms + math.log(sum(math.exp(v - ms) for v in ls))
        total -= sum(math.exp(a - mt) / zt_sum * (b - lse_s) for a, b in zip(lt, ls))
    return total / len(zs)


@pytest.mark.parametrize("tau_s,tau_t", [(0.2, 0.01), (0.2, 1e-4), (0.1, 0.07), (1.0, 1.0)])
def test_seed_loss_matches_naive(tau_s, tau_t):
    zs, zt, queue = unit(5, 6, seed=1), unit(5, 6, seed=2), unit(9, 6, seed=3)
    got = seed_loss(zs, zt, queue, tau_s, tau_t).item()
    assert got == pytest.approx(naive_seed(zs.tolist(), zt.tolist(), queue.tolist(), tau_s, tau_t), abs=1e-6)
    assert SEEDLoss(tau_s, tau_t)(zs, zt, queue).item() == pytest.approx(got, abs=1e-12)


def test_seed_loss_hand_computed():
    # z_S = e0, z_T = e1, queue = [e0], both taus 1: teacher logits [1, 0] -> p = [e, 1] / (e + 1);
    # student logits [0, 1] -> log p_S = [-log(1 + e), 1 - log(1 + e)];
    # L = log(1 + e) - 1 / (1 + e).
    e0 = torch.tensor([[1.0, 0.0]], dtype=DT)
    e1 = torch.tensor([[0.0, 1.0]], dtype=DT)
    want = math.log(1 + math.e) - 1 / (1 + math.e)
    assert seed_loss(e0, e1, e0, 1.0, 1.0).item() == pytest.approx(want, abs=1e-12)
    # Student equals teacher and queue orthogonal: with tau_T tiny the target is one-hot on the own
    # key, logits [1, 0] / 0.5 -> log(1 + e^-2).
    assert seed_loss(e1, e1, e0, 0.5, 1e-6).item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-12)


def test_seed_loss_own_teacher_embedding_is_first_key():
    # Swapping the batch's teacher embeddings changes the positive, so the loss changes; permuting
    # the queue does not.
    zs, zt, queue = unit(4, 6, seed=4), unit(4, 6, seed=5), unit(8, 6, seed=6)
    base = seed_loss(zs, zt, queue, 0.2, 0.01)
    assert seed_loss(zs, zt, queue.flip(0), 0.2, 0.01).item() == pytest.approx(base.item(), abs=1e-12)
    assert seed_loss(zs, zt.roll(1, 0), queue, 0.2, 0.01).item() != pytest.approx(base.item(), abs=1e-6)


def test_seed_loss_gradient_only_to_student_and_rejects_bad_temperatures():
    zs = unit(3, 6, seed=7).requires_grad_()
    zt = unit(3, 6, seed=8)
    seed_loss(zs, zt, unit(5, 6, seed=9), 0.2, 0.01).backward()
    assert zs.grad is not None and torch.isfinite(zs.grad).all()
    with pytest.raises(ValueError):
        seed_loss(zs, zt, unit(5, 6, seed=9), 0.0, 0.01)
    with pytest.raises(ValueError):
        seed_loss(zs, zt, unit(5, 6, seed=9), 0.2, -1.0)


def test_queue_starts_as_unit_vectors_and_is_seeded():
    q1 = EmbeddingQueue(8, 4, generator=torch.Generator().manual_seed(0))
    q2 = EmbeddingQueue(8, 4, generator=torch.Generator().manual_seed(0))
    assert len(q1) == 8 and q1.pointer == 0
    assert torch.allclose(q1.embeddings.norm(dim=1), torch.ones(8))
    assert torch.equal(q1.embeddings, q2.embeddings)


def test_queue_is_fifo_and_wraps():
    q = EmbeddingQueue(6, 2, generator=torch.Generator().manual_seed(0))
    initial = q.embeddings.clone()

    def batch(start: int, n: int) -> torch.Tensor:
        return torch.arange(start, start + n, dtype=torch.float32)[:, None].repeat(1, 2)

    q.push(batch(100, 4))
    assert q.pointer == 4
    assert q.embeddings[:4, 0].tolist() == [100, 101, 102, 103]
    assert torch.equal(q.embeddings[4:], initial[4:])  # untouched slots keep their initial values
    q.push(batch(200, 4))  # wraps: slots 4, 5, then 0, 1 (the oldest) are overwritten
    assert q.pointer == 2
    assert q.embeddings[:, 0].tolist() == [202, 203, 102, 103, 200, 201]
    q.push(batch(300, 2))
    assert q.pointer == 4
    assert q.embeddings[:, 0].tolist() == [202, 203, 300, 301, 200, 201]
    # batch size dividing K: pointer cycles back to 0 exactly
    q2 = EmbeddingQueue(6, 2)
    for i in range(3):
        q2.push(batch(10 * i, 2))
    assert q2.pointer == 0 and q2.embeddings[:, 0].tolist() == [0, 1, 10, 11, 20, 21]


def test_queue_push_detaches_casts_and_round_trips():
    q = EmbeddingQueue(4, 3)
    x = torch.ones(2, 3, dtype=DT, requires_grad=True)
    q.push(x * 2)
    assert q.embeddings.dtype == torch.float32 and not q.embeddings.requires_grad
    state = q.state_dict()
    r = EmbeddingQueue(4, 3)
    r.load_state_dict(state)
    assert r.pointer == 2 and torch.equal(r.embeddings, q.embeddings)
