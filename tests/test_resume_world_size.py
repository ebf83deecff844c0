"""Resume on a different world size with the same global batch (issue 13 item 3): the checkpoint holds
the global state (the student, the optimiser, the full queue, the step; the data order and augmentation
come from (seed, epoch) and (seed, step), not from a rank's RNG), so a run checkpointed by 2 ranks resumes
in 1 process and a run checkpointed by 1 process resumes on 2 ranks, each ending where an uninterrupted
1-process run ends (with sync_bn; in float64, to rounding of summation order, which float32 would amplify
to ~1e-4 differently on different CPUs).

What differs: each rank's RNG stream is restored only on the same world size (`rng_ranks`); on another
world size every rank takes the saved process's (rank 0's) state, which no step draws from. BatchNorm
running statistics: without sync_bn each rank keeps its own half-batch statistics and rank 0's are saved;
with sync_bn every rank holds the global ones, as one process does.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.distributed as dist

import test_sync_bn
from test_sync_bn import ATOL, Quiet, spawn

tiny = test_sync_bn.tiny  # test_sync_bn's fixture (a teacher and the config), used here by name


def _two_ranks(rank, world, config, teacher_dir, out):
    from seedrun.training.checkpoints import load_checkpoint
    from seedrun.training.distill import distill
    from seedrun.training.loop import Interrupted

    out, teacher_dir = Path(out), Path(teacher_dir)
    try:  # 2 ranks stop at step 7 (rank 1 heard the signal) ...
        distill(config, out / "two_then_one", Quiet(7 if rank == 1 else None), teacher_dir)
        raise AssertionError("not stopped")
    except Interrupted:
        pass
    assert load_checkpoint(out / "two_then_one")["world"] == 2
    dist.barrier()
    # ... and 2 ranks resume what one process checkpointed at step 7
    distill(config, out / "one_then_two", Quiet(), teacher_dir)


def test_a_run_moves_between_one_process_and_two_ranks_and_ends_where_one_process_ends(tiny, tmp_path):  # noqa: F811
    from seedrun.training.checkpoints import CHECKPOINT, load_checkpoint
    from seedrun.training.distill import distill
    from seedrun.training.loop import Interrupted

    config, teacher_dir = tiny  # sync_bn, 20 steps of a global batch of 32, in float64 (see test_sync_bn)
    config = copy.deepcopy(config)
    distill(config, tmp_path / "one", Quiet(), teacher_dir)  # uninterrupted, one process
    try:
        distill(config, tmp_path / "one_then_two", Quiet(7), teacher_dir)
        raise AssertionError("not stopped")
    except Interrupted:
        pass
    assert load_checkpoint(tmp_path / "one_then_two")["step"] == 7
    spawn(_two_ranks, 2, tmp_path, config, str(teacher_dir), str(tmp_path))
    distill(config, tmp_path / "two_then_one", Quiet(), teacher_dir)  # one process resumes the ranks' step 7

    one = torch.load(tmp_path / "one" / CHECKPOINT, weights_only=True)
    for moved in ("two_then_one", "one_then_two"):
        state = torch.load(tmp_path / moved / CHECKPOINT, weights_only=True)
        assert state["step"] == 20 and state["epoch"] == 2, moved
        for name, value in one["student"].items():
            assert torch.allclose(value.double(), state["student"][name].double(), atol=ATOL), (moved, name)
        assert state["queue"]["pointer"] == one["queue"]["pointer"]
        assert torch.allclose(one["queue"]["embeddings"], state["queue"]["embeddings"], atol=ATOL), moved
    assert torch.load(tmp_path / "one_then_two" / CHECKPOINT, weights_only=True)["world"] == 2
    assert "world" not in torch.load(tmp_path / "two_then_one" / CHECKPOINT, weights_only=True)
