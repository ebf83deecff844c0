"""Feature extraction sharded over the ranks of a multi-process run, and the end-of-training k-NN on it:
each rank embeds its own block of a split, rank 0 gathers in sample order and classifies
(seedrun.evaluate.knn). With one process it is the plain chunked pass.
"""

from __future__ import annotations

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


@torch.no_grad()
def embed_sharded(backbone: torch.nn.Module, data, device: torch.device,
                  batch_size: int = 512) -> tuple[Tensor, Tensor] | None:
    """Features and labels of every evaluation view of `data`, each rank embedding its own block of the
    samples, gathered on rank 0 in sample order; None on the other ranks. Rank 0's BatchNorm buffers are
    broadcast first: without sync_bn each rank's running statistics are its own, and the model evaluated
    is the one rank 0 saves. One process: every chunk in order, as training.loop.embed does."""
    from seedrun.data.augment import normalize
    from seedrun.training import distributed

    ranks = distributed.current()
    backbone.eval()
    if not ranks.active:
        out, labels = [], []
        for images, chunk_labels in data.chunks(batch_size):
            out.append(backbone(normalize(images, data.mean, data.std).to(device)).float().cpu())
            labels.append(chunk_labels)
        return torch.cat(out), torch.cat(labels)

    import torch.distributed as dist

    for buffer in backbone.buffers():  # the model rank 0 saves, on every rank
        dist.broadcast(buffer, src=0)
    n = len(data)
    out, labels = [], []
    for images, chunk_labels in data.gather(shard_batches(n, batch_size, ranks.rank, ranks.world)):
        out.append(backbone(normalize(images, data.mean, data.std).to(device)).float().cpu())
        labels.append(chunk_labels.long())
    block = -(-n // ranks.world)
    on = distributed._device()  # NCCL needs CUDA tensors, gloo takes CPU ones
    dim = torch.tensor([out[0].shape[1] if out else 0], device=on)
    dist.all_reduce(dim, op=dist.ReduceOp.MAX)  # a rank whose block is empty still sends rows of the width
    mine = torch.cat(out) if out else torch.zeros(0, int(dim.item()))
    mine_labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    # equal shapes for the collective: each block padded to `block` rows, then trimmed on rank 0
    padded = torch.zeros(block, int(dim.item()))
    padded[:len(mine)] = mine
    padded_labels = torch.full((block,), -1, dtype=torch.long)
    padded_labels[:len(mine_labels)] = mine_labels
    parts: list[list[Tensor]] = [[] for _ in range(ranks.world)]
    label_parts: list[list[Tensor]] = [[] for _ in range(ranks.world)]
    for first in range(0, block, GATHER_ROWS):
        rows, row_labels = padded[first:first + GATHER_ROWS].to(on), padded_labels[first:first + GATHER_ROWS].to(on)
        into = [torch.empty_like(rows) for _ in range(ranks.world)] if ranks.is_main else None
        into_labels = [torch.empty_like(row_labels) for _ in range(ranks.world)] if ranks.is_main else None
        dist.gather(rows, into, dst=0)
        dist.gather(row_labels, into_labels, dst=0)
        if ranks.is_main:
            for r in range(ranks.world):
                parts[r].append(into[r].cpu())
                label_parts[r].append(into_labels[r].cpu())
    if not ranks.is_main:
        return None
    sizes = [max(0, min(n, (r + 1) * block) - min(n, r * block)) for r in range(ranks.world)]
    features = torch.cat([torch.cat(parts[r])[:sizes[r]] for r in range(ranks.world)])
    all_labels = torch.cat([torch.cat(label_parts[r])[:sizes[r]] for r in range(ranks.world)])
    return features, all_labels


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
    return {"knn_top1": result["top1"], "knn_top5": result["top5"]}
