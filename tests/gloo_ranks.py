"""Real processes joined by a gloo process group, for the tests of multi-process training."""

from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def spawn(fn, world: int, tmp_path, *args) -> None:
    """Run fn(rank, world, *args) in `world` fresh processes joined by a gloo process group."""
    mp.spawn(_entry, args=(fn, world, str(tmp_path / "pg-init"), args), nprocs=world, join=True)


def _entry(rank, fn, world, init_file, args):
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
        # every rank done before any tears the group down: a rank that left while its peer still wrote its
        # result once ended the peer with SIGABRT ("terminate called without an active exception") in gloo
        dist.barrier()
    finally:
        dist.destroy_process_group()
        # the process ends here (a spawned child exits through the interpreter's whole shutdown): frozen, its
        # objects are not walked for garbage cycles again, ~1.5 s less of each rank with torch loaded
        gc.freeze()
