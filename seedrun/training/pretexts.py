"""Self-supervised pre-training objectives for teachers and student-alone baselines, one class a method,
chosen by `pretrain.method` through PRETEXTS, the one table of them (its names are those of
seedrun.models.catalog.METHODS, which `seedrun list` prints without importing torch; a test checks
they agree). Each sees two augmented views of a batch and the encoder being trained (backbone + the
method's projection head) and returns its loss from seedrun.losses.

- mocov2 (Chen et al. 2020; official moco/builder.py): momentum key encoder, queue of keys, infonce_loss,
  shuffle BN (below).
- simclr (Chen et al. 2020): ntxent_loss over the 2N views of the batch, no queue, BN projection head.
- swav (Caron et al. 2020): normalised prototypes, Sinkhorn codes (epsilon 0.05, 3 iterations),
  swav_loss (swapped prediction); prototypes renormalised after each step.

Shuffle BN (MoCo, He et al. 2020 sec. 3.3; official `_batch_shuffle_ddp`): BatchNorm lets the samples of a
batch communicate, so if the key encoder normalised its batch with the statistics of the same images the
query encoder saw, the network could tell the positive key from the queue's by their shared batch
statistics and "cheat" the pretext (a loss that falls fast while the features stay poor).
MoCo computes BN statistics per GPU and shuffles the key batch across GPUs. Here the global batch is split
into `pretrain.shuffle_bn_groups` BN groups (the GPUs MoCo would have had), spread evenly over the
processes: the query encoder normalises each contiguous group of its batch on its own (`batchnorm_groups`),
the key encoder normalises groups of the *permuted* global batch, and the keys are unshuffled. The
permutation is drawn from a generator seeded by (seed, step), identical on every rank and on a resumed run.
One process with G groups computes what G processes with one group each compute.

Under several processes (seedrun.training.distributed) MoCo-v2 all-gathers the keys into every rank's queue in
rank order, so the queues stay identical; SimCLR and SwAV keep negatives and Sinkhorn codes per process and
are refused there (`check_ranks`).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seedrun.losses import infonce_loss, ntxent_loss, swav_loss
from seedrun.training import distributed
from seedrun.training.objectives import LossWithState, momentum_update
from seedrun.training.queue import EmbeddingQueue

#: BN groups of the global batch when `pretrain.shuffle_bn_groups` is not set (or null): at least 4, one per
#: process or more (4 // processes a process): 4 makes groups of 32 from the CPU recipes' batch of 128, the
#: official MoCo's 32 images per GPU (256 over 8 GPUs), and groups of 8 from the tests' batch of 32; MoCo's
#: 8 GPUs would leave 16 per group at 128, 4 at 32 (noisier statistics).
DEFAULT_SHUFFLE_BN_GROUPS = 4


def shuffle_bn_groups(p: dict[str, Any], world: int = 1) -> int:
    """`pretrain.shuffle_bn_groups`: BN groups of the global batch (1 turns shuffle BN off); unset or null: the
    default for `world` processes, `world` x max(1, 4 // world)."""
    groups = p.get("shuffle_bn_groups")
    if groups is None:
        return world * max(1, DEFAULT_SHUFFLE_BN_GROUPS // world)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"pretrain.shuffle_bn_groups: expected an integer >= 1, got {groups!r}")
    return groups


def check_shuffle_bn(groups: int, global_batch: int, world: int) -> int:
    """The BN groups each of `world` processes forms from its part of `global_batch`; raises when they do not
    split evenly or a group would hold one image (BatchNorm needs two to have a variance)."""
    if groups % world:
        raise ValueError(f"pretrain.shuffle_bn_groups: expected a multiple of the {world} processes, got {groups}")
    if global_batch % groups or global_batch // groups < 2:
        raise ValueError(f"pretrain.shuffle_bn_groups: expected a divisor of pretrain.batch_size={global_batch} "
                         f"leaving groups of at least 2 images, got {groups}")
    return groups // world


def _grouped_batch_norm(bn: nn.modules.batchnorm._BatchNorm, groups: int, x: Tensor) -> Tensor:
    """bn(x) with statistics computed per contiguous group of x's rows (official MoCo CIFAR demo's
    SplitBatchNorm, with contiguous rather than strided groups so that group g is what rank g would hold):
    the G groups side by side as G x C channels, one batch_norm call, running statistics averaged over groups."""
    n, c, rest = x.shape[0], x.shape[1], x.shape[2:]
    side_by_side = x.reshape(groups, n // groups, c, *rest).transpose(0, 1).reshape(n // groups, groups * c, *rest)
    factor = 0.0 if bn.momentum is None else bn.momentum
    running_mean = running_var = None
    if bn.track_running_stats and bn.running_mean is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average, as _BatchNorm.forward
            factor = 1.0 / float(bn.num_batches_tracked)
        running_mean, running_var = bn.running_mean.repeat(groups), bn.running_var.repeat(groups)
    weight = bn.weight.repeat(groups) if bn.weight is not None else None
    bias = bn.bias.repeat(groups) if bn.bias is not None else None
    out = F.batch_norm(side_by_side, running_mean, running_var, weight, bias, True, factor, bn.eps)
    if running_mean is not None:
        with torch.no_grad():
            bn.running_mean.copy_(running_mean.view(groups, c).mean(dim=0))
            bn.running_var.copy_(running_var.view(groups, c).mean(dim=0))
    return out.reshape(n // groups, groups, c, *rest).transpose(0, 1).reshape(n, c, *rest)


@contextlib.contextmanager
def batchnorm_groups(module: nn.Module, groups: int) -> Iterator[None]:
    """Within the block, every BatchNorm of `module` in training mode normalises each of `groups` contiguous
    groups of its batch with the group's own statistics, as if each group were on a GPU of its own. The
    modules stay plain BatchNorms (saved models load anywhere): only their forward is swapped, then restored."""
    if groups == 1:
        yield
        return
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in layers:
        plain = bn.forward

        def forward(x, bn=bn, plain=plain):
            if not bn.training:
                return plain(x)
            if x.shape[0] % groups:
                raise ValueError(f"a batch of {x.shape[0]} does not split into {groups} BatchNorm groups")
            return _grouped_batch_norm(bn, groups, x)
        bn.forward = forward
    try:
        yield
    finally:
        for bn in layers:
            del bn.forward  # the instance attribute: the class's forward again


def shuffle_permutation(n: int, seed: int, step: int) -> Tensor:
    """The key batch's permutation at `step`: from (seed, step) alone, so every rank draws the same one without
    a broadcast (official MoCo broadcasts rank 0's) and a resumed run draws what the interrupted one would."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + step + 7))


class Pretext(LossWithState):
    def forward(self, encoder: nn.Module, view_a: Tensor, view_b: Tensor, step: int = 0) -> Tensor:
        """`encoder` is the network being trained as the step calls it (DistributedDataParallel under several
        processes); `step` seeds what a step draws (shuffle BN's permutation)."""
        raise NotImplementedError

    #: whether the pretext is the one-process recipe under several processes (keys gathered, statistics shared)
    runs_on_ranks = False

    def replicated(self) -> list[Tensor]:
        """State besides parameters that every rank must hold identically (checked at each checkpoint)."""
        return []


class MoCoV2(Pretext):
    runs_on_ranks = True

    def __init__(self, p: dict[str, Any], encoder: nn.Module, seed: int):
        super().__init__()
        self.momentum, self.tau, self.seed = p["encoder_momentum"], p["tau"], seed
        self.settings = p
        shuffle_bn_groups(p)  # bad values fail here, before training
        self._encoder = [encoder]  # in a list, not a submodule: the recipe saves and optimises it
        self.key_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.queue = EmbeddingQueue(p["queue_size"], p["dim"], torch.Generator().manual_seed(seed))

    def forward(self, encoder, view_a, view_b, step=0):
        ranks = distributed.current()
        groups = check_shuffle_bn(shuffle_bn_groups(self.settings, ranks.world), view_a.shape[0] * ranks.world,
                                  ranks.world)  # this rank's
        self.key_encoder.train()  # as in MoCo: the key encoder's BN uses batch statistics
        with batchnorm_groups(self._encoder[0], groups):  # as many BN groups as MoCo's GPUs would have
            q = F.normalize(encoder(view_a).float(), dim=1)
        momentum_update(self.key_encoder, self._encoder[0], self.momentum)
        with torch.no_grad():
            # official _batch_shuffle_ddp: gather every rank's key images, permute the global batch, each rank
            # encodes its slice of the permuted batch; then gather the keys and undo the permutation
            everything = distributed.concat_all_gather(view_b)
            order = shuffle_permutation(everything.shape[0], self.seed, step).to(everything.device)
            mine = everything[order].chunk(ranks.world)[ranks.rank]
            with batchnorm_groups(self.key_encoder, groups):
                shuffled = distributed.concat_all_gather(self.key_encoder(mine).float())
            keys = torch.empty_like(shuffled)
            keys[order] = shuffled  # unshuffle: row order[i] of the batch was encoded i-th
            self._keys = F.normalize(keys, dim=1)  # every rank's, in rank order: what the queue receives
        n = view_a.shape[0]
        own = self._keys[ranks.rank * n:(ranks.rank + 1) * n]
        return infonce_loss(q, own, self.queue.embeddings.to(q.device), self.tau)

    def after_step(self):
        self.queue.push(self._keys.cpu())

    def replicated(self):
        return [self.queue.embeddings, torch.tensor(self.queue.pointer)]

    def extra_state(self):
        return {"queue": self.queue.state_dict()}

    def load_extra_state(self, state):
        self.queue.load_state_dict(state["queue"])


class SimCLR(Pretext):
    def __init__(self, p: dict[str, Any], encoder: nn.Module, seed: int):
        super().__init__()
        self.tau = p["tau"]

    def forward(self, encoder, view_a, view_b, step=0):
        return ntxent_loss(encoder(view_a).float(), encoder(view_b).float(), self.tau)


class SwAV(Pretext):
    def __init__(self, p: dict[str, Any], encoder: nn.Module, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.prototypes = nn.Parameter(F.normalize(torch.randn(p["prototypes"], p["dim"], generator=generator), dim=1))
        self.tau, self.epsilon, self.iterations = p["tau"], p["sinkhorn_epsilon"], p["sinkhorn_iterations"]

    def forward(self, encoder, view_a, view_b, step=0):
        scores = [F.normalize(encoder(view).float(), dim=1) @ self.prototypes.T for view in (view_a, view_b)]
        return swav_loss(scores, self.tau, self.epsilon, self.iterations)

    @torch.no_grad()
    def after_step(self):
        self.prototypes.copy_(F.normalize(self.prototypes, dim=1))


PRETEXTS: dict[str, type[Pretext]] = {"mocov2": MoCoV2, "simclr": SimCLR, "swav": SwAV}


def check_ranks(method: str, world: int) -> None:
    """Refuse a pretext that would not be its one-process recipe under `world` processes: SimCLR's NT-Xent
    would contrast against this rank's negatives only, SwAV's Sinkhorn would balance this rank's codes only."""
    if world > 1 and method in PRETEXTS and not PRETEXTS[method].runs_on_ranks:
        raise ValueError(f"pretrain.method: expected mocov2 under {world} processes per run "
                         f"({method} runs in one process only), got {method!r}")


def create_pretext(p: dict[str, Any], encoder: nn.Module, seed: int) -> Pretext:
    if p["method"] not in PRETEXTS:
        raise ValueError(f"pretrain.method {p['method']!r} is unknown; known: {', '.join(PRETEXTS)}")
    return PRETEXTS[p["method"]](p, encoder, seed)
