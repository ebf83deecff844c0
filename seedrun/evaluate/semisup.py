"""Semi-supervised evaluation: class-balanced labelled subsets, a disjoint validation split, and
fine-tuning of the whole network on the subset.

Subsets are drawn without a random number generator whose stream could change between library
versions: every sample index gets a key ``splitmix64(index ^ splitmix64(seed))`` (a fixed 64-bit
integer hash, Steele et al. 2014) and each class takes its samples in key order. So

* a subset depends only on the labels, the seed and the count (the same on every machine and
  numpy/torch version);
* subsets of one seed are nested (the 1 % subset is inside the 10 % one), and another seed gives
  another order;
* excluding samples (``exclude=``, e.g. a validation split) keeps the others' order, so only the
  excluded ones are replaced.

Subsets are saved as JSON with the seed, the fraction, the per-class count and a hash of the
labels they were drawn from (``save_subset`` / ``load_subset``), so a run can be repeated on
exactly the same images.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seedrun.atomic import atomic_write_json

from seedrun.evaluate.features import normalize_batch

__all__ = [
    "SUBSET_FORMAT",
    "finetune",
    "labelled_subset",
    "labels_sha256",
    "load_subset",
    "save_subset",
    "split_validation",
]

SUBSET_FORMAT = "seedrun-subset/1"

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's output function on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def _order_keys(n: int, seed: int) -> np.ndarray:
    seed_key = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    return _splitmix64(np.arange(n, dtype=np.uint64) ^ seed_key)


def _labels_array(labels: Tensor | Sequence[int] | np.ndarray) -> np.ndarray:
    arr = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError("labels must be a 1-D integer sequence")
    return arr.astype(np.int64)


def _per_class_take(
    labels: np.ndarray, count: int, seed: int, exclude: Tensor | Sequence[int] | None
) -> np.ndarray:
    """The first ``count`` samples of every class in key order, skipping ``exclude``; sorted."""
    keys = _order_keys(len(labels), seed)
    allowed = np.ones(len(labels), dtype=bool)
    if exclude is not None:
        excl = np.asarray(exclude.cpu() if isinstance(exclude, Tensor) else exclude, dtype=np.int64)
        allowed[excl] = False
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero((labels == c) & allowed)
        if len(members) < count:
            raise ValueError(
                f"class {c} has {len(members)} samples available, fewer than the {count} asked for"
            )
        order = np.lexsort((members, keys[members]))  # key order, index breaks (unlikely) ties
        chosen.append(members[order[:count]])
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def labelled_subset(
    labels: Tensor | Sequence[int] | np.ndarray,
    fraction: float | None = None,
    seed: int = 0,
    *,
    per_class: int | None = None,
    exclude: Tensor | Sequence[int] | None = None,
) -> Tensor:
    """Sorted int64 indices of a class-balanced labelled subset: the same number of samples from
    every class present in ``labels``.

    The count is ``per_class`` if given, else ``max(1, floor(fraction * N / C))`` with N samples
    and C classes, which is ``floor(fraction * n_c)`` for a balanced data set (ImageNet's 1 %:
    12 per class). A class with fewer available samples than the count raises ``ValueError``.
    ``exclude`` removes indices (e.g. a validation split) before choosing. Reproducible for a
    seed; see the module docstring for the ordering.
    """
    arr = _labels_array(labels)
    if per_class is None:
        if fraction is None or not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        num_classes = len(np.unique(arr))
        per_class = max(1, math.floor(fraction * len(arr) / max(num_classes, 1) + 1e-9))
    elif per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    return torch.as_tensor(_per_class_take(arr, per_class, seed, exclude), dtype=torch.long)


def split_validation(
    labels: Tensor | Sequence[int] | np.ndarray,
    per_class: int,
    seed: int = 0,
    *,
    exclude: Tensor | Sequence[int] | None = None,
) -> Tensor:
    """Sorted int64 indices of a validation split with ``per_class`` samples of every class.

    Pass the labelled subset as ``exclude`` to keep the two disjoint (or draw this first and pass
    it as ``exclude`` to ``labelled_subset``). The order uses ``seed`` with a different salt than
    ``labelled_subset``, so the same seed does not make the split mirror the subset."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    arr = _labels_array(labels)
    salted = (seed * 0x2545F4914F6CDD1D + 0x5EED) & 0xFFFFFFFFFFFFFFFF
    return torch.as_tensor(_per_class_take(arr, per_class, salted, exclude), dtype=torch.long)


def labels_sha256(labels: Tensor | Sequence[int] | np.ndarray) -> str:
    """Hex SHA-256 of the labels as little-endian int64: identifies the data set order a subset
    was drawn from."""
    return hashlib.sha256(_labels_array(labels).astype("<i8").tobytes()).hexdigest()


def save_subset(
    path: str | os.PathLike[str],
    indices: Tensor | Sequence[int],
    *,
    seed: int,
    fraction: float | None,
    labels: Tensor | Sequence[int] | np.ndarray | None = None,
    **extra: Any,
) -> None:
    """Write the subset as JSON (atomically): ``{"format", "seed", "fraction", "num_samples",
    "per_class", "labels_sha256", "indices", ...extra}``. With ``labels``, the per-class count and
    the labels' hash are recorded, and ``load_subset(..., labels=)`` can check them."""
    idx = [int(i) for i in (indices.tolist() if isinstance(indices, Tensor) else indices)]
    record: dict[str, Any] = {
        "format": SUBSET_FORMAT,
        "seed": seed,
        "fraction": fraction,
        "num_samples": len(idx),
        "per_class": None,
        "labels_sha256": None,
    }
    if labels is not None:
        arr = _labels_array(labels)
        counts = np.bincount(arr[idx]) if idx else np.zeros(0, dtype=np.int64)
        present = counts[counts > 0]
        record["per_class"] = int(present[0]) if len(present) and (present == present[0]).all() else None
        record["labels_sha256"] = labels_sha256(arr)
    record.update(extra)
    record["indices"] = idx
    atomic_write_json(path, record)


def load_subset(
    path: str | os.PathLike[str], labels: Tensor | Sequence[int] | np.ndarray | None = None
) -> tuple[Tensor, dict[str, Any]]:
    """Read a ``save_subset`` file: (int64 indices, the record without "indices"). With
    ``labels``, a recorded labels hash must match (``ValueError`` otherwise)."""
    record = json.loads(Path(path).read_text())
    if record.get("format") != SUBSET_FORMAT:
        raise ValueError(f"{path}: not a {SUBSET_FORMAT} file")
    indices = torch.tensor(record.pop("indices"), dtype=torch.long)
    if labels is not None and record.get("labels_sha256") not in (None, labels_sha256(labels)):
        raise ValueError(f"{path}: subset was drawn from other labels (labels_sha256 differs)")
    return indices, record


def finetune(
    backbone: nn.Module | Callable[[], nn.Module],
    head: nn.Module,
    train_images: Tensor | Any,
    train_labels: Tensor,
    subset: Tensor | None,
    val_images: Tensor | Any,
    val_labels: Tensor | None,
    mean: Sequence[float],
    std: Sequence[float],
    epochs: int = 20,
    lr: float = 0.01,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    head_lr: float | None = None,
    augment: Callable[[Tensor], Tensor] | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Fine-tune backbone + head on the labelled subset; top-1/top-5 (percent) on the val set.

    The network is ``head(backbone(x))``, trained whole with SGD (momentum, weight decay) and a
    per-step cosine schedule from ``lr`` (``head_lr`` for the head if given) to 0, cross-entropy,
    BN in train mode; evaluated after the last epoch in eval mode. ``backbone`` is either a
    module, which is deep-copied (the caller's weights stay as they were), or a factory called once.
    ``head`` is deep-copied too. Images are uint8 (N, C, H, W), normalised per batch with
    ``mean``/``std``; ``augment`` (optional) maps a normalised float batch to another (e.g. random
    flips). ``subset`` indexes ``train_images`` (None: all). Shuffling uses a generator seeded with
    ``seed``; the models' own initialisation is the caller's.

    ``train_images`` and ``val_images`` may also be a split as seedrun.data.loader opens it (in memory
    or streamed): each epoch's batches are then read with its ``gather`` and the val set in chunks with
    its ``chunks``, so a streamed set is never held whole (``train_labels`` still chooses the subset;
    ``val_labels`` is unused). The same images give the same numbers either way.

    Returns ``{"finetune_top1", "finetune_top5", "train_loss"}`` (last epoch's mean loss). A streamed
    split leaves out the images it cannot read: the loss and the accuracy are over the images read.
    """
    net_backbone = copy.deepcopy(backbone) if isinstance(backbone, nn.Module) else backbone()
    model = nn.Sequential(net_backbone, copy.deepcopy(head))
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    model.to(device)
    idx = torch.arange(len(train_labels)) if subset is None else torch.as_tensor(subset).long()
    if len(idx) == 0:
        raise ValueError("empty labelled subset")
    labels = train_labels.long()
    groups = [
        {"params": list(model[0].parameters()), "lr": lr},
        {"params": list(model[1].parameters()), "lr": lr if head_lr is None else head_lr},
    ]
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(idx) / batch_size)
    total_steps = max(1, epochs * steps_per_epoch)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    gen = torch.Generator().manual_seed(seed)
    step, epoch_loss = 0, float("nan")
    for _ in range(epochs):
        model.train()
        order = idx[torch.randperm(len(idx), generator=gen)]
        loss_sum, seen = 0.0, 0
        batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        if isinstance(train_images, Tensor):
            read = ((train_images[batch_idx], labels[batch_idx]) for batch_idx in batches)
        else:  # a split of seedrun.data.loader: the batches' images read (streamed: decoded ahead)
            read = train_images.gather(batches)
        for batch_idx, (images, batch_labels) in zip(batches, read):
            x = normalize_batch(images.to(device), mean, std)
            if augment is not None:
                x = augment(x)
            y = batch_labels.long().to(device)
            scale = 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * scale
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            # the images read: a streamed batch leaves out the ones that could not be read
            loss_sum += loss.item() * len(y)
            seen += len(y)
        epoch_loss = loss_sum / seen
    top1, top5 = _evaluate(model, val_images, val_labels, mean, std, batch_size, device)
    return {"finetune_top1": top1, "finetune_top5": top5, "train_loss": epoch_loss}


def _evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
    device: torch.device | str,
) -> tuple[float, float]:
    model.eval()
    hits1 = hits5 = total = 0
    if isinstance(images, Tensor):
        chunks = ((images[s : s + batch_size], labels[s : s + batch_size]) for s in range(0, images.shape[0], batch_size))
    else:  # a split of seedrun.data.loader, read a chunk at a time
        chunks = images.chunks(batch_size)
    with torch.no_grad():
        for chunk, chunk_labels in chunks:
            logits = model(normalize_batch(chunk.to(device), mean, std))
            y = chunk_labels.to(device).long().unsqueeze(1)
            hit = logits.topk(min(5, logits.shape[1]), dim=1).indices == y
            hits1 += int(hit[:, 0].sum())
            hits5 += int(hit.any(dim=1).sum())
            total += len(chunk)
    return 100.0 * hits1 / total, 100.0 * hits5 / total
