"""Several processes on the CPU (gloo): the distributed helpers, the queue every rank keeps, and
SEED distillation under DistributedDataParallel against one process with the same global batch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from seedrun.training import distributed
from seedrun.training.queue import EmbeddingQueue


def spawn(fn, world: int, tmp_path, *args) -> None:
    """Run fn(rank, world, init_file, *args) in `world` fresh processes joined by a gloo process group."""
    mp.spawn(_entry, args=(fn, world, str(tmp_path / "pg-init"), args), nprocs=world, join=True)


def _entry(rank, fn, world, init_file, args):
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def test_one_process_helpers_change_nothing():
    ranks = distributed.current()
    assert ranks == distributed.SINGLE and ranks.is_main and not ranks.active
    t = torch.randn(4, 3)
    assert distributed.concat_all_gather(t) is t
    assert ranks.agree(True, False) == (True, False) and ranks.agree(False, True) == (False, True)
    assert ranks.mean(torch.tensor(2.5)) == 2.5
    assert distributed.split_batch(32, ranks) == 32
    with pytest.raises(ValueError, match="does not split evenly over 3"):
        distributed.split_batch(32, distributed.Ranks(0, 0, 3))


def _helpers(rank, world, out):
    ranks = distributed.current()
    assert (ranks.rank, ranks.world, ranks.local_rank) == (rank, world, rank)
    keys = torch.full((2, 3), float(rank))
    gathered = distributed.concat_all_gather(keys)
    assert gathered[:, 0].tolist() == [0.0, 0.0, 1.0, 1.0]  # rank order
    assert ranks.agree(rank == 1, False) == (True, False)  # a stop seen on one rank stops every rank
    assert ranks.agree(False, rank == 0) == (False, True)
    assert ranks.agree(False, False) == (False, False)
    assert ranks.mean(torch.tensor(float(rank))) == 0.5
    assert ranks.gather_object({"r": rank}) == [{"r": 0}, {"r": 1}]
    # each rank enqueues the gathered keys: the copies stay identical, and equal one process's queue
    queue = EmbeddingQueue(8, 3, torch.Generator().manual_seed(0))
    for step in range(3):
        queue.push(distributed.concat_all_gather(torch.randn(2, 3, generator=torch.Generator().manual_seed(10 * step + rank))))
    torch.save(queue.state_dict(), f"{out}/queue{rank}.pt")


def test_gather_agree_and_queue_on_two_ranks(tmp_path):
    spawn(_helpers, 2, tmp_path, str(tmp_path))
    q0, q1 = (torch.load(tmp_path / f"queue{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(q0["embeddings"], q1["embeddings"]) and q0["pointer"] == q1["pointer"] == 4
    single = EmbeddingQueue(8, 3, torch.Generator().manual_seed(0))
    for step in range(3):
        single.push(torch.cat([torch.randn(2, 3, generator=torch.Generator().manual_seed(10 * step + r)) for r in (0, 1)]))
    assert torch.equal(single.embeddings, q0["embeddings"])
