"""Data that does not depend on the world size (issue 25 item 4), on the stream loader with real JPEGs:
global batch t of an epoch is order[t*B:(t+1)*B] and rank r reads part r of it, so 2 ranks and 1 process
train on the same global batches, and a run checkpointed on one world size resumes on another neither
repeating nor skipping an image of the epoch. (Before, each rank read a contiguous half of the epoch:
global batch t depended on the number of processes.)"""

from __future__ import annotations

import pytest
import torch

from stream_trees import FASHION, write_tree

pytestmark = pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")

N_TRAIN = 320  # global batch 64: 5 steps an epoch
GLOBAL = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from seedrun.data.loader import open_split
    from seedrun.sweeps.compose import compose_config

    patcher = pytest.MonkeyPatch()
    patcher.setenv("SEEDRUN_CACHE", str(tmp_path_factory.mktemp("cache")))
    root = write_tree(tmp_path_factory.mktemp("imagenet"), N_TRAIN, 10)
    config = compose_config(["data=imagenet", f"data.root={root}", "data.image_size=16", "data.loader=stream",
                             "data.workers=0"])["data"]
    yield open_split(config, "train")
    patcher.undo()


def steps(data, epoch: int, rank: int, world: int, start: int = 0, stop: int = 99, views: bool = False):
    """The indices (and view 0) rank `rank` of `world` reads at each step from `start` to `stop`."""
    batches = data.batches(7, GLOBAL // world, {0: None}, rank, world)
    assert batches.steps_per_epoch == N_TRAIN // GLOBAL  # counted in global batches, whatever the world
    out = []
    for step, batch in enumerate(batches.epoch(epoch, start), start=start):
        if step >= stop:
            break
        out.append((batch.indices.tolist(), batch.view(0) if views else None))
    return out


def test_two_ranks_read_the_global_batches_one_process_reads(data):
    from seedrun.data.sampling import epoch_order

    one = steps(data, 1, 0, 1, views=True)
    parts = [steps(data, 1, rank, 2, views=True) for rank in (0, 1)]
    order = epoch_order(N_TRAIN, 7, 1).tolist()
    assert len(one) == len(parts[0]) == len(parts[1]) == N_TRAIN // GLOBAL
    for t, (indices, view) in enumerate(one):
        assert indices == order[t * GLOBAL:(t + 1) * GLOBAL]  # the in-memory loader's global batch t
        assert parts[0][t][0] + parts[1][t][0] == indices  # rank r: part r of it
        # each image's augmentation is seeded by (seed, epoch, index, view): the same pixels either way
        assert torch.equal(torch.cat([parts[0][t][1], parts[1][t][1]]), view)


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_a_resume_on_another_world_size_neither_repeats_nor_skips(data, before, after):
    """2 steps on one world size (the checkpoint at step 2), the rest of the epoch on the other."""
    seen = [i for rank in range(before) for indices, _ in steps(data, 0, rank, before, stop=2) for i in indices]
    seen += [i for rank in range(after) for indices, _ in steps(data, 0, rank, after, start=2) for i in indices]
    assert len(seen) == N_TRAIN and sorted(seen) == list(range(N_TRAIN))


def test_a_stream_epoch_draws_nothing_from_the_global_generator(data):
    """Each iter() of a DataLoader draws its workers' base seed from the generator it was given, by default
    torch's global one, which a student's dropout draws from: then a run resumed mid-epoch (one iter() less)
    draws other dropout masks than the uninterrupted run."""
    torch.manual_seed(0)
    before = torch.get_rng_state()
    steps(data, 0, 0, 1, stop=1)
    assert torch.equal(torch.get_rng_state(), before)
