"""seedrun's distillation step against a bare loop over the same models and batch (issue 13), on the CPU.

    python benchmarks/step.py            # ~1 min on 2 cores
    python benchmarks/step.py --quick    # a few steps: it runs at all

The bare loop: teacher forward (no grad) + student forward/backward of the SEED loss against a fixed
queue tensor + SGD step, nothing else.
seedrun's step: what seedrun.training.distill does each step around that, with its own parts: the lr
schedule (Loop.set_lr), the `distill.strategy` objective (SEED) against the EmbeddingQueue, the loss
averaged over ranks (a NaN check), the objective's after_step, the gathered teacher keys pushed into the
queue, and Loop.after_step's stop check (one all-reduce of the stop/checkpoint flags); the student in
DistributedDataParallel over a 1-rank gloo group. Then the same step on 2 gloo ranks (each half the
global batch, one thread each) against the bare loop with the whole batch on one thread.

Figures are medians over interleaved rounds (the machine is shared), and each ratio is against the bare
loop measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from seedrun.losses import seed_loss  # noqa: E402
from seedrun.models.registry import create_network  # noqa: E402
from seedrun.training import distributed  # noqa: E402
from seedrun.training.loop import Hooks, sgd_and_loop  # noqa: E402
from seedrun.training.queue import EmbeddingQueue  # noqa: E402
from seedrun.training.strategies import create_objective  # noqa: E402

D = {"strategy": "seed", "tau_student": 0.2, "tau_teacher": 0.01, "lr": 0.03, "momentum": 0.9, "weight_decay": 1e-4,
     "epochs": 100, "warmup_epochs": 0, "queue_size": 4096, "checkpoint_every_steps": 0}
DIM = 128


class Setup:
    """The teacher (width 16) and student (width 8) ResNet-18s at 16 px, one batch, seeded."""

    def __init__(self, batch: int, ddp: bool, run_dir: Path):
        torch.manual_seed(0)
        tb, th, _ = create_network("resnet18", 16, True, 3, DIM)
        sb, sh, _ = create_network("resnet18", 8, True, 3, DIM)
        self.teacher = nn.Sequential(tb, th).eval().requires_grad_(False)
        self.student = nn.Sequential(sb, sh).train()
        self.images = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(distributed.current().rank))
        self.indices = torch.arange(batch)
        self.ddp = ddp
        self.objective = create_objective(D, DIM, 0, self.student)
        self.queue = EmbeddingQueue(D["queue_size"], DIM, torch.Generator().manual_seed(0))
        params = list(self.student.parameters()) + list(self.objective.parameters())
        self.optimizer, self.loop = sgd_and_loop(params, D, batch * distributed.current().world, 10**6, run_dir, Hooks())
        per_rank = distributed.per_rank_buffers(DistributedDataParallel)
        self.model = DistributedDataParallel(self.student, **per_rank) if ddp else self.student
        ranks = distributed.current()
        self.loop.agree, self.loop.sync, self.ranks, self.step_count = ranks.agree, ranks.sync, ranks, 0

    def bare(self) -> None:
        with torch.no_grad():
            z_t = F.normalize(self.teacher(self.images).float(), dim=1)
        z_s = F.normalize(self.student(self.images).float(), dim=1)
        # the same SEED loss against the same (fixed) queue tensor: the bare loop computes what seedrun's step
        # computes, and keeps nothing between steps (no queue update, no rank bookkeeping, no DDP)
        loss = seed_loss(z_s, z_t, self.queue.embeddings, D["tau_student"], D["tau_teacher"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def seedrun(self) -> None:  # the body of seedrun.training.distill's step, with its own parts
        self.loop.set_lr(self.optimizer, self.step_count)
        with torch.no_grad():
            z_t = F.normalize(self.teacher(self.images).float(), dim=1)
        z_s = F.normalize(self.model(self.images).float(), dim=1)
        loss = self.objective(z_s, z_t, self.queue.embeddings, self.indices, None)
        # the step's one all-reduce, as distill's: the loss, stop, checkpoint due and failed together (raises on NaN)
        self.loop.agree_step(self.step_count + 1, loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.ranks.average_gradients(self.objective.parameters())
        self.optimizer.step()
        self.objective.after_step()
        self.queue.push(distributed.concat_all_gather(z_t))
        self.step_count += 1
        self.loop.after_step(self.step_count, lambda: {})  # the stop check, as agreed in the step's all-reduce


def timed(fn, steps: int) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - started) / steps


def one_rank(args) -> tuple[float, float]:
    """Median seconds a step: the bare loop, and seedrun's step under 1-rank DDP, interleaved."""
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port))
        dist.init_process_group("gloo", rank=0, world_size=1)
        try:
            bare, plain, seed = Setup(args.batch, False, Path(tmp)), Setup(args.batch, False, Path(tmp)), Setup(
                args.batch, True, Path(tmp))
            for _ in range(args.warmup):
                bare.bare()
                plain.seedrun()
                seed.seedrun()
            rounds = [(timed(bare.bare, args.steps), timed(plain.seedrun, args.steps), timed(seed.seedrun, args.steps))
                      for _ in range(args.rounds)]
        finally:
            dist.destroy_process_group()
    return tuple(statistics.median(r[k] for r in rounds) for k in range(3))


def _rank(rank: int, args, init: str, out: str) -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            setup = Setup(args.batch // 2, True, Path(tmp))
            for _ in range(args.warmup):
                setup.seedrun()
            times = []
            for _ in range(args.rounds):
                dist.barrier()
                times.append(timed(setup.seedrun, args.steps))
        if rank == 0:
            Path(out).write_text(str(statistics.median(times)))
    finally:
        dist.destroy_process_group()


def two_ranks(args) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        mp.spawn(_rank, args=(args, str(Path(tmp) / "init"), str(out)), nprocs=2, join=True)
        return float(out.read_text())


def main() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)  # DDP's broadcast_buffers notice
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--port", type=int, default=29531)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds, args.warmup = 2, 1, 1
    started = time.monotonic()
    torch.set_num_threads(1)  # the 2-rank figure uses one thread a rank: compare like with like
    bare, plain, seed = one_rank(args)
    two = two_ranks(args)
    print(f"batch {args.batch} at 16 px, ResNet-18 w16 -> ResNet-18 w8, SEED, queue {D['queue_size']}, "
          f"1 thread a process, CPU ({os.cpu_count()} cores), {args.rounds} x {args.steps} steps")
    print(f"bare loop (teacher fwd + student fwd/bwd with the SEED loss + SGD): {1000 * bare:.1f} ms a step")
    print(f"seedrun step without DDP (objective, queue update, lr schedule, stop check): {1000 * plain:.1f} ms a step = "
          f"{plain / bare:.3f}x the bare loop")
    print(f"seedrun step, DDP on 1 gloo rank (queue, SEED loss, mean loss, gathered keys, stop check): "
          f"{1000 * seed:.1f} ms a step = {seed / bare:.3f}x the bare loop")
    print(f"seedrun step on 2 gloo ranks (batch {args.batch // 2} each, one global step): {1000 * two:.1f} ms = "
          f"{two / bare:.3f}x the bare loop's step over the whole batch on one process ({time.monotonic() - started:.0f} s)")
    print(f"1 rank: {seed / bare:.3f}x the bare loop; 2 gloo ranks: {two / bare:.3f}x (goal at 1 rank: <= 1.05x)")


if __name__ == "__main__":
    main()
