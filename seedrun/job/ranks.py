"""Several processes per run (issue 13): which one records, and what the others do.

The launcher starts `launcher.procs` (local) or `tasks_per_node` x `nodes` (Slurm) processes for one run,
each running RunJob. Only global rank 0 is the attempt the rest of seedrun.job describes: it takes the
lease, records (run.json, metrics), writes checkpoints and the model, and alone runs submitit's
checkpoint()/requeue. The others (`follow`) wait for rank 0 to say which run it started (`Group.announce`:
nothing when the run must not train), train with it, log to `log.rank<r>.txt` in the run folder, and
leave: after a stop (rank 0 requeues the whole job), at the end, or at once for the stages that run on
rank 0 alone. Distillation and pre-training run on every rank (ON_ALL_RANKS; pre-training refuses SimCLR
and SwAV there, whose negatives and Sinkhorn codes are per process); evaluation runs on rank 0 alone.

Rendezvous from the job alone: MASTER_ADDR is the first host of the job's node list (submitit's job
environment), MASTER_PORT derived from the job id, array task included (`master_port`), or, for a local
job, the free port seedrun's local launcher picked for it (SEEDRUN_MASTER_PORT). MASTER_ADDR/MASTER_PORT
inherited from the submitting shell (sbatch exports it; DDP tutorials tell users to export them) are
ignored, with one line in the job's output: two runs on one node would share a rendezvous, and another
host's address breaks a multi-node run. The group: a TCPStore served by rank 0, through which rank 0
announces the run (waited for with the long phase timeout: rank 0 takes the lease, hashes the teacher),
then a process group with the backend the run's device needs (seedrun.training.distributed.backend_for).

CPUs: a local run's P processes share the machine, so each rank is bound to its own 1/P of the CPUs this
job may use (`bind_cpus`), as Slurm binds a task to its cpus_per_task; torch's threads and the stream
loader's workers count the CPUs they may use, so each rank sizes them from its share, never from all.

A failure on any rank fails the run with that rank's class: the rank writes `failure.rank<r>.json` in
the run folder before it exits, and tells the others at the step's all-reduce where it can
(seedrun.training.loop); rank 0, whose collective then fails, records the first failing rank's class and
message instead (`primary_failure`). A rank that vanished without a record (SIGKILL, the OOM killer) is
recognised from the `process.rank<r>.json` it wrote when it started: its process is gone (on this host),
or it is still silent after FAILURE_WAIT_S (another host): class `killed`. `seedrun status` reads the same
records when Slurm says a job FAILED that rank 0 could not record (srun ended it first).
A rank that hangs is bounded by the process group's timeout (SEEDRUN_DIST_TIMEOUT_S, 120 s, per step).

World size 1 never imports torch here.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from seedrun.atomic import atomic_write_text
from seedrun.job.attempt_lease import process_start
from seedrun.job.failures import classify_failure, traceback_tail
from seedrun.job.interpreter import collector_paused, import_stage

#: how long rank 0 waits for another rank's failure file once its own collective failed
FAILURE_WAIT_S = 10.0
#: the ports master_port derives from job ids: unprivileged, below Linux's ephemeral range (32768-60999),
#: so that no outgoing connection of the node can be holding the port already
PORTS = (20000, 32768)
#: the port seedrun's local launcher picked for a local job (seedrun.launchers.local)
LOCAL_PORT = "SEEDRUN_MASTER_PORT"


@dataclass(frozen=True)
class Place:
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    job_id: str = ""
    master: str = "127.0.0.1"
    port: int = 0
    tasks_here: int = 1  # the job's processes on this node, which share its CPUs

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def place() -> Place:
    """This process's place in its run, from submitit's job environment (or torchrun's variables)."""
    if os.environ.get("SUBMITIT_EXECUTOR"):
        try:
            import submitit

            env = submitit.JobEnvironment()
        except RuntimeError:
            env = None
        if env is not None:
            local = env.cluster == "local"
            master = "127.0.0.1" if local else env.hostnames[0]
            port = int(os.environ.get(LOCAL_PORT) or 0) if local else 0
            return Place(env.global_rank, env.local_rank, env.num_tasks, str(env.job_id), master,
                         port or master_port(str(env.job_id)), max(1, env.num_tasks // max(1, env.num_nodes)))
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and "RANK" in os.environ:  # torchrun: its own rendezvous, set for this very process
        return Place(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), world, "",
                     os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT") or 29500),
                     int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    return Place()


def master_port(job_id: str) -> int:
    """A port derived from the job id (a Slurm array task's id names its task: 123_4), so two runs on one
    node do not collide, and a requeued job (same id) finds its rank 0 again."""
    return random.Random(f"seedrun:{job_id}").randrange(*PORTS)


def _seconds(name: str, default: float) -> float:
    try:
        return max(10.0, float(os.environ.get(name) or default))
    except ValueError:
        return default


def timeout_s() -> float:
    """The process group's timeout: what one per-step collective may wait for a rank that hangs."""
    return _seconds("SEEDRUN_DIST_TIMEOUT_S", 120.0)


def phase_timeout_s() -> float:
    """What the other ranks wait for rank 0's long phases: the announcement, a checkpoint or the model written."""
    return _seconds("SEEDRUN_DIST_PHASE_TIMEOUT_S", 1800.0)


def cpu_share(cpus: list[int], local_rank: int, tasks_here: int) -> list[int]:
    """Local rank r's part of the CPUs the job's processes on this node share: a contiguous 1/tasks_here of
    them (at least one CPU; with fewer CPUs than processes, processes share them round robin)."""
    cpus = sorted(cpus)
    if tasks_here <= 1 or not cpus:
        return cpus
    if len(cpus) < tasks_here:
        return [cpus[local_rank % len(cpus)]]
    per = len(cpus) // tasks_here
    return cpus[local_rank * per:(local_rank + 1) * per]


def bind_cpus(where: Place) -> Optional[list[int]]:
    """Bind a local job's rank to its share of the CPUs (cpu_share), so that torch's threads and the
    loader's workers, which count the CPUs this process may use, are sized from its share; the workers
    inherit the binding. A Slurm task is left as Slurm bound it (SLURM_CPUS_PER_TASK sizes it)."""
    if where.tasks_here <= 1 or os.environ.get("SLURM_JOB_ID") or not hasattr(os, "sched_setaffinity"):
        return None
    share = cpu_share(list(os.sched_getaffinity(0)), where.local_rank, where.tasks_here)
    os.sched_setaffinity(0, share)
    return share


def _ignore_inherited(where: Place) -> None:
    """MASTER_ADDR/MASTER_PORT from the submitting shell are not this job's: say so once, and replace them."""
    inherited = {key: os.environ[key] for key in ("MASTER_ADDR", "MASTER_PORT") if key in os.environ}
    ours = {"MASTER_ADDR": where.master, "MASTER_PORT": str(where.port)}
    if inherited and inherited != {key: ours[key] for key in inherited}:
        print(f"ignoring {' '.join(f'{k}={v}' for k, v in inherited.items())} inherited from the submitting shell: "
              f"this job's rendezvous is {where.master}:{where.port} (from the job)", flush=True)
    os.environ.update({"RANK": str(where.rank), "LOCAL_RANK": str(where.local_rank), "WORLD_SIZE": str(where.world),
                       **ours})


#: the stages every rank of a run trains (under DistributedDataParallel); the others run on rank 0 alone
ON_ALL_RANKS = ("distill", "pretrain")


def on_all_ranks(stage: str) -> bool:
    return stage in ON_ALL_RANKS


class Group:
    """The processes of a multi-process run; with one process every method does nothing."""

    def __init__(self, where: Place):
        self.where, self.store, self.all_cpus = where, None, None
        if where.world <= 1:
            return
        _ignore_inherited(where)
        job_cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        if bind_cpus(where) is not None:
            self.all_cpus = job_cpus  # given back when rank 0 goes on alone
        with collector_paused():  # torch's, first here in a run of several processes
            from seedrun.training import distributed

        self.store = distributed.open_store(where.master, where.port, where.world, where.is_main, phase_timeout_s())

    def announce(self, start: Optional[tuple]) -> Optional[tuple]:
        """Rank 0 sends what it started (config, run_dir, stage, teacher_dir) or None; the others receive it
        (waiting while rank 0 starts the run). Then, for a stage every rank trains, the process group, with
        the backend the run's device needs (NCCL for CUDA, gloo otherwise)."""
        if self.where.world <= 1:
            return start
        import pickle

        from seedrun.training import distributed

        if self.where.is_main:
            backend = None
            if start is not None and on_all_ranks(start[2]):
                backend = distributed.backend_for(distributed.resolve_device(start[0].get("device")))
            self.store.set("seedrun/start", pickle.dumps((start, backend)))
        else:
            start, backend = pickle.loads(self.store.get("seedrun/start"))
        if backend is not None:
            distributed.init_group(self.store, self.where.rank, self.where.world, backend, timeout_s(), phase_timeout_s())
        return start

    def alone(self) -> None:
        """From here rank 0 trains by itself (evaluation): no process group, and every CPU of the job."""
        self.close()
        if self.all_cpus:
            os.sched_setaffinity(0, self.all_cpus)

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

    def on_signal(signum, frame) -> None:  # rank 0 hears it too, or hears of it at the step's all-reduce
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
        write_process(Path(run_dir), where.rank)
        if not on_all_ranks(stage):
            hooks.log(f"{stage} runs on rank 0 alone: this rank leaves")
            group.alone()
            return {}
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        hooks.log(f"run {Path(run_dir).name[:12]} ({stage}) rank {where.rank} of {where.world} on {os.uname().nodename}, "
                  f"{cpus} CPUs")
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
    return name in ("DistBackendError", "DistNetworkError", "DistError", "PeerFailed") or (
        isinstance(exc, RuntimeError) and any(word in text for word in (
            "connection closed", "connection reset", "gloo", "nccl", "timed out", "broken pipe")))


class RankFailed(RuntimeError):
    """Another rank's exception, as rank 0 records it: its class name, message and failure class."""

    def __init__(self, record: dict[str, Any]):
        # its traceback first, the summary last: the recorded error is the tail of this
        what = "was killed" if record.get("reason") == "killed" else f"raised {record['type']}"
        super().__init__(f"{record['traceback']}\nrank {record['rank']} {what}: {record['message']}")
        self.failure_reason = record.get("reason") or "exception"
        self.type_name = record["type"]


def primary_failure(exc: BaseException, run_dir: Path, wait_s: float = FAILURE_WAIT_S) -> BaseException:
    """What failed the run: rank 0's own exception, unless it is a collective that broke because another
    rank failed first (or that rank said so in the step's all-reduce); then that rank's: the record it
    wrote before exiting, or `killed` for a rank that left none: at once for a rank of this host whose
    process is gone, after `wait_s` for a rank of another host (a rank that raises writes its record
    before it exits, so one still silent then died without a word: SIGKILL, the OOM killer, its node)."""
    if not is_communication_error(exc):
        return exc
    deadline = time.monotonic() + wait_s
    while True:
        waited = time.monotonic() > deadline
        failing = failing_rank(run_dir, others_gone=waited)
        if failing is not None:
            return _caused(RankFailed(failing), exc)
        if waited:
            return exc
        time.sleep(0.2)


def failing_rank(run_dir: Path, others_gone: bool = False) -> Optional[dict[str, Any]]:
    """The failure record of the rank that failed this attempt, or None if it cannot be told yet: the first
    rank whose own error was not a broken collective; else a rank that left no record (seedrun.job.ranks
    `_vanished`; `others_gone`: the ranks of other hosts are known to have ended, as they are once Slurm
    says the job ended); else, with `others_gone`, the first broken collective."""
    records = []
    for path in sorted(Path(run_dir).glob("failure.rank*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    own = [record for record in records if not record.get("communication")]
    if own:
        return min(own, key=lambda record: record.get("at", 0))
    killed = _vanished(Path(run_dir), others_gone)
    if killed is not None:
        return killed
    return min(records, key=lambda record: record.get("at", 0)) if records and others_gone else None


def _caused(failure: BaseException, cause: BaseException) -> BaseException:
    failure.__cause__ = cause  # rank 0's log shows how it learnt of the failure, below the failing rank's
    return failure


def write_process(run_dir: Path, rank: int) -> None:
    """Which process this rank is (host, pid and its start time): rank 0 tells from it a rank that was
    killed (no failure record, its process gone) from one that is still writing its record."""
    record = {"rank": rank, "host": socket.gethostname(), "pid": os.getpid(), "pid_start": process_start(os.getpid())}
    try:
        atomic_write_text(run_dir / f"process.rank{rank}.json", json.dumps(record))
    except OSError:
        pass


def _vanished(run_dir: Path, others_gone: bool = False) -> Optional[dict[str, Any]]:
    """The failure record of a rank that wrote none: one of this host whose process is gone, or (with
    `others_gone`) one of another host. It was killed (SIGKILL, the out-of-memory killer, its node lost)."""
    here = socket.gethostname()
    for path in sorted(run_dir.glob("process.rank*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if (run_dir / f"failure.rank{record['rank']}.json").exists():
            continue
        if record.get("host") == here:
            if _alive(int(record["pid"]), record.get("pid_start")):
                continue
            how = "ended without a failure record"
        elif others_gone:
            how = "left no failure record"
        else:
            continue
        return {"rank": record["rank"], "reason": "killed", "type": "Killed", "at": time.time(),
                "traceback": "", "message": f"process {record['pid']} on {record['host']} {how}: killed by a "
                "signal (SIGKILL, the out-of-memory killer) or its node lost"}
    return None


def _alive(pid: int, started: Optional[str]) -> bool:
    """Whether process `pid` (started at `started`) still runs: a zombie, or a pid reused by another
    process, is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
    except OSError:
        return False
    fields = stat[stat.rfind(")") + 2:].split()
    return bool(fields) and fields[0] != "Z" and (started is None or process_start(pid) in (None, started))


def clear_failures(run_dir: Path) -> None:
    """A new attempt starts without the previous attempt's rank failures and processes."""
    for path in [*run_dir.glob("failure.rank*.json"), *run_dir.glob("process.rank*.json")]:
        try:
            path.unlink()
        except OSError:
            pass
