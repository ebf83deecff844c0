"""Feature extraction sharded over the ranks of a multi-process run, and the end-of-training k-NN on it:
each rank embeds its own block of a split, rank 0 gathers in sample order and classifies
(seedrun.evaluate.knn). With one process it is the plain chunked pass. The teacher's embeddings of the
training set that K-Means clusters are extracted the same way (teacher_features).

An image the stream loader cannot read is left out of what is evaluated, never replaced by another
(which would count that image and its label twice), and counted beside the metric (skipped_images).
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch import Tensor

from seedrun.evaluate.knn import knn_accuracy

#: rows of features one gather moves (bounds the memory a collective holds: 65,536 x 2048 fp32 = 512 MiB)
GATHER_ROWS = 65536


def shard_batches(n: int, batch_size: int, rank: int, world: int) -> list[list[int]]:
    """Rank `rank`'s contiguous block of the n sample indices (ceil(n / world) each, the last ones
    shorter), in batches of batch_size: concatenated in rank order the blocks are 0..n-1 in order."""
    block = -(-n // world)
    start, stop = min(n, rank * block), min(n, (rank + 1) * block)
    return [list(range(first, min(stop, first + batch_size))) for first in range(start, stop, batch_size)]


def read_batches(data, batches) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """(sample indices, uint8 evaluation views, labels) of each batch of sample indices, whichever loader
    reads the split. The stream loader leaves an unreadable image out of its batch (never a copy of
    another one: seedrun.data.stream) and reports it to the split's bad-image count and log."""
    if data.kind == "memory":
        for batch in batches:
            index = torch.as_tensor(batch, dtype=torch.long)
            yield index, data.images[index], data.labels[index]
        return
    from seedrun.data.stream import eval_loader

    for raw in eval_loader(data.files, data.data_cfg, 0, data.workers, batches):
        data.bad.report(raw["bad"], raw.get("bad_indices"))
        if len(raw["indices"]):
            yield raw["indices"], raw["views"][0], raw["labels"]


def _embed_shard(model: torch.nn.Module, data, device: torch.device, batch_size: int, ranks) -> tuple[Tensor, ...]:
    """This rank's block of the samples through `model`: (indices, CPU features, labels); features in
    float32, or float64 from a network run in float64 (the tests that compare process layouts)."""
    from seedrun.data.augment import normalize

    def forward(x: Tensor) -> Tensor:
        out = model(x.to(device))
        return (out if out.dtype == torch.float64 else out.float()).cpu()

    indices, out, labels = [], [], []
    for index, images, chunk_labels in read_batches(data, shard_batches(len(data), batch_size, ranks.rank, ranks.world)):
        indices.append(index.long())
        out.append(forward(normalize(images, data.mean, data.std)))
        labels.append(chunk_labels.long())
    if not out:  # an empty block still sends rows of the features' width and dtype, for the gather's equal shapes
        size = data.data_cfg["image_size"]
        empty = forward(torch.zeros(1, data.data_cfg["channels"], size, size))[:0]
        return torch.zeros(0, dtype=torch.long), empty, torch.zeros(0, dtype=torch.long)
    return torch.cat(indices), torch.cat(out), torch.cat(labels)


def _gather_on_main(what: str, ranks, *tensors: Tensor) -> Optional[list[Tensor]]:
    """Every rank's rows of `tensors` (the same number of rows each, that number may differ between ranks:
    unreadable images were left out) concatenated in rank order on rank 0; None on the other ranks."""
    import torch.distributed as dist

    from seedrun.training import distributed

    # each rank embedded its block in its own time (minutes on ImageNet): wait for all with the long phase
    # timeout before the gathers, whose own timeout is a training step's
    distributed.gate(what, ranks)
    on = distributed._device()  # NCCL needs CUDA tensors, gloo takes CPU ones
    counts = [int(c) for c in distributed.concat_all_gather(torch.tensor([len(tensors[0])], device=on)).cpu()]
    block = max(counts)
    parts: list[list[list[Tensor]]] = [[[] for _ in range(ranks.world)] for _ in tensors]
    for first in range(0, block, GATHER_ROWS):
        for which, tensor in enumerate(tensors):
            # equal shapes for the collective: each rank's rows padded to the largest block, trimmed below
            rows = torch.zeros((min(GATHER_ROWS, block - first), *tensor.shape[1:]), dtype=tensor.dtype)
            mine = tensor[first:first + GATHER_ROWS]
            rows[:len(mine)] = mine
            rows = rows.to(on)
            into = [torch.empty_like(rows) for _ in range(ranks.world)] if ranks.is_main else None
            dist.gather(rows, into, dst=0)
            if ranks.is_main:
                for r in range(ranks.world):
                    parts[which][r].append(into[r].cpu())
    if not ranks.is_main:
        return None
    return [torch.cat([torch.cat(parts[which][r])[:counts[r]] for r in range(ranks.world)]) for which in range(len(tensors))]


@torch.no_grad()
def embed_sharded(backbone: torch.nn.Module, data, device: torch.device,
                  batch_size: int = 512) -> tuple[Tensor, Tensor] | None:
    """Features and labels of every readable evaluation view of `data`, each rank embedding its own block
    of the samples, gathered on rank 0 in sample order; None on the other ranks. Unreadable images are
    left out (len(data) minus the rows returned is how many). Rank 0's BatchNorm buffers are broadcast
    first: without sync_bn each rank's running statistics are its own, and the model evaluated is the
    one rank 0 saves. One process: every chunk in order, as training.loop.embed does."""
    from seedrun.training import distributed

    ranks = distributed.current()
    backbone.eval()
    if not ranks.active:
        _, features, labels = _embed_shard(backbone, data, device, batch_size, ranks)
        return features, labels

    import torch.distributed as dist

    for buffer in backbone.buffers():  # the model rank 0 saves, on every rank
        dist.broadcast(buffer, src=0)
    _, features, labels = _embed_shard(backbone, data, device, batch_size, ranks)
    gathered = _gather_on_main("evaluation features", ranks, features, labels)
    return None if gathered is None else (gathered[0], gathered[1])


@torch.no_grad()
def teacher_features(teacher: torch.nn.Module, data, device: torch.device, batch_size: int = 512) -> Optional[Tensor]:
    """The frozen teacher's L2-normalised embeddings of every training image (its evaluation view), one row
    per sample index, for K-Means' pseudo-labels: each rank embeds its own block, rank 0 gathers them
    (None on the other ranks; seedrun.losses.kmeans fits there and hands its result to every rank), so the
    set is embedded once however many ranks train. An image that cannot be read has a row of NaN: it
    takes no part in the clustering, and no other image's features stand in for it."""
    import torch.nn.functional as F

    from seedrun.training import distributed

    ranks = distributed.current()
    teacher.eval()
    indices, features, _ = _embed_shard(teacher, data, device, batch_size, ranks)
    if ranks.active:
        gathered = _gather_on_main("teacher features", ranks, indices, features)
        if gathered is None:
            return None
        indices, features = gathered
    out = torch.full((len(data), features.shape[1]), float("nan"), dtype=features.dtype)
    out[indices] = F.normalize(features, dim=1)
    return out


def evaluate_knn_sharded(backbone: torch.nn.Module, train, test, config: dict, device: torch.device) -> dict[str, float]:
    """The end-of-training k-NN (config["eval"]["knn"]: k, tau) with every rank extracting features of its
    shard of both splits; rank 0 classifies and returns the metrics, the other ranks {}. One process: the
    same as training.loop.evaluate_knn."""
    knn = config["eval"]["knn"]
    train_set, test_set = embed_sharded(backbone, train, device), embed_sharded(backbone, test, device)
    if train_set is None or test_set is None:
        return {}
    (train_f, train_labels), (test_f, test_labels) = train_set, test_set
    result = knn_accuracy(train_f.to(device), train_labels.to(device), test_f.to(device), test_labels.to(device),
                          train.num_classes, k=knn["k"], tau=knn["tau"])
    return {"knn_top1": result["top1"], "knn_top5": result["top5"],
            **skipped_images("knn", (len(train), len(train_f)), (len(test), len(test_f)))}


def skipped_images(prefix: str, *splits: tuple[int, int], test_images: Optional[int] = None) -> dict[str, int]:
    """The count recorded beside a metric when unreadable images were left out of it: {prefix}_skipped_images
    (images of the splits read, each given as (images in the split, images evaluated)) and
    {prefix}_test_images (test images the metric is over: the last split's, unless given). Nothing when
    every image was read, so that the records of the usual case hold the metrics alone."""
    skipped = sum(total - read for total, read in splits)
    if not skipped:
        return {}
    return {f"{prefix}_skipped_images": skipped,
            f"{prefix}_test_images": splits[-1][1] if test_images is None else test_images}
