"""One process per device, as the official SEED/MoCo code and submitit do it (../shared/design.md).

seedrun.job.ranks sets the job's processes up: a TCPStore at the job's own rendezvous (its first node,
a port derived from the job id), rank 0's announcement of the run through it, then `init_group` with
the backend the run's device needs: NCCL when the run trains on CUDA, gloo otherwise (`device: cpu`
with several processes on a GPU node must not touch NCCL). The recipes then only ask `current()`, which
is the single-process `Ranks()` when no process group exists: every helper below is then a no-op that
returns its input, so a one-process run computes exactly what it did before this module existed.

Two timeouts (seedrun.job.ranks reads them): the process group's, short, bounds every per-step
collective (SEEDRUN_DIST_TIMEOUT_S, 120 s): a rank that died or hangs ends the others' step within it,
not after NCCL's 10 minutes; the long phases where the other ranks wait for rank 0 alone (the
announcement, a checkpoint or the model being written, the set-up before the first step) wait on the
store instead, with a timeout of their own (SEEDRUN_DIST_PHASE_TIMEOUT_S, 1800 s), and learn there
whether rank 0's phase failed.

What the recipes need of their ranks:
    concat_all_gather(t)      every rank's t, concatenated in rank order (the official queue update)
    ranks.sync(loss, ...)     THE all-reduce of a step: the loss averaged over ranks, and whether any rank
                              asks to stop, finds a checkpoint due, or failed (training.loop.Loop.agree_step)
    ranks.gather_object(o)    every rank's o on every rank (RNG states for the checkpoint)
    on_main(name, fn)         fn on rank 0 alone while the others wait on the store (long phases)
"""

from __future__ import annotations

import datetime
import inspect
import os
import pickle
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

#: the process group's timeout: a per-step collective that waits longer fails the job instead of hanging it
DEFAULT_TIMEOUT_S = 120.0
#: rank 0's long phases, waited for on the store
DEFAULT_PHASE_TIMEOUT_S = 1800.0

_STORE: Optional[Any] = None  # the job's TCPStore (seedrun.job.ranks), for on_main's waits
_PHASE_TIMEOUT_S = DEFAULT_PHASE_TIMEOUT_S
_PHASES = {"count": 0}  # every rank counts its phases in the same order: the key names the same phase


class PeerFailed(RuntimeError):
    """Another rank failed: it said so in the step's all-reduce or in a phase on the store. Its own
    record (failure.rank<r>.json) has the class; seedrun.job.ranks.primary_failure reads it."""


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

    def sync(self, loss: Optional[torch.Tensor], stop: bool, due: bool, failed: bool = False) -> tuple[float, bool, bool, bool]:
        """(loss averaged over ranks, any stop, any due, any failed): one all-reduce of 4 numbers, so that
        every rank stops, saves and fails at the same step; a NaN on one rank is NaN on all."""
        value = float("nan") if loss is None else float(loss.detach().double().item())
        if not self.active:
            return value, bool(stop), bool(due), bool(failed)
        numbers = torch.tensor([value, float(stop), float(due), float(failed)], dtype=torch.float64, device=_device())
        dist.all_reduce(numbers)
        total, stops, dues, failures = numbers.tolist()
        return total / self.world, stops > 0, dues > 0, failures > 0

    def agree(self, stop: bool, due: bool = False) -> tuple[bool, bool]:
        """(stop, due) as any rank sees them, without a loss (benchmarks; the recipes agree through sync)."""
        return self.sync(None, stop, due)[1:3]

    def mean(self, value: torch.Tensor) -> float:
        if not self.active:
            return value.item()
        total = value.detach().double().reshape(1).to(_device())
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


# ---- set-up --------------------------------------------------------------------------------------

def resolve_device(setting: Optional[str]) -> torch.device:
    """The run's device from its `device` setting: auto is CUDA where this process sees a GPU."""
    setting = setting or "auto"
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(setting)


def backend_for(device: torch.device) -> str:
    """NCCL only for a run whose tensors live on CUDA; gloo for CPU runs, GPUs in the node or not."""
    return "nccl" if device.type == "cuda" else "gloo"


def open_store(host: str, port: int, world: int, is_main: bool, timeout_s: float):
    """The job's rendezvous: rank 0 serves it, the others connect (retrying until timeout_s, while rank 0
    is still starting)."""
    return dist.TCPStore(host, port, world, is_main, timeout=datetime.timedelta(seconds=timeout_s),
                         wait_for_workers=False)


def init_group(store, rank: int, world: int, backend: str, timeout_s: float = DEFAULT_TIMEOUT_S,
               phase_timeout_s: float = DEFAULT_PHASE_TIMEOUT_S) -> Ranks:
    """The job's process group over `store`: `backend` (backend_for), per-step collectives bounded by
    timeout_s; on_main's waits by phase_timeout_s."""
    global _STORE, _PHASE_TIMEOUT_S
    if backend == "nccl":
        torch.cuda.set_device(cuda_index(int(os.environ.get("LOCAL_RANK", 0))))
    dist.init_process_group(backend, store=dist.PrefixStore("pg", store), rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    _STORE, _PHASE_TIMEOUT_S, _PHASES["count"] = store, phase_timeout_s, 0
    return current()


def shutdown() -> None:
    global _STORE
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _STORE = None


def cuda_index(local_rank: int) -> int:
    """The GPU of the rank with this local rank: local_rank % the GPUs this process sees. Where Slurm
    binds one GPU per task each task sees one, cuda:0; where a task sees the node's G GPUs, cuda:local_rank."""
    return local_rank % max(1, torch.cuda.device_count())


def device_for(ranks: Ranks, device: torch.device) -> torch.device:
    """The rank's own GPU under several processes (cuda_index); the device unchanged otherwise."""
    if ranks.active and device.type == "cuda":
        device = torch.device("cuda", cuda_index(ranks.local_rank))
        torch.cuda.set_device(device)
    return device


def on_main(name: str, fn: Callable[[], Any], ranks: Optional[Ranks] = None) -> Any:
    """fn() on global rank 0 alone, the others waiting for it on the store with the long phase timeout
    (a checkpoint or the model written: minutes on a slow filesystem, beyond a step's timeout). A rank-0
    failure reaches the others as PeerFailed, at once; rank 0 re-raises its own."""
    ranks = ranks or current()
    if not ranks.active or _STORE is None:
        if ranks.active:  # a process group set up without seedrun.job.ranks (tests): a plain barrier
            result = fn() if ranks.is_main else None
            ranks.barrier()
            return result
        return fn()
    _PHASES["count"] += 1
    key = f"seedrun/phase/{_PHASES['count']}"
    if ranks.is_main:
        try:
            result = fn()
        except BaseException as exc:
            _STORE.set(key, pickle.dumps(f"{type(exc).__name__}: {exc}"[:300]))
            raise
        _STORE.set(key, pickle.dumps(None))
        return result
    _STORE.wait([key], datetime.timedelta(seconds=_PHASE_TIMEOUT_S))
    failure = pickle.loads(_STORE.get(key))
    if failure is not None:
        raise PeerFailed(f"rank 0 failed in {name}: {failure}")
    return None


def gate(name: str, ranks: Optional[Ranks] = None) -> None:
    """Every rank waits for every other on the store, with the long phase timeout: before the first
    collective of training, past set-ups that take each rank its own time (file lists, K-Means' embedding
    of the training set, DataLoader workers starting)."""
    ranks = ranks or current()
    if not ranks.active or _STORE is None:
        return
    _PHASES["count"] += 1
    key = f"seedrun/gate/{name}/{_PHASES['count']}"
    _STORE.set(f"{key}/{ranks.rank}", b"1")
    _STORE.wait([f"{key}/{rank}" for rank in range(ranks.world)], datetime.timedelta(seconds=_PHASE_TIMEOUT_S))


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
    gradients, buffers per rank: per_rank_buffers), and `loop` (training.loop.Loop) agreeing through one
    all-reduce a step and checkpointing on global rank 0 after every rank gathered its part of the state.
    One process: `module` itself, the loop untouched."""
    if not ranks.active:
        return module
    from torch.nn.parallel import DistributedDataParallel

    from seedrun.training.checkpoints import save_checkpoint

    def save_on_main(state_of) -> None:
        state = state_of()  # every rank: its RNG state and digests gathered
        on_main("writing the checkpoint", lambda: save_checkpoint(state, run_dir), ranks)

    loop.save, loop.sync = save_on_main, ranks.sync
    gate("set-up", ranks)  # DDP's wrap is the first collective of training: wait for the slowest set-up here
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   **per_rank_buffers(DistributedDataParallel))
