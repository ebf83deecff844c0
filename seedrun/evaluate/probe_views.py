"""The views of the augmented linear probe (seedrun.evaluate.linear.MOCO), from either loader.

Training views are MoCo ``main_lincls.py``'s: RandomResizedCrop (area ``crop_scale``, aspect 3/4 to
4/3) + horizontal flip, nothing else (no colour jitter, grayscale or blur, which are the
pre-training's), drawn afresh every epoch:

    memory   the split's uint8 tensor, a shuffled batch at a time, moved to the device and cropped
             and flipped there in one grid_sample (seedrun.data.augment.crop_and_flip) from a
             generator seeded by (seed, epoch): a rerun draws the same views. Every image every
             epoch (the last batch takes the remainder, as lincls's DataLoader).
    stream   the training loader's worker processes (seedrun.data.stream) with the data config's
             augmentation reduced to crop + flip (the other augmentations' probabilities set to 0):
             ImageNet-size trees are decoded and cropped a batch ahead, never held; the loader's
             sampler drops an epoch's last partial batch (a different one every epoch).

Validation views are the loader's evaluation views (``data.chunks``): Resize(256 s / 224) ->
CenterCrop(s) when streamed, which is lincls's Resize 256 -> CenterCrop 224 on ImageNet; an in-memory
set's images are already stored at s x s and are used whole. At 16-32 px the 224/256 centre crop
would cut an eighth of the object away and resample what is left, while the training crops (area up
to the whole image) already cover the whole image: the whole image is the in-distribution view, and
it is the view the k-NN and the cached probes of the same set read, so the protocols compare.

Nothing here edits seedrun.data: it only calls open_split, crop_and_flip and normalize.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Optional

import torch
from torch import Tensor, nn

from seedrun.data.augment import crop_and_flip, normalize

__all__ = ["eval_features", "probe_data_config", "train_views"]


def probe_data_config(data_cfg: dict[str, Any], crop_scale: tuple[float, float]) -> dict[str, Any]:
    """The data config whose training augmentation is lincls's: crop + flip only. The jitter and blur
    parameters stay (the stream transform builds them) but are never applied at probability 0."""
    augment = dict(data_cfg.get("augment") or {})
    augment.update(crop_scale=[float(crop_scale[0]), float(crop_scale[1])], jitter_p=0.0, grayscale_p=0.0,
                   blur_p=0.0, flip=True)
    augment.setdefault("jitter", [0.0, 0.0, 0.0, 0.0])
    augment.setdefault("blur_sigma", [0.1, 2.0])
    return {**data_cfg, "augment": augment}


def _view_seed(seed: int, epoch: int) -> int:
    # apart from the training's step generators (seedrun.data.sampling): a probe's crops are its own
    return (seed * 1_000_033 + epoch) * 7 + 3


def train_views(data, data_cfg: dict[str, Any], data_root: Optional[str], seed: int, batch_size: int,
                crop_scale: tuple[float, float], device: torch.device,
                log: Callable[[str], None] = print) -> Callable[[int], Iterator[tuple[Tensor, Tensor]]]:
    """``epoch -> batches of (normalised float views on device, labels)`` of the training split
    ``data`` (an open split: seedrun.data.loader.open_split)."""
    if data.kind == "memory":
        images, labels, n = data.images, data.labels, len(data)

        def memory_epoch(epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
            generator = torch.Generator().manual_seed(_view_seed(seed, epoch))
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, batch_size):
                index = order[start:start + batch_size]
                x = images[index].to(device, non_blocking=True).float().div_(255)
                x = crop_and_flip(x, tuple(crop_scale), flip=True, generator=generator)
                yield normalize(x, data.mean, data.std), labels[index]

        return memory_epoch

    from seedrun.data.loader import open_split

    # a split of its own: the stream workers build their transforms from the config they are given
    probe = open_split(probe_data_config(data_cfg, crop_scale), "train", data_root, log)
    batches = probe.batches(seed, batch_size, {0: None})
    if batches.steps_per_epoch < 1:
        raise ValueError(f"the linear probe's batch_size {batch_size} is more than the {len(probe)} training images")

    def stream_epoch(epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        for batch in batches.epoch(epoch):
            yield batch.view(0, device), batch.labels

    return stream_epoch


def eval_features(backbone: nn.Module, data, device: torch.device,
                  precision: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                  batch_size: int = 512) -> tuple[Tensor, Tensor]:
    """Features (float32, CPU) and labels of a split's evaluation views through the frozen backbone, a
    chunk at a time, in the precision the training views run in (so the fc is validated on features
    of the kind it was trained on)."""
    backbone.eval()
    out, labels = [], []
    for images, chunk_labels in data.chunks(batch_size):
        x = normalize(images.to(device, non_blocking=True), data.mean, data.std)
        with torch.no_grad(), precision():
            out.append(backbone(x).flatten(1).float().cpu())
        labels.append(chunk_labels)
    return torch.cat(out), torch.cat(labels)
