"""Submission: runs -> jobs. Locally, through submitit's LocalExecutor, one job at a time, stages in
order (teachers before the students that need them), with live progress read from the database.

A run is submitted only if this launcher moves it to `submitted` (seedrun.store.states.transition):
one that another process started or finished meanwhile is left to it.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import select

from seedrun.store.catchup import catch_up
from seedrun.store.folders import hostname, read_record
from seedrun.store.plan import Plan, run_dir_for
from seedrun.store.schema import Run
from seedrun.store.states import BLOCKED, CANCELLED, COMPLETED, FAILED, IN_FLIGHT, PENDING, SUBMITTABLE, SUBMITTED, transition
from seedrun.sweeps.launcher_values import tasks_per_node
from seedrun.sweeps.spec import RunSpec
from seedrun.store.engine import session_scope
from seedrun.store.locations import seedrun_home

POLL_SECONDS = 1.0  # the run's state read from the database for the progress bar
#: the job's process is checked this often: the next run starts within this of the last one's end, not a
#: whole database poll later (a process poll costs nothing; the database is still read once a second)
EXIT_POLL_SECONDS = 0.05
#: a run recorded as ended whose processes are still alive this long after (a rank stuck in a collective) is
#: stopped: the launcher's wait is bounded even before the process group's timeout ends that rank
ENDED_GRACE_S = 60.0
STAGE_ORDER = ("pretrain", "distill", "eval")


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


def _state(db_url: str, run_hash: str) -> tuple[str, int, Optional[str]]:
    with session_scope(db_url) as session:
        run = session.scalars(select(Run).where(Run.hash == run_hash)).one()
        return run.state, run.epoch, run.error


def _state_or_folder(db_url: str, run_hash: str) -> tuple[str, Optional[int], Optional[str]]:
    """The run's state from the database; while the database is unreachable, from the run's own folder
    record (seedrun.store.folders), which the job writes first."""
    try:
        return _state(db_url, run_hash)
    except Exception:
        record = read_record(str(run_dir_for(run_hash))) or {}
        return record.get("state") or "unknown", record.get("epoch"), record.get("error")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:120] if text else type(exc).__name__


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
    submission = f"local-{uuid.uuid4().hex[:12]}"
    outcome = {"completed": 0, "failed": 0, "blocked": 0}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        overall = progress.add_task(f"sweep {plan.sweep.name}", total=len(ordered), note="")
        for run in ordered:
            upstream_state = _state_or_folder(db_url, run.depends_on)[0] if run.depends_on else COMPLETED
            try:
                if upstream_state != COMPLETED:
                    if _mark(db_url, run.hash, BLOCKED, f"upstream run {run.depends_on[:12]} is {upstream_state}"):
                        outcome["blocked"] += 1
                    progress.advance(overall)
                    continue
                taken = _mark(db_url, run.hash, SUBMITTED, None)
            except Exception as exc:  # a run is started only once the database says this launcher holds it
                console.print(f"database unreachable ({_first_line(exc)}): {len(ordered) - ordered.index(run)} runs "
                              "not started; `seedrun sweep` again starts them")
                outcome["not_started"] = len(ordered) - ordered.index(run)
                break
            if not taken:  # another process took it since the plan was read
                progress.advance(overall)
                continue
            task = progress.add_task(_label(run), total=_epochs(run), note="starting")
            attempt = RunJob(run.hash, db_url, data_root)
            attempt.submission = submission  # a new `seedrun sweep` starts the run's budgets afresh
            job = executor.submit(attempt)
            try:
                with session_scope(db_url) as session:
                    row = session.scalars(select(Run).where(Run.hash == run.hash)).one()
                    row.job_id = f"local:{job.job_id}"  # a process id: `status` judges it only on this host
                    row.provenance = {**(row.provenance or {}), "host": hostname()}
            except Exception:  # the job records its own job id and host in its folder first
                pass
            ended_at = None
            while not job.done():
                try:
                    state, epoch, _ = _state(db_url, run.hash)
                except Exception:  # busy or down: the job records to its folder meanwhile (catch_up below)
                    state, epoch = "running (database unreachable)", None
                progress.update(task, completed=epoch, note=state)
                if state in (COMPLETED, FAILED, CANCELLED):
                    ended_at = ended_at or time.monotonic()
                    if time.monotonic() - ended_at > ENDED_GRACE_S:
                        job.cancel()  # the controller stops every rank (SIGINT, then SIGKILL)
                        break
                next_poll = time.monotonic() + POLL_SECONDS
                while time.monotonic() < next_poll and not job.done():
                    time.sleep(EXIT_POLL_SECONDS)
            try:
                catch_up(db_url, [run.hash])  # what the job could only write to its folder (seedrun.store.catchup)
                state, epoch, _ = _state_or_folder(db_url, run.hash)
            except Exception:  # the database lags behind the folder; `seedrun status` or `sync` brings it in
                record = read_record(str(run_dir_for(run.hash))) or {}
                state, epoch = record.get("state") or "unknown", record.get("epoch")
            if state not in (COMPLETED, FAILED, BLOCKED, CANCELLED):  # died without recording (killed, OOM-killed)
                try:
                    _mark(db_url, run.hash, FAILED, _job_error(job) or "the job exited without recording a result",
                          expect=(PENDING,) + IN_FLIGHT)
                except Exception:
                    pass
                state = FAILED
            note = state
            if state == COMPLETED:
                try:
                    metrics = _metrics(db_url, run.hash)
                except Exception:
                    metrics = (read_record(str(run_dir_for(run.hash))) or {}).get("summary") or {}
                note = f"k-NN top-1 {metrics.get('knn_top1', float('nan')):.1f}%"
            progress.update(task, completed=epoch, note=note)
            outcome["completed" if state == COMPLETED else "failed"] += 1
            progress.advance(overall)
    return outcome


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


def _mark(db_url: str, run_hash: str, state: str, error: Optional[str], expect=SUBMITTABLE) -> bool:
    """Move the run to `state`; False if another writer moved it first (it is no longer in `expect`)."""
    with session_scope(db_url) as session:
        return transition(session, run_hash, state, expect=expect, **({"error": error} if error is not None else {}))


def _metrics(db_url: str, run_hash: str) -> dict[str, float]:
    from seedrun.store.schema import Metric

    with session_scope(db_url) as session:
        rows = session.execute(select(Metric.name, Metric.value).join(Run).where(Run.hash == run_hash).order_by(Metric.id))
        return {name: value for name, value in rows}
