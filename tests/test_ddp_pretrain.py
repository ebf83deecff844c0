"""MoCo-v2 pre-training under several processes (gloo on the CPU, real processes): the keys of every rank
enter every rank's queue in rank order with shuffle BN across ranks, so the queues stay identical and equal
one process's with as many BN groups; pretrain() stops on both ranks at once and resumes bit-identically;
and a 2-rank sweep pre-trains on both ranks through the local launcher, is requeued by a USR2 and resumes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from conftest import CLI, TINY_BASE
from gloo_ranks import spawn
from seedrun.training import distributed
from test_distributed import _StopAfter

SETTINGS = {"method": "mocov2", "encoder_momentum": 0.9, "tau": 0.2, "queue_size": 64, "dim": 16,
            "shuffle_bn_groups": 2}
GLOBAL_BATCH, STEPS = 16, 3


def _encoder() -> nn.Module:
    from seedrun.models.heads import teacher_head
    from seedrun.models.registry import create_backbone

    torch.manual_seed(0)
    backbone, d = create_backbone("resnet18", small_images=True, in_chans=1, width=8)
    return nn.Sequential(backbone, teacher_head("mocov2", d, 16))


def _moco_steps(rank: int, world: int, out: str) -> None:
    """STEPS of MoCo-v2 on this rank's part of each global batch; the queue and keys saved per rank."""
    from seedrun.training.pretexts import create_pretext

    encoder = _encoder()
    pretext = create_pretext(SETTINGS, encoder, seed=0)
    per_rank = distributed.per_rank_buffers(DistributedDataParallel)
    model = DistributedDataParallel(encoder, **per_rank) if world > 1 else encoder
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.5, momentum=0.9)
    part = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    for step in range(STEPS):
        g = torch.Generator().manual_seed(100 + step)
        view_a, view_b = (torch.randn(GLOBAL_BATCH, 1, 12, 12, generator=g)[part] for _ in range(2))
        loss = pretext(model, view_a, view_b, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pretext.after_step()
    torch.save({"queue": pretext.queue.state_dict(), "key_encoder": pretext.key_encoder.state_dict()},
               f"{out}/moco{world}-{rank}.pt")


def test_every_ranks_queue_is_identical_and_equals_one_process_with_as_many_bn_groups(tmp_path):
    spawn(_moco_steps, 2, tmp_path, str(tmp_path))
    _moco_steps(0, 1, str(tmp_path))  # one process, the global batch, the same 2 BN groups
    rank0, rank1, single = (torch.load(tmp_path / f"moco{w}-{r}.pt", weights_only=True)
                            for w, r in ((2, 0), (2, 1), (1, 0)))
    assert rank0["queue"]["pointer"] == rank1["queue"]["pointer"] == STEPS * GLOBAL_BATCH
    assert torch.equal(rank0["queue"]["embeddings"], rank1["queue"]["embeddings"])  # gathered, in rank order
    # the queue holds the global batch's keys, not only a rank's: as one process with 2 BN groups computes them
    # (rank r's query BN = group r of the batch; the permuted key batch split over the ranks = the 2 key groups)
    assert torch.allclose(single["queue"]["embeddings"], rank0["queue"]["embeddings"], atol=1e-4)
    for name, value in rank0["key_encoder"].items():
        if "running" not in name and "num_batches" not in name:  # BN buffers stay per rank (distributed.per_rank_buffers)
            assert torch.equal(value, rank1["key_encoder"][name]), name


def _pretrain_two_ranks(rank: int, world: int, config: dict, out: str) -> None:
    from seedrun.training.checkpoints import load_checkpoint
    from seedrun.training.loop import Interrupted
    from seedrun.training.pretrain import pretrain

    out = Path(out)
    torch.save(pretrain(config, out / "straight", _StopAfter(None)), out / f"metrics{rank}.pt")
    try:  # a stop seen by rank 1 only: both ranks stop at the same step, rank 0 writes one checkpoint
        pretrain(config, out / "broken", _StopAfter(4 if rank == 1 else None))
    except Interrupted as exc:
        (out / f"stopped{rank}.txt").write_text(str(exc))
    (out / f"interrupted_step{rank}.txt").write_text(str(load_checkpoint(out / "broken")["step"]))
    dist.barrier()
    pretrain(config, out / "broken", _StopAfter(None))


def test_two_rank_pretraining_stops_together_and_resumes_bit_identical(tmp_path):
    from seedrun.sweeps.compose import compose_config
    from seedrun.sweeps.spec import pretrain_config
    from seedrun.training.checkpoints import CHECKPOINT

    # 320 images of 16 px, global batch 32 (16 a rank): 10 steps; queue 128; 4 BN groups, 2 a rank
    config = pretrain_config(compose_config(TINY_BASE))
    assert config["pretrain"]["method"] == "mocov2"
    for name in ("straight", "broken"):
        (tmp_path / name).mkdir()
    spawn(_pretrain_two_ranks, 2, tmp_path, config, str(tmp_path))

    assert [(tmp_path / f"stopped{r}.txt").read_text() for r in (0, 1)] == ["stopped at step 4"] * 2
    assert [(tmp_path / f"interrupted_step{r}.txt").read_text() for r in (0, 1)] == ["4", "4"]
    straight, resumed = (torch.load(tmp_path / d / CHECKPOINT, weights_only=True) for d in ("straight", "broken"))
    # every rank checked at each checkpoint that its encoders and queue are the others' (one digest)
    assert straight["world"] == 2 and len(straight["rng_ranks"]) == 2 and len(set(straight["rank_digests"])) == 1
    assert straight["step"] == resumed["step"] == 10
    for part in ("encoder", "pretext"):
        for name, value in straight[part].items():
            assert torch.equal(value, resumed[part][name]), f"{part}.{name}"
    queue, resumed_queue = straight["pretext_extra"]["queue"], resumed["pretext_extra"]["queue"]
    assert queue["pointer"] == 10 * 32 % 128 and torch.equal(queue["embeddings"], resumed_queue["embeddings"])
    metrics = torch.load(tmp_path / "metrics0.pt", weights_only=True)
    assert "knn_top1" in metrics and torch.load(tmp_path / "metrics1.pt", weights_only=True) == {}  # rank 0 evaluates
    assert (tmp_path / "straight" / "model.pt").exists()


def _run_on_ranks(rank: int, world: int, config: dict, out: str) -> None:
    from seedrun.training.pretrain import pretrain

    try:
        pretrain(config, Path(out) / f"r{rank}", _StopAfter(None))
    except ValueError as exc:
        Path(out, f"error{rank}.txt").write_text(str(exc))


# SwAV is refused by the same check (and both are refused at expand time, test below): one spawn is enough.
@pytest.mark.parametrize("method", ["simclr"])
def test_simclr_and_swav_are_refused_under_several_processes(method, tmp_path):
    from seedrun.sweeps.compose import compose_config
    from seedrun.sweeps.spec import pretrain_config

    base = [o for o in TINY_BASE if not o.startswith("teacher.pretrain.queue_size")]  # no queue in SimCLR, SwAV
    config = pretrain_config(compose_config(base + [f"teacher=small_resnet_{method}"]))
    spawn(_run_on_ranks, 2, tmp_path, config, str(tmp_path))
    assert (tmp_path / "error0.txt").read_text() == (tmp_path / "error1.txt").read_text() == (
        f"pretrain.method: expected mocov2 under 2 processes per run ({method} runs in one process only), "
        f"got {method!r}")


# The whole job: submitit's LocalExecutor starts 2 tasks; rank 0 gets a USR2 at pre-training step 5, as a
# preemption would send it; the job requeues, both ranks resume from step 5, then distil.
SWEEP = """name: ddp-pretrain
base:
  data: tiny
  teacher.width: 8
  teacher.pretrain.epochs: 1
  teacher.pretrain.batch_size: 32
  teacher.pretrain.queue_size: 128
  student.width: 8
  distill.epochs: 1
  distill.batch_size: 32
  distill.queue_size: 128
  distill.warmup_epochs: 0
  threads: 1
launcher:
  name: local
  procs: 2
"""

SITECUSTOMIZE = '''
import os
if os.environ.get("SUBMITIT_LOCAL_GLOBALID") == "0":
    import json
    import signal
    from pathlib import Path
    import seedrun.training.loop as loop
    marker = Path(os.environ["FAULT_MARKER"])
    after_step = loop.Loop.after_step

    def faulty(self, step, state):
        pretraining = json.loads((self.run_dir / "run.json").read_text())["stage"] == "pretrain"
        if step == 5 and pretraining and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGUSR2)  # as Slurm or a preemption would: the job stops at this step
        return after_step(self, step, state)
    loop.Loop.after_step = faulty
'''


def test_a_two_rank_sweep_pretrains_on_both_ranks_and_resumes_after_a_requeue(tmp_path):
    cli = CLI(tmp_path / "home")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    cli.env.update(PYTHONPATH=str(tmp_path / "site"), FAULT_MARKER=str(tmp_path / "fault"), SEEDRUN_DIST_TIMEOUT_S="60")
    (tmp_path / "s.yaml").write_text(SWEEP)
    result = cli("sweep", str(tmp_path / "s.yaml"), check=False, timeout=400)
    assert "completed 2" in result.stdout, result.stdout + result.stderr
    assert (tmp_path / "fault").exists()  # the signal did come, at step 5
    with sqlite3.connect(cli.db) as c:
        rows = c.execute("select stage, state, attempts, run_dir, provenance from runs").fetchall()
    (stage, state, attempts, run_dir, prov), = [row for row in rows if row[0] == "pretrain"]
    assert (state, attempts, json.loads(prov)["world"], json.loads(prov)["preemptions"]) == ("completed", 2, 2, 1)
    run_dir = Path(run_dir)
    rank1 = (run_dir / "log.rank1.txt").read_text()
    # the signal came after step 5's all-reduce: the ranks agree on it in step 6's, and stop after step 6
    assert "(pretrain) rank 1 of 2" in rank1 and "resumed from step 6" in rank1 and "epoch 1/1" in rank1
    assert "resumed from step 6" in (run_dir / "log.txt").read_text()
    assert "[rank 1]" not in (run_dir / "log.txt").read_text()  # rank 0's log is rank 0's
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1  # one epoch, recorded by rank 0 alone
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 10 and checkpoint["world"] == 2 and len(set(checkpoint["rank_digests"])) == 1


def test_pretraining_under_several_processes_is_checked_before_anything_runs(tmp_path):
    from seedrun.errors import InputError
    from seedrun.sweeps.sweep_file import expand

    path = tmp_path / "s.yaml"

    def sweep(base: str, procs: int = 2):
        path.write_text(f"name: s\nbase: [data=tiny, distill.batch_size=32, distill.queue_size=128, {base}]\n"
                        f"launcher: {{name: local, procs: {procs}}}\n")
        return expand(path, dry_run=True)

    for method in ("simclr", "swav"):
        with pytest.raises(InputError, match=f"teacher.method.*expected mocov2 under 2 processes.*got '{method}'"):
            sweep(f"teacher=small_resnet_{method}, teacher.pretrain.batch_size=32")
        sweep(f"teacher=small_resnet_{method}, teacher.pretrain.batch_size=32", procs=1)  # one process: fine
    with pytest.raises(InputError, match="teacher.pretrain.batch_size.*multiple of the 2 processes.*got 33"):
        sweep("teacher.pretrain.batch_size=33, teacher.pretrain.queue_size=132")
    with pytest.raises(InputError, match="teacher.pretrain.shuffle_bn_groups.*multiple of the 2 processes.*got 3"):
        sweep("teacher.pretrain.batch_size=32, teacher.pretrain.queue_size=128, +teacher.pretrain.shuffle_bn_groups=3")
    with pytest.raises(InputError, match="shuffle_bn_groups.*divisor of teacher.pretrain.batch_size=32.*got 32"):
        sweep("teacher.pretrain.batch_size=32, teacher.pretrain.queue_size=128, +teacher.pretrain.shuffle_bn_groups=32")
    runs = sweep("teacher.pretrain.batch_size=32, teacher.pretrain.queue_size=128, +teacher.pretrain.shuffle_bn_groups=8")
    assert {run.config["pretrain"]["shuffle_bn_groups"] for run in runs.runs if run.stage == "pretrain"} == {8}
