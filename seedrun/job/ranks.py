"""Several processes per run (issue 13): which one records, and what the others do.

The launcher starts `launcher.procs` (local) or `tasks_per_node` x `nodes` (Slurm) processes for one run,
each running RunJob. Only global rank 0 is the attempt the rest of seedrun.job describes: it takes the
lease, records (run.json, metrics, the database), writes checkpoints and the model, and alone runs
submitit's checkpoint()/requeue. The others (`follow`) set up the process group, wait for rank 0 to say
which run it started (`Group.announce`: nothing when the run must not train), train with it, log to
`log.rank<r>.txt` in the run folder, and leave: after a stop (rank 0 requeues the whole job), at the end,
or at once for the stages that run on rank 0 alone. Distillation and pre-training run on every rank
(ON_ALL_RANKS; pre-training refuses SimCLR and SwAV there, whose negatives and Sinkhorn codes are per
process); evaluation runs on rank 0 alone.

A failure on any rank fails the run with that rank's class: the rank writes `failure.rank<r>.json` in
the run folder before it exits; rank 0, whose collective then fails with a connection error, records the
first failing rank's class and message instead (`primary_failure`). A rank that hangs rather than dies
is bounded by the process group's timeout (SEEDRUN_DIST_TIMEOUT_S, default 600 s).

World size 1 never imports torch here.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from seedrun.atomic import atomic_write_text
from seedrun.job.failures import classify_failure, traceback_tail
from seedrun.job.interpreter import collector_paused, import_stage

#: how long rank 0 waits for another rank's failure file once its own collective failed
FAILURE_WAIT_S = 10.0


@dataclass(frozen=True)
class Place:
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    job_id: str = ""
    master: str = "127.0.0.1"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def place() -> Place:
    """This process's place in its run, from submitit's job environment (or torchrun's variables)."""
    if os.environ.get("SUBMITIT_EXECUTOR"):
        try:
            import submitit

            env = submitit.JobEnvironment()
            master = "127.0.0.1" if env.cluster == "local" else env.hostnames[0]
            return Place(env.global_rank, env.local_rank, env.num_tasks, str(env.job_id), master)
        except RuntimeError:
            pass
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and "RANK" in os.environ:
        return Place(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), world, "",
                     os.environ.get("MASTER_ADDR", "127.0.0.1"))
    return Place()


def master_port(job_id: str) -> int:
    """A port derived from the job id (as submitit does), so two runs on one machine do not collide,
    and a requeued job (same id) finds its rank 0 again."""
    return random.Random(f"seedrun:{job_id}").randint(20000, 60000)


def timeout_s() -> float:
    try:
        return max(10.0, float(os.environ.get("SEEDRUN_DIST_TIMEOUT_S", "600")))
    except ValueError:
        return 600.0


#: the stages every rank of a run trains (under DistributedDataParallel); the others run on rank 0 alone
ON_ALL_RANKS = ("distill", "pretrain")


def on_all_ranks(stage: str) -> bool:
    return stage in ON_ALL_RANKS


class Group:
    """The process group of a multi-process run; with one process every method does nothing."""

    def __init__(self, where: Place):
        self.where = where
        if where.world <= 1:
            return
        os.environ.update({"RANK": str(where.rank), "LOCAL_RANK": str(where.local_rank),
                           "WORLD_SIZE": str(where.world), "MASTER_ADDR": os.environ.get("MASTER_ADDR", where.master),
                           "MASTER_PORT": os.environ.get("MASTER_PORT") or str(master_port(where.job_id))})
        with collector_paused():  # torch's, first here in a run of several processes
            from seedrun.training import distributed

        distributed.init_from_environment(timeout_s())

    def announce(self, start: Optional[tuple]) -> Optional[tuple]:
        """Rank 0 sends what it started (config, run_dir, stage, teacher_dir) or None; the others receive it."""
        if self.where.world <= 1:
            return start
        import torch.distributed as dist

        box = [start if self.where.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def alone(self) -> None:
        """From here rank 0 trains by itself (pre-training, evaluation): the group is closed."""
        self.close()

    def close(self) -> None:
        if self.where.world > 1:
            from seedrun.training import distributed

            distributed.shutdown()


class _RankHooks:
    """A rank other than 0: logs to its own file, records nothing, stops when asked (or when rank 0 is)."""

    def __init__(self, run_dir: Path, rank: int):
        self.path, self.rank, self.stop = run_dir / f"log.rank{rank}.txt", rank, False

    def log(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} [rank {self.rank}] {message}"
        print(line, flush=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def should_stop(self) -> bool:
        return self.stop


def follow(where: Place, data_root: Optional[str]) -> dict[str, float]:
    """A rank other than 0: train the run rank 0 started, record nothing, and leave."""
    previous: dict[int, Any] = {}
    hooks: Optional[_RankHooks] = None
    asked = {"stop": False}

    def on_signal(signum, frame) -> None:  # rank 0 hears it too, or hears of it through agree()
        asked["stop"] = True
        if hooks is not None:
            hooks.stop = True
    for signum in (signal.SIGTERM, signal.SIGUSR2):
        try:
            previous[signum] = signal.signal(signum, on_signal)
        except ValueError:  # not the main thread
            pass
    group: Optional[Group] = None
    try:
        group = Group(where)
        start = group.announce(None)
        if start is None:
            return {}
        config, run_dir, stage, teacher_dir = start
        hooks = _RankHooks(Path(run_dir), where.rank)
        hooks.stop = asked["stop"]
        if not on_all_ranks(stage):
            hooks.log(f"{stage} runs on rank 0 alone: this rank leaves")
            group.alone()
            return {}
        hooks.log(f"run {Path(run_dir).name[:12]} ({stage}) rank {where.rank} of {where.world} on {os.uname().nodename}")
        import_stage(stage)  # torch's, with the collector paused (seedrun.job.interpreter)
        from seedrun.training.loop import Interrupted

        try:
            if stage == "pretrain":
                from seedrun.training.pretrain import pretrain

                pretrain(config, Path(run_dir), hooks, data_root)
            else:
                from seedrun.training.distill import distill

                distill(config, Path(run_dir), hooks, teacher_dir, data_root)
        except Interrupted as exc:
            hooks.log(f"{exc}: rank 0 wrote the checkpoint and requeues the job")
        return {}
    except Exception as exc:
        if hooks is not None:
            hooks.log("".join(traceback.format_exception(exc)).rstrip())
            write_failure(hooks.path.parent, where.rank, exc)
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if group is not None:
            group.close()


def write_failure(run_dir: Path, rank: int, exc: BaseException) -> None:
    record = {"rank": rank, "reason": classify_failure(exc), "type": type(exc).__name__,
              "message": str(exc)[:500], "traceback": traceback_tail(exc), "at": time.time(),
              "communication": is_communication_error(exc)}
    try:
        atomic_write_text(run_dir / f"failure.rank{rank}.json", json.dumps(record))
    except OSError:
        pass


def is_communication_error(exc: BaseException) -> bool:
    """A collective that failed because another rank left (or timed out waiting for it)."""
    name = type(exc).__name__
    text = str(exc).lower()
    return name in ("DistBackendError", "DistNetworkError", "DistError") or (
        isinstance(exc, RuntimeError) and any(word in text for word in (
            "connection closed", "connection reset", "gloo", "nccl", "timed out", "broken pipe")))


class RankFailed(RuntimeError):
    """Another rank's exception, as rank 0 records it: its class name, message and failure class."""

    def __init__(self, record: dict[str, Any]):
        # its traceback first, the summary last: the recorded error is the tail of this
        super().__init__(f"{record['traceback']}\nrank {record['rank']} raised {record['type']}: {record['message']}")
        self.failure_reason = record.get("reason") or "exception"
        self.type_name = record["type"]


def primary_failure(exc: BaseException, run_dir: Path, wait_s: float = FAILURE_WAIT_S) -> BaseException:
    """What failed the run: rank 0's own exception, unless it is a collective that broke because another
    rank failed first; then that rank's (it wrote failure.rank<r>.json before exiting)."""
    if not is_communication_error(exc):
        return exc
    deadline = time.monotonic() + wait_s
    while True:
        records = []
        for path in sorted(run_dir.glob("failure.rank*.json")):
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        first = [r for r in records if not r.get("communication")] or records
        if first:
            return RankFailed(min(first, key=lambda r: r.get("at", 0)))
        if time.monotonic() > deadline:
            return exc
        time.sleep(0.2)


def clear_failures(run_dir: Path) -> None:
    """A new attempt starts without the previous attempt's rank failures."""
    for path in run_dir.glob("failure.rank*.json"):
        try:
            path.unlink()
        except OSError:
            pass
