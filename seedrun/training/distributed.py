"""One process per device, as the official SEED/MoCo code and submitit do it (../shared/design.md).

The job sets up `torch.distributed` once (`init_from_environment`): from the variables torchrun or
seedrun's local launcher export (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), else from
submitit's job environment (`submitit.helpers.TorchDistributedEnvironment`: MASTER_ADDR the first node
of the job's node list, a port derived from the job id); NCCL on GPUs, gloo on CPUs. The recipes then
only ask `current()`, which is the single-process `Ranks()` when no process group exists: every
helper below is then a no-op that returns its input, so a one-process run computes exactly what it
did before this module existed.

What the recipes need of their ranks:
    concat_all_gather(t)      every rank's t, concatenated in rank order (the official queue update)
    ranks.agree(stop, due)    one all-reduce (max) of the stop flag and the "checkpoint due" flag, so
                              that every rank stops, and saves, at the same step
    ranks.mean(x)             a scalar averaged over ranks (the recorded loss; NaN on one rank is NaN
                              on all, so every rank fails at the same step instead of hanging)
    ranks.gather_object(o)    every rank's o on every rank (RNG states for the checkpoint)
"""

from __future__ import annotations

import datetime
import inspect
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist

#: a collective that waits longer than this fails the job instead of hanging it (another rank died)
DEFAULT_TIMEOUT_S = 600


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def agree(self, stop: bool, due: bool = False) -> tuple[bool, bool]:
        """(stop, due) as any rank sees them: one all-reduce a step."""
        if not self.active:
            return bool(stop), bool(due)
        flags = torch.tensor([int(bool(stop)), int(bool(due))], dtype=torch.int32, device=_device())
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return bool(flags[0].item()), bool(flags[1].item())

    def mean(self, value: torch.Tensor) -> float:
        if not self.active:
            return value.item()
        total = value.detach().float().reshape(1).to(_device())
        dist.all_reduce(total)
        return total.item() / self.world

    def gather_object(self, obj: Any) -> list[Any]:
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def average_gradients(self, parameters) -> None:
        """Gradients averaged over ranks, for parameters outside DistributedDataParallel."""
        if not self.active:
            return
        for param in parameters:
            if param.grad is not None:
                dist.all_reduce(param.grad)
                param.grad.div_(self.world)


SINGLE = Ranks()


def _device() -> torch.device:
    """Where collectives run: NCCL needs CUDA tensors, gloo takes CPU ones."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def current() -> Ranks:
    """This process's place in the job; Ranks() (one process) when no process group is set up."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return Ranks(dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size())


def is_main() -> bool:
    return current().is_main


@torch.no_grad()
def concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's tensor stacked along dim 0 in rank order (official SEED/MoCo `concat_all_gather`);
    the tensor itself in one process. No gradient flows through it."""
    ranks = current()
    if not ranks.active:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(ranks.world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def environment() -> Optional[dict[str, str]]:
    """RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT for this process; None for one process.
    Already exported (torchrun, seedrun's local launcher) wins; else submitit's job environment."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ:
        return {key: os.environ[key] for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
                if key in os.environ}
    try:
        import submitit

        job = submitit.JobEnvironment()
        if job.num_tasks <= 1:
            return None
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    except RuntimeError:  # not inside a submitit job
        return None
    return {key: os.environ[key] for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}


def init_from_environment(timeout_s: float = DEFAULT_TIMEOUT_S) -> Ranks:
    """Set up the process group of a multi-process job (NCCL with CUDA, gloo without); one process: nothing."""
    if dist.is_initialized():
        return current()
    env = environment()
    if env is None:
        return SINGLE
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(env.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]),
                            timeout=datetime.timedelta(seconds=timeout_s))
    return current()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(ranks: Ranks, device: torch.device) -> torch.device:
    """The rank's own GPU (cuda:LOCAL_RANK) under several processes; the device unchanged otherwise."""
    if ranks.active and device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    return device


def split_batch(global_batch: int, ranks: Ranks) -> int:
    """The per-rank batch: `distill.batch_size` is the global batch, split evenly over the ranks."""
    if global_batch % ranks.world:
        raise ValueError(f"batch_size {global_batch} does not split evenly over {ranks.world} processes")
    return global_batch // ranks.world


def digest(tensors) -> str:
    """A checksum of tensors' bytes: what ranks compare at a checkpoint to prove their copies identical."""
    import hashlib

    h = hashlib.sha256()
    for tensor in tensors:
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_identical(ranks: Ranks, what: str, tensors) -> list[str]:
    """Every rank's digest of `tensors`; every rank raises if they differ (the replicas drifted apart)."""
    digests = ranks.gather_object(digest(tensors))
    if len(set(digests)) > 1:
        raise RuntimeError(f"the ranks' copies of {what} differ at a checkpoint: {digests}")
    return digests


def per_rank_buffers(wrapper: type) -> dict[str, bool]:
    """DistributedDataParallel's switch that leaves each rank's buffers (BatchNorm's running statistics)
    its own during training, as the official SEED and MoCo code do with broadcast_buffers=False.

    torch 2.13 renamed it: broadcast_buffers is deprecated (a FutureWarning at every wrap) in favour of
    forward_sync_buffers, which differs in one thing: it still copies rank 0's buffers to every rank
    once, when the module is wrapped. Here that copies equal values: every rank builds the module from
    the same seed, or loads the same checkpoint, before it is wrapped."""
    if "forward_sync_buffers" in inspect.signature(wrapper).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}  # torch before 2.13


def parallel_model(module: torch.nn.Module, ranks: Ranks, device: torch.device, loop: Any, run_dir) -> torch.nn.Module:
    """The module a training step calls. Several processes: `module` in DistributedDataParallel (averaged
    gradients, buffers per rank: per_rank_buffers), and `loop` (training.loop.Loop) checkpointing on
    global rank 0 after every rank gathered its part of the state, stopping when the ranks agree. One
    process: `module` itself, the loop untouched."""
    if not ranks.active:
        return module
    from torch.nn.parallel import DistributedDataParallel

    from seedrun.training.checkpoints import save_checkpoint

    def save_on_main(state_of) -> None:
        state = state_of()
        if ranks.is_main:
            save_checkpoint(state, run_dir)
        ranks.barrier()

    loop.save, loop.agree = save_on_main, ranks.agree
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   **per_rank_buffers(DistributedDataParallel))
