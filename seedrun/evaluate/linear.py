"""Linear probes of a frozen backbone: the protocols by name.

Three protocols (see /work/shared/method-notes.md, "Evaluation protocols in use"):

* ``MOCO`` -- the published SEED / MoCo protocol (``main_lincls.py``): the fc is trained on
  RandomResizedCrop (scale 0.08-1, aspect 3/4-4/3) + horizontal-flip views of the training images,
  drawn afresh every epoch and passed through the frozen backbone (eval mode: BN running statistics),
  so features are never cached; fc initialised N(0, 0.01), bias 0; SGD lr 30 x B/256, momentum 0.9,
  weight decay 0, 100 epochs, lr x0.1 at epochs 60 and 80; the best validation top-1 over the
  epochs is reported (top-5 is the one of that epoch). Validation views are the evaluation views of
  the loader: Resize(256 s / 224) -> CenterCrop(s) when streamed (Resize 256 -> CenterCrop 224 on
  ImageNet), the whole stored s x s image for in-memory sets (see ``augmented_probe``).
* ``CACHED`` -- MoCo's hyper-parameters on cached features of un-augmented images: the fast variant
  (one backbone pass per image in all), typically somewhat lower than ``MOCO``. Linear results
  recorded before the protocols had names were this one (seedrun.store.protocols).
* ``COMPRESS`` (CompRess / SimReg ``eval_linear.py``), cached features by design: L2-normalised,
  then standardised with the training set's per-dimension mean and (biased) variance, held fixed
  ("full-batch BN", eps 1e-5); ``nn.Linear``'s default init; SGD lr 0.01, momentum 0.9, weight
  decay 1e-4, 40 epochs, lr x0.1 at 15 and 30.

``LinearProtocol.views`` says which training inputs a protocol takes: ``"augmented"`` (fresh views
through the backbone: ``augmented_probe``) or ``"cached"`` (fixed features: ``linear_probe``).
``linear_probe`` applies any protocol's hyper-parameters to the features it is given (the transfer
probes, which always cache, use it so). "Best validation accuracy" is measured on the set passed as
``val_*``; when that is the test set (as in the papers) the number is optimistically biased.

The training loop is plain tensor code (no DataLoader, no autograd): each step computes the
softmax cross-entropy gradient ``(softmax(xW^T + b) - onehot(y)) / B`` by hand and applies the
same update as ``torch.optim.SGD`` (dampening 0, no Nesterov; weight decay on weight and bias,
as both originals do), in float32 whatever precision the backbone ran in. Shuffling and
initialisation use a private ``torch.Generator`` seeded with ``seed``, so a call is deterministic
and leaves the global RNG alone.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CACHED",
    "COMPRESS",
    "MOCO",
    "PROTOCOLS",
    "LinearProtocol",
    "augmented_probe",
    "linear_probe",
    "prepare_features",
    "train_linear",
]


@dataclass(frozen=True)
class LinearProtocol:
    """Hyper-parameters of a linear-probe protocol. Change one with ``dataclasses.replace``."""

    name: str
    lr: float
    """Base learning rate; multiplied by batch_size / 256 when ``scale_lr_with_batch``."""
    scale_lr_with_batch: bool
    momentum: float
    weight_decay: float
    epochs: int
    milestones: tuple[int, ...]
    """Epochs (0-based) from which the lr is multiplied by another ``gamma``."""
    gamma: float = 0.1
    l2_normalize: bool = False
    standardize: bool = False
    """Subtract the training mean and divide by sqrt(training variance + bn_eps), per dimension."""
    bn_eps: float = 1e-5
    init_std: float | None = 0.01
    """Weight init N(0, init_std), bias 0; None: nn.Linear's U(-1/sqrt(d), 1/sqrt(d)) for both."""
    select: str = "best"
    """"best": report the epoch with the best validation top-1; "last": the final epoch."""
    views: str = "cached"
    """"augmented": fresh crop + flip views through the frozen backbone every epoch
    (``augmented_probe``); "cached": fixed features of un-augmented images (``linear_probe``)."""
    crop_scale: tuple[float, float] = (0.08, 1.0)
    """RandomResizedCrop's area range of the augmented views (torchvision's default, as lincls)."""

    def __post_init__(self) -> None:
        if self.select not in ("best", "last"):
            raise ValueError(f"select must be 'best' or 'last', got {self.select!r}")
        if self.views not in ("augmented", "cached"):
            raise ValueError(f"views must be 'augmented' or 'cached', got {self.views!r}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")

    def with_epochs(self, epochs: int) -> LinearProtocol:
        """The same protocol over ``epochs`` epochs, milestones scaled in proportion (rounded):
        MOCO at 20 epochs steps at 12 and 16."""
        if epochs == self.epochs:
            return self
        milestones = tuple(round(m * epochs / self.epochs) for m in self.milestones)
        return replace(self, epochs=epochs, milestones=milestones)

    def lr_at(self, epoch: int, batch_size: int) -> float:
        """Learning rate of a (0-based) epoch."""
        lr = self.lr * (batch_size / 256 if self.scale_lr_with_batch else 1.0)
        return lr * self.gamma ** sum(epoch >= m for m in self.milestones)


MOCO = LinearProtocol(
    name="moco",
    lr=30.0,
    scale_lr_with_batch=True,
    momentum=0.9,
    weight_decay=0.0,
    epochs=100,
    milestones=(60, 80),
    init_std=0.01,
    views="augmented",
)

# The same hyper-parameters on cached features: what "moco" meant before the protocols had names.
CACHED = replace(MOCO, name="cached", views="cached")

COMPRESS = LinearProtocol(
    name="compress",
    lr=0.01,
    scale_lr_with_batch=False,
    momentum=0.9,
    weight_decay=1e-4,
    epochs=40,
    milestones=(15, 30),
    l2_normalize=True,
    standardize=True,
    init_std=None,
)

PROTOCOLS: dict[str, LinearProtocol] = {p.name: p for p in (MOCO, CACHED, COMPRESS)}


def prepare_features(
    train_features: Tensor, val_features: Tensor, protocol: LinearProtocol
) -> tuple[Tensor, Tensor]:
    """The protocol's fixed feature transform (float32): L2 normalisation and/or standardisation
    with statistics of the training features only, applied to both sets."""
    train = train_features.detach().float()
    val = val_features.detach().float()
    if protocol.l2_normalize:
        train, val = F.normalize(train, dim=1), F.normalize(val, dim=1)
    if protocol.standardize:
        mean = train.mean(dim=0)
        inv_std = torch.rsqrt(train.var(dim=0, unbiased=False) + protocol.bn_eps)
        train, val = (train - mean) * inv_std, (val - mean) * inv_std
    return train.contiguous(), val.contiguous()


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    val_features: Tensor,
    val_labels: Tensor,
    num_classes: int,
    protocol: LinearProtocol | str = CACHED,
    batch_size: int = 256,
    seed: int = 0,
    epochs: int | None = None,
    device: torch.device | str | None = None,
) -> dict[str, float | int]:
    """Train a linear classifier on fixed (cached) features; accuracies in percent.

    Args:
        train_features, val_features: (N, d) float tensors (any float dtype; computed in float32).
        train_labels, val_labels: integer labels in [0, num_classes).
        protocol: ``CACHED``, ``COMPRESS``, a name from ``PROTOCOLS`` or any ``LinearProtocol``: its
            hyper-parameters on these features (``MOCO``'s augmented views are ``augmented_probe``'s;
            given here, only its hyper-parameters apply, which is ``CACHED``).
        batch_size: samples per SGD step (the last step of an epoch takes the remainder).
        seed: seeds the initialisation and the per-epoch shuffles (private generator).
        epochs: override the protocol's epochs; milestones scale with it (``with_epochs``).
        device: where to train; default the training features' device.

    Returns:
        ``{"linear_top1", "linear_top5", "best_epoch", "final_top1", "final_top5", "epochs"}``:
        top-1/top-5 of the selected epoch (best validation top-1, earliest on ties, or the last,
        per ``protocol.select``), its 1-based number, and the final epoch's accuracies. With fewer
        than 5 classes top-5 is top-C (100).
    """
    if isinstance(protocol, str):
        protocol = PROTOCOLS[protocol]
    if epochs is not None:
        protocol = protocol.with_epochs(epochs)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else train_features.device
    _check(train_features, train_labels, num_classes, "train")
    _check(val_features, val_labels, num_classes, "val")
    if val_features.shape[1] != train_features.shape[1]:
        raise ValueError(
            f"feature dims differ: train {train_features.shape[1]}, val {val_features.shape[1]}"
        )
    x_train, x_val = prepare_features(
        train_features.to(device), val_features.to(device), protocol
    )
    y_train = train_labels.to(device=device, dtype=torch.long)
    y_val = val_labels.to(device=device, dtype=torch.long)

    best = [-1.0, 0.0, 0]  # top1, top5, epoch
    last = [0.0, 0.0]

    def on_epoch(epoch: int, weight: Tensor, bias: Tensor) -> None:
        top1, top5 = _accuracy(x_val, y_val, weight, bias)
        last[:] = [top1, top5]
        if top1 > best[0]:
            best[:] = [top1, top5, epoch + 1]

    train_linear(x_train, y_train, num_classes, protocol, batch_size, seed, on_epoch)
    return _probe_result(best, last, protocol)


def _probe_result(best: list, last: list, protocol: LinearProtocol) -> dict[str, float]:
    """The reported numbers: the best epoch's by validation top-1 (MoCo's), or the last (``select``)."""
    if protocol.select == "last":
        best = [last[0], last[1], protocol.epochs]
    return {"linear_top1": best[0], "linear_top5": best[1], "best_epoch": best[2],
            "final_top1": last[0], "final_top5": last[1], "epochs": protocol.epochs}


def train_linear(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    protocol: LinearProtocol,
    batch_size: int = 256,
    seed: int = 0,
    on_epoch: Callable[[int, Tensor, Tensor], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """SGD on softmax cross-entropy over already prepared features (``prepare_features``); returns
    (weight (C, d), bias (C,)). ``on_epoch(epoch, weight, bias)`` is called after each (0-based)
    epoch with the live tensors (do not modify them). Same update as ``torch.optim.SGD`` with the
    protocol's lr schedule; the tests check it against autograd + ``torch.optim.SGD``."""
    device = features.device
    x_all = features.float()
    y_all = labels.to(device=device, dtype=torch.long)
    n, dim = x_all.shape
    gen = torch.Generator().manual_seed(seed)
    weight, bias = _init(num_classes, dim, protocol.init_std, gen)
    weight, bias = weight.to(device), bias.to(device)
    buf_w, buf_b = torch.zeros_like(weight), torch.zeros_like(bias)
    eye = torch.eye(num_classes, device=device)
    first = True
    for epoch in range(protocol.epochs):
        lr = protocol.lr_at(epoch, batch_size)
        order = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            _step(x_all[idx], y_all[idx], weight, bias, buf_w, buf_b, eye, lr, protocol, first)
            first = False
        if on_epoch is not None:
            on_epoch(epoch, weight, bias)
    return weight, bias


def augmented_probe(
    backbone: torch.nn.Module,
    train_epoch: Callable[[int], Iterable[tuple[Tensor, Tensor]]],
    val_features: Tensor,
    val_labels: Tensor,
    num_classes: int,
    protocol: LinearProtocol | str = MOCO,
    batch_size: int = 256,
    seed: int = 0,
    epochs: int | None = None,
    device: torch.device | str | None = None,
    precision: Callable[[], contextlib.AbstractContextManager] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, float | int]:
    """Train a linear classifier on fresh augmented views through a frozen backbone (``MOCO``).

    Args:
        backbone: put in eval mode (BN running statistics, no dropout, as lincls) and only ever
            called under ``torch.no_grad``: its parameters and buffers are never changed.
        train_epoch: ``train_epoch(epoch)`` yields that (0-based) epoch's batches as (normalised
            float images (B, C, H, W), labels (B,)): new RandomResizedCrop + flip views each epoch
            (seedrun.evaluate.probe_views gives them from either loader).
        val_features, val_labels: the validation set's features by the same backbone and
            precision (evaluation views; a frozen backbone gives them once for all epochs).
        batch_size: the nominal batch the lr is scaled by (lr x batch_size / 256); the batches
            ``train_epoch`` yields are this size but for an epoch's last one.
        epochs: override the protocol's epochs; milestones scale with it (``with_epochs``).
        precision: a context manager factory for the backbone's forward (bf16 autocast on a GPU,
            seedrun.training.loop.autocast); the fc always runs in float32.

    Returns: as ``linear_probe``.
    """
    if isinstance(protocol, str):
        protocol = PROTOCOLS[protocol]
    if epochs is not None:
        protocol = protocol.with_epochs(epochs)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else val_features.device
    _check(val_features, val_labels, num_classes, "val")
    x_val = val_features.detach().to(device).float()
    y_val = val_labels.to(device=device, dtype=torch.long)
    precision = precision or contextlib.nullcontext
    backbone.eval()
    gen = torch.Generator().manual_seed(seed)
    weight, bias = _init(num_classes, x_val.shape[1], protocol.init_std, gen)
    weight, bias = weight.to(device), bias.to(device)
    buf_w, buf_b = torch.zeros_like(weight), torch.zeros_like(bias)
    eye = torch.eye(num_classes, device=device)
    best, last, first = [-1.0, 0.0, 0], [0.0, 0.0], True
    for epoch in range(protocol.epochs):
        lr = protocol.lr_at(epoch, batch_size)
        seen = 0
        for images, labels in train_epoch(epoch):
            with torch.no_grad(), precision():
                x = backbone(images.to(device, non_blocking=True)).flatten(1)
            y = labels.to(device=device, dtype=torch.long)
            _step(x.float(), y, weight, bias, buf_w, buf_b, eye, lr, protocol, first)
            first, seen = False, seen + len(y)
        if not seen:
            raise ValueError(f"epoch {epoch}: the training views gave no batch")
        top1, top5 = _accuracy(x_val, y_val, weight, bias)
        last[:] = [top1, top5]
        if top1 > best[0]:
            best[:] = [top1, top5, epoch + 1]
        if log is not None:
            log(f"linear probe ({protocol.name}) epoch {epoch + 1}/{protocol.epochs}: lr {lr:g}, "
                f"top-1 {top1:.2f}")
    return _probe_result(best, last, protocol)


def _step(
    x: Tensor, y: Tensor, weight: Tensor, bias: Tensor, buf_w: Tensor, buf_b: Tensor, eye: Tensor,
    lr: float, protocol: LinearProtocol, first: bool,
) -> None:
    """One SGD step of the fc on a batch of float32 features."""
    # d(mean cross-entropy)/d logits = (softmax - onehot) / B
    grad_logits = torch.softmax(torch.addmm(bias, x, weight.t()), dim=1)
    grad_logits.sub_(eye[y]).div_(x.shape[0])
    grad_w = grad_logits.t().mm(x)
    grad_b = grad_logits.sum(dim=0)
    _sgd_step(weight, grad_w, buf_w, lr, protocol, first)
    _sgd_step(bias, grad_b, buf_b, lr, protocol, first)


def _check(features: Tensor, labels: Tensor, num_classes: int, which: str) -> None:
    if features.dim() != 2 or not features.is_floating_point():
        raise ValueError(f"{which} features must be a 2-D float tensor, got {tuple(features.shape)}")
    if features.shape[0] == 0:
        raise ValueError(f"{which} features are empty")
    if labels.shape != (features.shape[0],):
        raise ValueError(f"{which} labels must have shape ({features.shape[0]},)")
    if labels.is_floating_point():
        raise TypeError(f"{which} labels must be integers")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"{which} labels must lie in [0, {num_classes})")


def _init(
    num_classes: int, dim: int, init_std: float | None, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    if init_std is None:  # nn.Linear.reset_parameters: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(d))
        bound = 1.0 / math.sqrt(dim)
        weight = torch.empty(num_classes, dim).uniform_(-bound, bound, generator=gen)
        bias = torch.empty(num_classes).uniform_(-bound, bound, generator=gen)
    else:
        weight = torch.empty(num_classes, dim).normal_(0.0, init_std, generator=gen)
        bias = torch.zeros(num_classes)
    return weight, bias


def _sgd_step(
    param: Tensor, grad: Tensor, buf: Tensor, lr: float, protocol: LinearProtocol, first: bool
) -> None:
    """torch.optim.SGD's update (dampening 0, no Nesterov): the first step's buffer is the grad."""
    if protocol.weight_decay:
        grad = grad.add(param, alpha=protocol.weight_decay)
    if protocol.momentum:
        if first:
            buf.copy_(grad)
        else:
            buf.mul_(protocol.momentum).add_(grad)
        grad = buf
    param.sub_(grad, alpha=lr)


def _accuracy(
    x: Tensor, y: Tensor, weight: Tensor, bias: Tensor, chunk: int = 8192
) -> tuple[float, float]:
    top_n = min(5, weight.shape[0])
    hits1 = hits5 = 0
    for start in range(0, x.shape[0], chunk):
        logits = torch.addmm(bias, x[start : start + chunk], weight.t())
        ranked = logits.topk(top_n, dim=1).indices
        hit = ranked == y[start : start + chunk].unsqueeze(1)
        hits1 += int(hit[:, 0].sum())
        hits5 += int(hit.any(dim=1).sum())
    return 100.0 * hits1 / x.shape[0], 100.0 * hits5 / x.shape[0]
