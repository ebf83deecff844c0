"""Several processes on the CPU (gloo): the distributed helpers, the queue every rank keeps, and
SEED distillation under DistributedDataParallel against one process with the same global batch."""

from __future__ import annotations


import pytest
import torch
import torch.distributed as dist

from seedrun.training import distributed
from seedrun.training.queue import EmbeddingQueue
from gloo_ranks import spawn


def test_one_process_helpers_change_nothing():
    ranks = distributed.current()
    assert ranks == distributed.SINGLE and ranks.is_main and not ranks.active
    t = torch.randn(4, 3)
    assert distributed.concat_all_gather(t) is t
    assert ranks.sync(torch.tensor(2.5), True, False) == (2.5, True, False, False)
    assert ranks.sync(torch.tensor(2.5), False, True, True) == (2.5, False, True, True)
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
    # the step's one all-reduce: the loss averaged, and a stop, a checkpoint due or a failure seen on one
    # rank is seen by every rank
    assert ranks.sync(torch.tensor(float(rank)), rank == 1, False) == (0.5, True, False, False)
    assert ranks.sync(torch.tensor(1.0), False, rank == 0) == (1.0, False, True, False)
    assert ranks.sync(torch.tensor(1.0), False, False, rank == 1) == (1.0, False, False, True)
    assert ranks.sync(torch.tensor(1.0), False, False) == (1.0, False, False, False)
    nan = ranks.sync(torch.tensor(float("nan") if rank == 1 else 1.0), False, False)[0]
    assert nan != nan  # a NaN on one rank is a NaN on every rank
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


def _ddp_steps(rank, world, out):
    """Three training steps of a small BatchNorm network under parallel_model, each rank on its own data."""
    import warnings
    from types import SimpleNamespace

    torch.manual_seed(0)  # every rank builds the same network, as a job does
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = distributed.parallel_model(module, distributed.current(), torch.device("cpu"),
                                           SimpleNamespace(), out)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        data = torch.Generator().manual_seed(rank)
        for _ in range(3):
            optimizer.zero_grad()
            model(torch.randn(8, 3, generator=data) + 5 * rank).square().mean().backward()
            optimizer.step()
    torch.save({"warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
                "state": module.state_dict()}, f"{out}/ddp{rank}.pt")


def test_ddp_keeps_buffers_per_rank_without_a_future_warning(tmp_path):
    """The wrap every multi-process training goes through warns of nothing (torch deprecated the
    broadcast_buffers switch), and still leaves BatchNorm's running statistics each rank's own while the
    gradients, and so the weights, are shared."""
    spawn(_ddp_steps, 2, tmp_path, str(tmp_path))
    ranks = [torch.load(tmp_path / f"ddp{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert [r["warnings"] for r in ranks] == [[], []]
    first, second = (r["state"] for r in ranks)
    assert torch.equal(first["0.weight"], second["0.weight"]) and torch.equal(first["1.bias"], second["1.bias"])
    assert not torch.allclose(first["1.running_mean"], second["1.running_mean"])  # each rank's own data


def test_the_buffer_switch_follows_the_torch_it_runs_on():
    from torch.nn.parallel import DistributedDataParallel

    class BeforeTheRename:
        def __init__(self, module, device_ids=None, broadcast_buffers=True):
            pass

    assert distributed.per_rank_buffers(DistributedDataParallel) == {"forward_sync_buffers": False}
    assert distributed.per_rank_buffers(BeforeTheRename) == {"broadcast_buffers": False}


class _StopAfter:
    def __init__(self, calls):
        self.calls, self.stop_after = 0, calls

    def log(self, message):
        pass

    def epoch_end(self, epoch, metrics):
        pass

    def should_stop(self):
        self.calls += 1
        return self.stop_after is not None and self.calls >= self.stop_after


def _distill_two_ranks(rank, world, config, teacher_dir, out):
    import warnings
    from pathlib import Path

    from seedrun.training.checkpoints import load_checkpoint
    from seedrun.training.distill import distill
    from seedrun.training.loop import Interrupted

    out = Path(out)
    with warnings.catch_warnings(record=True) as caught:  # a whole DDP run, as a job's log would show it
        warnings.simplefilter("always")
        torch.save(distill(config, out / "straight", _StopAfter(None), Path(teacher_dir)), out / f"metrics{rank}.pt")
    (out / f"future_warnings{rank}.txt").write_text("".join(
        f"{w.filename}:{w.lineno}: {w.message}\n" for w in caught if issubclass(w.category, FutureWarning)))
    try:  # a stop seen by rank 1 only (its USR2 came first): both ranks stop at the same step
        distill(config, out / "broken", _StopAfter(4 if rank == 1 else None), Path(teacher_dir))
    except Interrupted as exc:
        (out / f"stopped{rank}.txt").write_text(str(exc))
    (out / f"interrupted_step{rank}.txt").write_text(str(load_checkpoint(out / "broken")["step"]))
    dist.barrier()
    distill(config, out / "broken", _StopAfter(None), Path(teacher_dir))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from conftest import TINY_BASE
    from seedrun.sweeps.compose import compose_config
    from seedrun.sweeps.spec import pretrain_config
    from seedrun.training.pretrain import pretrain

    config = compose_config(TINY_BASE)  # 320 images of 16 px, batch 32: 10 steps an epoch, queue 128
    teacher_dir = tmp_path_factory.mktemp("teacher")
    pretrain(pretrain_config(config), teacher_dir, _StopAfter(None))
    return config, teacher_dir


def test_two_rank_distillation_stops_together_resumes_and_gathers_one_process_queue(tiny, tmp_path):
    from seedrun.training.checkpoints import CHECKPOINT
    from seedrun.training.distill import distill

    config, teacher_dir = tiny
    for name in ("straight", "broken", "single"):
        (tmp_path / name).mkdir()
    spawn(_distill_two_ranks, 2, tmp_path, config, str(teacher_dir), str(tmp_path))

    assert [(tmp_path / f"future_warnings{r}.txt").read_text() for r in (0, 1)] == ["", ""]
    # one stop for the whole job: both ranks left at step 4, one checkpoint held it
    assert [(tmp_path / f"stopped{r}.txt").read_text() for r in (0, 1)] == ["stopped at step 4"] * 2
    assert [(tmp_path / f"interrupted_step{r}.txt").read_text() for r in (0, 1)] == ["4", "4"]
    straight, resumed = (torch.load(tmp_path / d / CHECKPOINT, weights_only=True) for d in ("straight", "broken"))
    # the ranks' students and queues were identical at every checkpoint (each rank checks; one digest)
    assert straight["world"] == 2 and len(set(straight["rank_digests"])) == 1 and len(straight["rng_ranks"]) == 2
    # resumed on the same world size: bit-identical to the uninterrupted 2-rank run
    assert straight["step"] == resumed["step"] == 10
    for name, value in straight["student"].items():
        assert torch.equal(value, resumed["student"][name]), name
    assert torch.equal(straight["queue"]["embeddings"], resumed["queue"]["embeddings"])
    metrics = torch.load(tmp_path / "metrics0.pt", weights_only=True)
    assert "knn_top1" in metrics and torch.load(tmp_path / "metrics1.pt", weights_only=True) == {}  # rank 0 evaluates

    # one process, the same global batch: the teacher's keys (eval mode, per image) of each global batch
    # enter the queue in the same order, so the gathered queue equals one process's queue
    distill(config, tmp_path / "single", _StopAfter(None), teacher_dir)
    single = torch.load(tmp_path / "single" / CHECKPOINT, weights_only=True)
    assert single["queue"]["pointer"] == straight["queue"]["pointer"]
    assert torch.allclose(single["queue"]["embeddings"], straight["queue"]["embeddings"], atol=1e-6)
    # the students are not equal: each rank's BatchNorm normalises with its own half of the batch (no
    # SyncBatchNorm on CPU), as in the official code without sync_bn
    assert not torch.allclose(single["student"]["0.conv1.weight"], straight["student"]["0.conv1.weight"], atol=1e-6)


def test_uneven_split_is_refused_at_check_time(tmp_path):
    from seedrun.errors import InputError
    from seedrun.sweeps.sweep_file import expand

    path = tmp_path / "s.yaml"
    # the teacher pre-trains on every process too (seedrun.training.pretrain): its batch splits over them as well
    path.write_text("name: s\nbase: [data=tiny, distill.batch_size=30, distill.queue_size=120, "
                    "teacher.pretrain.batch_size=30, teacher.pretrain.queue_size=120]\n"
                    "launcher: {name: local, procs: 4}\n")
    with pytest.raises(InputError, match="distill.batch_size.*multiple of the 4 processes"):
        expand(path, dry_run=True)
    path.write_text(path.read_text().replace("procs: 4", "procs: 3"))
    assert {run.config["launcher"]["procs"] for run in expand(path, dry_run=True).runs if run.stage == "distill"} == {3}
    # Slurm: one task per GPU unless tasks_per_node says otherwise; the global batch splits over nodes x tasks
    for slurm, ok in (("nodes: 2", True), ("tasks_per_node: 2", True), ("gpus_per_node: 3", False),
                      ("{gpus_per_node: 3, tasks_per_node: 1}", True), ("{nodes: 3, tasks_per_node: 1}", False)):
        launcher = f"{{name: slurm, {slurm.strip('{}')}}}"
        (tmp_path / "n.yaml").write_text(f"name: n\nbase: [data=tiny, distill.batch_size=32, distill.queue_size=128]\n"
                                         f"launcher: {launcher}\n")
        if ok:
            expand(tmp_path / "n.yaml", dry_run=True)
        else:
            with pytest.raises(InputError, match="distill.batch_size.*multiple of the 3 processes"):
                expand(tmp_path / "n.yaml", dry_run=True)
    (tmp_path / "c.yaml").write_text("name: c\nbase: [data=tiny, distill.batch_size=32, distill.queue_size=128, "
                                     "distill.small_crops=2]\nlauncher: {name: local, procs: 2}\n")
    with pytest.raises(InputError, match="distill.small_crops.*expected 0 under 2 processes"):
        expand(tmp_path / "c.yaml", dry_run=True)
    path.write_text(path.read_text().replace("procs: 3", "procs: two"))
    with pytest.raises(InputError, match="launcher.procs"):
        expand(path, dry_run=True)
