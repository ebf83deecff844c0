"""Submission: runs -> jobs. Locally, through submitit's LocalExecutor, one job at a time, stages in
order (teachers before the students that need them), with live progress read from the run's folder.

For each run the launcher opens a new attempt (seedrun.store.attempts) in one database transaction:
the run moves to `submitted` (seedrun.store.states.transition: a run that another process took meanwhile
is left to it) and its folder gets the attempt's record before the transaction commits. The job writes
only that folder; while it runs the launcher brings the folder into the database once a second
(seedrun.store.catchup), and once more when it ends. A job that ended without recording how (killed,
OOM-killed) fails its attempt; `seedrun sweep --retry-failed` resumes it from its checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from seedrun.store.attempts import Attempt, claim
from seedrun.store.catchup import catch_up
from seedrun.store.folders import hostname, read_record
from seedrun.store.plan import Plan, run_dir_for
from seedrun.store.states import BLOCKED, CANCELLED, COMPLETED, FAILED, IN_FLIGHT, PENDING, SUBMITTABLE, transition
from seedrun.sweeps.launcher_values import tasks_per_node
from seedrun.sweeps.spec import RunSpec
from seedrun.store.engine import write
from seedrun.store.locations import busy_seconds, seedrun_home

POLL_SECONDS = 1.0  # the folder brought into the database, and the progress bar redrawn
#: the job's process is checked this often: the next run starts within this of the last one's end
EXIT_POLL_SECONDS = 0.05
#: a run recorded as ended whose processes are still alive this long after (a rank stuck in a collective) is
#: stopped: the launcher's wait is bounded even before the process group's timeout ends that rank
ENDED_GRACE_S = 60.0
STAGE_ORDER = ("pretrain", "distill", "eval")
ENDED = (COMPLETED, FAILED, BLOCKED, CANCELLED)


def _epochs(run: RunSpec) -> int:
    if run.stage == "eval":
        return 1
    section = run.config["pretrain"] if run.stage == "pretrain" else run.config["distill"]
    return int(section["epochs"])


def _label(run: RunSpec) -> str:
    if run.stage == "pretrain":
        p = run.config["pretrain"]
        return f"{p.get('role', 'teacher')} {p['method']} {p['arch']} w{p['width']}"
    return " ".join(f"{key}={value}" for key, value in run.axes.items()) or f"{run.stage} {run.short}"


def _row(db_url: str, run_hash: str) -> tuple[str, int, Optional[str], dict[str, Any]]:
    """(state, epoch, error, summary) of the run in the database."""
    from sqlalchemy import select

    from seedrun.store.tables import runs

    c = runs.c
    return write(db_url, lambda db: tuple(db.execute(select(c.state, c.epoch, c.error, c.summary)
                                                     .where(c.hash == run_hash)).one()), wait_s=busy_seconds())


def _settled(db_url: str, run_hash: str) -> tuple[str, Optional[int], dict[str, Any]]:
    """The run's state, epoch and summary once its folder is brought in; from the folder alone while the
    database cannot be written (the folder is the record; `status` or `sync` bring it in later)."""
    try:
        catch_up(db_url, [run_hash], quiet=True)
        state, epoch, _, summary = _row(db_url, run_hash)
        return state, epoch, summary or {}
    except Exception:
        record = read_record(str(run_dir_for(run_hash))) or {}
        return record.get("state") or "unknown", record.get("epoch"), record.get("summary") or {}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:120] if text else type(exc).__name__


def _claim(db_url: str, run_hash: str) -> Optional[Attempt] | str:
    """seedrun.store.attempts.claim in one transaction of its own."""
    return write(db_url, lambda db: claim(db, run_hash), wait_s=busy_seconds())


def run_local(plan: Plan, runs: list[RunSpec], db_url: str, data_root: Optional[str], console: Console) -> dict[str, int]:
    """Run each run in a subprocess, teachers first; a failed upstream blocks its dependants."""
    import submitit

    from seedrun.job.run_job import RunJob

    launcher = plan.sweep.launcher
    folder = seedrun_home() / "submitit" / "local"
    executor = submitit.LocalExecutor(folder=str(folder) + "/%j")
    timeout = int(launcher.get("timeout_min") or 0) or 60 * 24 * 7
    # launcher.procs processes per run (seedrun.job.ranks): global rank 0 records, the others train beside it
    executor.update_parameters(timeout_min=timeout, tasks_per_node=tasks_per_node(launcher))
    gpus = local_gpus()  # else submitit's LocalExecutor hides every GPU (CUDA_VISIBLE_DEVICES='')
    if gpus:
        executor.update_parameters(gpus_per_node=len(gpus), visible_gpus=gpus)  # rank r uses cuda:r
    ordered = sorted(runs, key=lambda run: STAGE_ORDER.index(run.stage))  # stable: sweep order within a stage
    outcome = {"completed": 0, "failed": 0, "blocked": 0}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        overall = progress.add_task(f"sweep {plan.sweep.name}", total=len(ordered), note="")
        for run in ordered:
            upstream_state = _settled(db_url, run.depends_on)[0] if run.depends_on else COMPLETED
            try:
                if upstream_state != COMPLETED:
                    if _mark(db_url, run.hash, BLOCKED, f"upstream run {run.depends_on[:12]} is {upstream_state}"):
                        outcome["blocked"] += 1
                    progress.advance(overall)
                    continue
                attempt = _claim(db_url, run.hash)
            except Exception as exc:  # a run is started only once the database says this launcher holds it
                console.print(f"database unreachable ({_first_line(exc)}): {len(ordered) - ordered.index(run)} runs "
                              "not started; `seedrun sweep` again starts them")
                outcome["not_started"] = len(ordered) - ordered.index(run)
                break
            if attempt == COMPLETED:  # completed before, by an attempt the database had not heard of
                _settled(db_url, run.hash)
                outcome["completed"] += 1
                progress.advance(overall)
                continue
            if attempt is None:  # another process took it since the plan was read
                progress.advance(overall)
                continue
            task = progress.add_task(_label(run), total=_epochs(run), note="starting")
            with rendezvous_port():  # the run's ranks meet there (seedrun.job.ranks), not at an inherited port
                job = executor.submit(RunJob(run.hash, attempt.run_dir, data_root, attempt.number))
            _note_job(db_url, run.hash, attempt.number, f"local:{job.job_id}")
            state, epoch, summary = _follow(job, db_url, attempt, progress, task)
            if state not in ENDED:  # died without recording (killed, OOM-killed)
                try:
                    _mark(db_url, run.hash, FAILED, _job_error(job) or "the job exited without recording a result",
                          expect=(PENDING,) + IN_FLIGHT, attempt=attempt.number)
                except Exception:
                    pass
                state = FAILED
            note = state
            if state == COMPLETED:
                note = f"k-NN top-1 {summary.get('knn_top1', float('nan')):.1f}%"
            progress.update(task, completed=epoch, note=note)
            outcome["completed" if state == COMPLETED else "failed"] += 1
            progress.advance(overall)
    return outcome


def _follow(job, db_url: str, attempt: Attempt, progress: Progress, task) -> tuple[str, Optional[int], dict[str, Any]]:
    """Wait for the job, showing its progress from its folder and bringing the folder into the database
    once a second; the run's state, epoch and summary when the job has ended."""
    run_hash = attempt.record["hash"]
    ended_at = None
    while not job.done():
        record = read_record(attempt.run_dir) or {}
        state = record.get("state") or "starting"
        progress.update(task, completed=record.get("epoch"), note=state)
        catch_up(db_url, [run_hash], quiet=True)
        if state in (COMPLETED, FAILED, CANCELLED):
            ended_at = ended_at or time.monotonic()
            if time.monotonic() - ended_at > ENDED_GRACE_S:
                job.cancel()  # the controller stops every rank (SIGINT, then SIGKILL)
                break
        next_poll = time.monotonic() + POLL_SECONDS
        while time.monotonic() < next_poll and not job.done():
            time.sleep(EXIT_POLL_SECONDS)
    return _settled(db_url, run_hash)


@contextlib.contextmanager
def rendezvous_port():
    """A free port of this machine for the job submitted inside, as SEEDRUN_MASTER_PORT in the environment
    submitit's LocalExecutor copies into it: each run's processes rendezvous on a port of their own (a
    port derived from the job id, a process id here, could be taken), whatever MASTER_PORT the shell
    that started seedrun exports."""
    from seedrun.job.ranks import LOCAL_PORT

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    previous = os.environ.get(LOCAL_PORT)
    os.environ[LOCAL_PORT] = str(port)
    try:
        yield port
    finally:
        if previous is None:
            os.environ.pop(LOCAL_PORT, None)
        else:
            os.environ[LOCAL_PORT] = previous


def local_gpus() -> tuple[int, ...]:
    """The GPUs local jobs may use, without importing torch: those CUDA_VISIBLE_DEVICES lists (by index),
    else the NVIDIA device files of this machine; none on a machine without them."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [d.strip() for d in visible.split(",") if d.strip()]
        return tuple(int(d) for d in ids) if all(d.isdigit() for d in ids) else ()
    return tuple(sorted(int(p.name[6:]) for p in Path("/dev").glob("nvidia[0-9]*") if p.name[6:].isdigit()))


def _job_error(job) -> Optional[str]:
    try:
        job.result()
    except Exception as exc:  # the job's own exception, re-raised by submitit
        return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return None


def _note_job(db_url: str, run_hash: str, attempt: int, job_id: str) -> None:
    """The job id (a process id: `status` judges it only on this host) and host of the attempt's job."""
    from sqlalchemy import update

    from seedrun.store.tables import runs

    def body(db) -> None:
        prov = db.execute(runs.select().with_only_columns(runs.c.provenance).where(runs.c.hash == run_hash)).scalar()
        db.execute(update(runs).where(runs.c.hash == run_hash, runs.c.attempt == attempt)
                   .values(job_id=job_id, provenance={**(prov or {}), "host": hostname()}))

    try:
        write(db_url, body, wait_s=busy_seconds())
    except Exception:  # the job records its own job id and host in its folder
        pass


def _mark(db_url: str, run_hash: str, state: str, error: Optional[str], expect=SUBMITTABLE,
          attempt: Optional[int] = None) -> bool:
    """Move the run to `state` (only while it is still at `attempt`, if given); False if another command
    moved it first (it is no longer in `expect`)."""
    where = None if attempt is None else {"attempt": attempt}
    return write(db_url, lambda db: transition(db, run_hash, state, expect=expect, where=where,
                                               **({"error": error} if error is not None else {})),
                 wait_s=busy_seconds())
