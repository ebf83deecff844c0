"""k-NN feature extraction sharded over ranks (issue 13 item 6): each rank embeds its block of the
samples, rank 0 gathers them in sample order, and the features and the k-NN result equal one process's."""

from __future__ import annotations

from pathlib import Path

import torch

from seedrun.evaluate.sharded_features import shard_batches
from test_sync_bn import spawn


def test_shards_cover_every_sample_once_in_order():
    for n, world, batch in ((10, 3, 3), (2, 4, 8), (320, 2, 512), (7, 1, 2)):
        blocks = [sum(shard_batches(n, batch, r, world), []) for r in range(world)]
        assert sum(blocks, []) == list(range(n)), (n, world)
        assert all(len(b) <= batch for r in range(world) for b in shard_batches(n, batch, r, world))


def _setup():
    from conftest import TINY_BASE
    from seedrun.data.loader import open_split
    from seedrun.models.registry import create_network
    from seedrun.sweeps.compose import compose_config

    config = compose_config(TINY_BASE)
    train = open_split(config["data"], "train", None, lambda message: None)
    test = open_split(config["data"], "test", None, lambda message: None)
    torch.manual_seed(0)
    backbone, _, _ = create_network("resnet18", 8, True, config["data"]["channels"], 16, 2)
    backbone.train()  # BN running statistics away from their initial values, as after training
    with torch.no_grad():
        for _ in range(3):
            backbone(torch.randn(16, config["data"]["channels"], 16, 16) * 2 + 0.5)
    return config, train, test, backbone


def _ranks(rank, world, out):
    from seedrun.evaluate.sharded_features import embed_sharded, evaluate_knn_sharded

    config, train, test, backbone = _setup()
    if rank == 1:  # rank 1's own running statistics (no sync_bn): the evaluated model must be rank 0's
        for module in backbone.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.add_(1.0)
    gathered = embed_sharded(backbone, train, torch.device("cpu"), batch_size=48)
    metrics = evaluate_knn_sharded(backbone, train, test, config, torch.device("cpu"))
    assert (gathered is None) == (rank == 1) and (metrics == {}) == (rank == 1)
    if rank == 0:
        torch.save({"features": gathered[0], "labels": gathered[1], "metrics": metrics}, Path(out) / "sharded.pt")


def test_two_ranks_extract_and_classify_what_one_process_does(tmp_path):
    from seedrun.training.loop import embed, evaluate_knn

    spawn(_ranks, 2, tmp_path, str(tmp_path))
    sharded = torch.load(tmp_path / "sharded.pt", weights_only=True)
    config, train, test, backbone = _setup()
    features, labels = embed(backbone, train, torch.device("cpu"))
    assert sharded["features"].shape == features.shape == (len(train), features.shape[1])
    assert torch.equal(sharded["labels"], labels.long())
    assert torch.allclose(sharded["features"], features, atol=1e-5)
    assert sharded["metrics"] == evaluate_knn(backbone, train, test, config, torch.device("cpu"))
