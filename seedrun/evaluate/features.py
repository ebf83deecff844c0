"""Frozen-feature extraction and an on-disk feature cache.

``extract_features`` runs a backbone over a uint8 image tensor in eval mode under ``torch.no_grad``,
converting each batch to float and normalising it on the fly (the whole float copy of the data set
is never made). ``cached_features`` stores the result of any computation as a ``.pt`` file named by
the SHA-256 of a key (checkpoint hash, data set, split, transform, ...), so that k-NN, the linear
probes and the sweeps reuse one extraction. Files are written atomically (seedrun.atomic): a reader
sees either no file or a whole one, and concurrent writers of the same key just replace each other's
identical result.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from seedrun.atomic import atomic_torch_save

__all__ = [
    "cache_key",
    "cache_path",
    "cached_features",
    "extract_features",
    "feature_key",
    "file_sha256",
    "normalize_batch",
]

CACHE_FORMAT = "seedrun-features/1"


def normalize_batch(
    images: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor
) -> Tensor:
    """uint8 (B, C, H, W) in [0, 255] -> float32 ``(x / 255 - mean) / std`` per channel.

    ``mean`` and ``std`` are on the [0, 1] scale (torchvision's convention, e.g. ImageNet's
    (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225)). Floating-point input is taken to be in [0, 1]
    already.
    """
    x = images.float()
    if images.dtype == torch.uint8:
        x = x.div_(255.0)
    elif not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    if mean_t.shape[1] != x.shape[1] or std_t.shape[1] != x.shape[1]:
        raise ValueError(
            f"mean/std have {mean_t.shape[1]}/{std_t.shape[1]} channels, images {x.shape[1]}"
        )
    return x.sub_(mean_t).div_(std_t)


def extract_features(
    backbone: nn.Module,
    images: Tensor,
    mean: Sequence[float] | Tensor,
    std: Sequence[float] | Tensor,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> Tensor:
    """Features ``backbone(normalised images)`` as a float32 CPU tensor (N, d).

    Args:
        backbone: maps (B, C, H, W) float to (B, d) (or anything that flattens to that). It is put
            in eval mode (BN running statistics, no dropout) for the call and its previous
            train/eval mode is restored afterwards; its parameters are not changed.
        images: uint8 (N, C, H, W) tensor (CPU or device); each batch is moved to ``device``,
            converted to float and normalised there (``normalize_batch``).
        mean, std: per-channel statistics on the [0, 1] scale.
        batch_size: images per forward pass.
        device: where to run; default the device of the backbone's first parameter (CPU if none).
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if device is None:
        first = next(backbone.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    was_training = backbone.training
    backbone.eval()
    chunks: list[Tensor] = []
    try:
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                batch = images[start : start + batch_size].to(device, non_blocking=True)
                out = backbone(normalize_batch(batch, mean, std))
                chunks.append(out.flatten(1).float().cpu())
    finally:
        backbone.train(was_training)
    if not chunks:
        return torch.empty(0, 0)
    return torch.cat(chunks)


def file_sha256(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (the file is opened read-only)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def feature_key(
    checkpoint: str | os.PathLike[str] | None,
    dataset: str,
    split: str,
    transform: str,
    **extra: Any,
) -> dict[str, Any]:
    """The usual cache key: the checkpoint's content hash (not its path, so a moved file still
    hits and an overwritten one misses), the data set, the split and a description of the
    transform (e.g. ``"resize256-center224-imagenet-norm"``), plus any ``extra`` JSON values
    (backbone name, image size, ...). ``checkpoint=None`` records ``"checkpoint_sha256": None``
    (e.g. a randomly initialised baseline; put its seed in ``extra``)."""
    key: dict[str, Any] = {
        "checkpoint_sha256": None if checkpoint is None else file_sha256(checkpoint),
        "dataset": dataset,
        "split": split,
        "transform": transform,
    }
    overlap = key.keys() & extra.keys()
    if overlap:
        raise ValueError(f"extra key parts clash with the standard ones: {sorted(overlap)}")
    key.update(extra)
    return key


def cache_key(key_parts: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the key's canonical JSON (sorted keys, no whitespace). Values must be JSON
    (str, int, float, bool, None, lists, dicts): anything else raises ``TypeError`` rather than
    being hashed through an unstable ``str``."""
    text = json.dumps(dict(key_parts), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_path(cache_dir: str | os.PathLike[str], key_parts: Mapping[str, Any]) -> Path:
    """Where ``cached_features`` keeps the value for ``key_parts``: ``cache_dir/<sha256>.pt``."""
    return Path(cache_dir) / f"{cache_key(key_parts)}.pt"


def cached_features(
    cache_dir: str | os.PathLike[str],
    key_parts: Mapping[str, Any],
    compute: Callable[[], Any],
) -> Any:
    """Return the cached value for ``key_parts``, or ``compute()`` it, store it and return it.

    The value is whatever ``compute`` returns that ``torch.save`` stores and
    ``torch.load(weights_only=True)`` reads back: a tensor, or a dict/tuple of tensors (features and
    labels, say). The file holds ``{"format", "key", "value"}``; a file whose stored key differs
    from ``key_parts`` (a hash collision or a hand-copied file) or that cannot be read is
    recomputed and replaced. Nothing but ``cache_dir/<sha256>.pt`` (and its temporary) is written.
    """
    path = cache_path(cache_dir, key_parts)
    key = json.loads(json.dumps(dict(key_parts), sort_keys=True))  # as it reads back
    if path.exists():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # truncated by hand, written by another format: recompute
            stored = None
        if isinstance(stored, dict) and stored.get("format") == CACHE_FORMAT and stored.get("key") == key:
            return stored["value"]
    value = compute()
    atomic_torch_save({"format": CACHE_FORMAT, "key": key, "value": value}, path)
    return value
