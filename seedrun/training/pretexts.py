"""Self-supervised pre-training objectives for teachers and student-alone baselines, one class a method,
chosen by `pretrain.method` through PRETEXTS, the one table of them (its names are those of
seedrun.models.catalog.METHODS, which `seedrun list` prints without importing torch; a test checks
they agree). Each sees two augmented views of a batch and the encoder being trained (backbone + the
method's projection head) and returns its loss from seedrun.losses.

- mocov2 (Chen et al. 2020; official moco/builder.py): momentum key encoder, queue of keys, infonce_loss.
- simclr (Chen et al. 2020): ntxent_loss over the 2N views of the batch, no queue, BN projection head.
- swav (Caron et al. 2020): normalised prototypes, Sinkhorn codes (epsilon 0.05, 3 iterations),
  swav_loss (swapped prediction); prototypes renormalised after each step.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seedrun.losses import infonce_loss, ntxent_loss, swav_loss
from seedrun.training.objectives import LossWithState, momentum_update
from seedrun.training.queue import EmbeddingQueue


class Pretext(LossWithState):
    def forward(self, encoder: nn.Module, view_a: Tensor, view_b: Tensor) -> Tensor:
        raise NotImplementedError


class MoCoV2(Pretext):
    def __init__(self, p: dict[str, Any], encoder: nn.Module, seed: int):
        super().__init__()
        self.momentum, self.tau = p["encoder_momentum"], p["tau"]
        self.key_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.queue = EmbeddingQueue(p["queue_size"], p["dim"], torch.Generator().manual_seed(seed))

    def forward(self, encoder, view_a, view_b):
        self.key_encoder.train()  # as in MoCo: the key encoder's BN uses batch statistics
        q = F.normalize(encoder(view_a).float(), dim=1)
        momentum_update(self.key_encoder, encoder, self.momentum)
        with torch.no_grad():
            self._keys = F.normalize(self.key_encoder(view_b).float(), dim=1)
        return infonce_loss(q, self._keys, self.queue.embeddings.to(q.device), self.tau)

    def after_step(self):
        self.queue.push(self._keys.cpu())

    def extra_state(self):
        return {"queue": self.queue.state_dict()}

    def load_extra_state(self, state):
        self.queue.load_state_dict(state["queue"])


class SimCLR(Pretext):
    def __init__(self, p: dict[str, Any], encoder: nn.Module, seed: int):
        super().__init__()
        self.tau = p["tau"]

    def forward(self, encoder, view_a, view_b):
        return ntxent_loss(encoder(view_a).float(), encoder(view_b).float(), self.tau)


class SwAV(Pretext):
    def __init__(self, p: dict[str, Any], encoder: nn.Module, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.prototypes = nn.Parameter(F.normalize(torch.randn(p["prototypes"], p["dim"], generator=generator), dim=1))
        self.tau, self.epsilon, self.iterations = p["tau"], p["sinkhorn_epsilon"], p["sinkhorn_iterations"]

    def forward(self, encoder, view_a, view_b):
        scores = [F.normalize(encoder(view).float(), dim=1) @ self.prototypes.T for view in (view_a, view_b)]
        return swav_loss(scores, self.tau, self.epsilon, self.iterations)

    @torch.no_grad()
    def after_step(self):
        self.prototypes.copy_(F.normalize(self.prototypes, dim=1))


PRETEXTS: dict[str, type[Pretext]] = {"mocov2": MoCoV2, "simclr": SimCLR, "swav": SwAV}


def create_pretext(p: dict[str, Any], encoder: nn.Module, seed: int) -> Pretext:
    if p["method"] not in PRETEXTS:
        raise ValueError(f"pretrain.method {p['method']!r} is unknown; known: {', '.join(PRETEXTS)}")
    return PRETEXTS[p["method"]](p, encoder, seed)
