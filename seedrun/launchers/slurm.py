"""`seedrun sweep` with the Slurm launcher: runs -> Slurm job arrays through submitit, fire and forget.

A submission is one `sbatch` per array (submitit's `executor.batch()`), never one per run:

- runs are grouped by stage (teacher pre-training first) and launcher settings, distillation runs
  sorted by the teacher they need, and each group is cut at the cluster's MaxArraySize
  (`seedrun.launchers.cluster.max_array_size()`, 1001 when unknown) into arrays throttled by `%array_parallelism`;
- a distillation array waits for the teacher tasks it needs, `--dependency=afterok:<ids>` (just the
  array id when it needs all of that array's tasks; a teacher still in flight from an earlier
  submission is waited for by its job id). A run whose teacher failed is marked blocked, not submitted;
- every launcher setting reaches sbatch as a submitit parameter (submitit writes them as shell-quoted
  `#SBATCH` lines); a run's config, with every sweep value, goes to the run's folder, never through a
  shell: the pickle each task loads holds only RunJob(run hash, run folder, data root, attempt);
- before any sbatch, each run's folder opens its new attempt (seedrun.store.attempts), so a task that
  starts within a second finds it; job ids (`<array>_<task>`, or a plain id for a one-run array), the
  attempt and state `submitted` are recorded for every run in one transaction once the arrays are queued.

Folders: $SEEDRUN_HOME/submitit/slurm/<sweep>/<submission id>/<job id>/ holds each task's pickle and
logs. The submission id (time + random) keeps folders apart when Slurm's job ids restart at 1 after
its state is purged.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from seedrun.sweeps.spec import RunSpec
from seedrun.sweeps.launcher_values import tasks_per_node

#: submitit's own count of timeouts is switched off (it would refuse requeues after 3); RunJob
#: enforces max_timeouts and max_preemptions itself and records them.
SUBMITIT_MAX_TIMEOUTS = 1_000_000
#: srun options of every array, whatever its launcher settings: a task that dies (SIGKILL, the OOM killer, a
#: crash) ends the whole step at once; without it the other ranks wait in their next collective until the
#: process group's timeout, holding every GPU, and the run's failure is never recorded.
SRUN_ARGS = ("--kill-on-bad-exit=1",)
STAGE_ORDER = {"pretrain": 0, "distill": 1, "eval": 2}  # an array is submitted after those it waits for


@dataclass
class ArrayPlan:
    """One sbatch: runs of one stage with the same launcher settings, at most MaxArraySize of them."""

    stage: str
    runs: list[RunSpec]
    launcher: dict[str, Any]
    upstream: list[str] = field(default_factory=list)  # hashes of the runs (teachers) it waits for
    after: Optional[str] = None  # the --dependency it was submitted with


def slug(name: str) -> str:
    """A sweep name as a folder and job name: no shell or path characters."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return text[:60] or "sweep"


def plan_arrays(runs: Sequence[RunSpec], limit: int) -> list[ArrayPlan]:
    """Group runs into arrays: teachers first, by launcher settings, cut at `limit` (MaxArraySize)."""
    from seedrun.launchers.cluster import chunk

    groups: dict[tuple[int, str, str], list[RunSpec]] = {}
    for run in runs:
        launcher = run.config.get("launcher") or {}
        key = (STAGE_ORDER.get(run.stage, 2), run.stage, json.dumps(launcher, sort_keys=True, default=str))
        groups.setdefault(key, []).append(run)
    arrays = []
    for (_, stage, launcher_json), members in sorted(groups.items(), key=lambda item: item[0]):
        # Students of one teacher together: each array then waits on as few teachers as possible.
        members = sorted(members, key=lambda run: run.depends_on or "")
        for part in chunk(members, limit):
            upstream = sorted({run.depends_on for run in part if run.depends_on})
            arrays.append(ArrayPlan(stage, part, json.loads(launcher_json), upstream))
    return arrays


def executor_parameters(launcher: dict[str, Any], job_name: str) -> dict[str, Any]:
    """submitit AutoExecutor parameters for a launcher block (recipes/launcher/slurm.yaml)."""
    params: dict[str, Any] = {
        "name": job_name,
        "timeout_min": int(launcher.get("timeout_min") or 60),
        "nodes": int(launcher.get("nodes") or 1),
        "tasks_per_node": tasks_per_node(launcher),  # one process per GPU (seedrun.training.distributed)
        "slurm_array_parallelism": int(launcher.get("array_parallelism") or 256),
        "slurm_signal_delay_s": int(launcher.get("signal_delay_s") or 120),
    }
    if launcher.get("cpus_per_task"):
        params["cpus_per_task"] = int(launcher["cpus_per_task"])
    if launcher.get("gpus_per_node"):
        params["gpus_per_node"] = int(launcher["gpus_per_node"])
    if launcher.get("mem_gb"):
        params["mem_gb"] = float(launcher["mem_gb"])
    for key in ("partition", "account", "qos", "constraint"):
        if launcher.get(key) not in (None, ""):
            params[f"slurm_{key}"] = str(launcher[key])
    # --requeue: a job may be requeued (node failure, preemption, RunJob's own requeues) even where
    # the cluster's JobRequeue is 0; it resumes from its checkpoint.
    params["slurm_additional_parameters"] = {"requeue": True, **dict(launcher.get("additional_parameters") or {})}
    return params


def dependency(array: ArrayPlan, task_ids: dict[str, str], array_sizes: dict[str, int],
               alive_upstream: dict[str, str]) -> Optional[str]:
    """`afterok:<ids>` for the teacher jobs `array` needs; None when it needs none in flight."""
    needed: list[str] = []
    for upstream in array.upstream:
        if upstream in task_ids:
            needed.append(task_ids[upstream])
        elif upstream in alive_upstream:
            needed.append(alive_upstream[upstream])
    if not needed:
        return None
    by_array: dict[str, set[str]] = {}
    for job_id in needed:
        master, _, task = job_id.partition("_")
        if task:
            by_array.setdefault(master, set()).add(job_id)
    ids = []
    for job_id in dict.fromkeys(needed):
        master, _, task = job_id.partition("_")
        if task and len(by_array[master]) == array_sizes.get(master, -1):
            if master not in ids:
                ids.append(master)  # every task of that array: wait for the array itself
        else:
            ids.append(job_id)
    return "afterok:" + ":".join(ids)


def submission_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:8]


def _upstream_states(db_url: str, hashes: set[str]) -> dict[str, tuple[str, Optional[str]]]:
    from sqlalchemy import select

    from seedrun.store.schema import Run
    from seedrun.store.engine import session_scope

    found: dict[str, tuple[str, Optional[str]]] = {}
    hashes_list = sorted(hashes)
    with session_scope(db_url) as session:
        for start in range(0, len(hashes_list), 500):
            part = hashes_list[start:start + 500]
            for run_hash, state, job_id in session.execute(select(Run.hash, Run.state, Run.job_id).where(Run.hash.in_(part))):
                found[run_hash] = (state, job_id)
    return found


def _split_blocked(todo: Sequence[RunSpec], db_url: str) -> tuple[list[RunSpec], dict[str, str], dict[str, str]]:
    """(runs to submit, {hash: why blocked}, {teacher hash: live job id to wait for})."""
    from seedrun.store.states import COMPLETED, IN_FLIGHT

    hashes = {run.hash for run in todo}
    outside = {run.depends_on for run in todo if run.depends_on and run.depends_on not in hashes}
    if not outside:
        return list(todo), {}, {}
    states = _upstream_states(db_url, outside)
    in_flight = {h: job_id for h, (state, job_id) in states.items() if state in IN_FLIGHT and job_id
                 and not job_id.startswith(("local:", "pid:"))}
    alive: dict[str, str] = {}
    if in_flight:
        from seedrun.launchers.cluster import SlurmError, query_states

        try:
            slurm_states = query_states(list(in_flight.values()))
        except SlurmError:
            slurm_states = {}
        for h, job_id in in_flight.items():
            found = slurm_states.get(job_id)
            if found is None or not (found.terminal or found.missing):
                alive[h] = job_id  # still queued or running (or Slurm did not answer): wait for it
    submit, blocked = [], {}
    for run in todo:
        upstream = run.depends_on
        if upstream and upstream not in hashes:
            state = states.get(upstream, ("missing", None))[0]
            if state != COMPLETED and upstream not in alive and state not in IN_FLIGHT:
                blocked[run.hash] = f"upstream run {upstream[:12]} is {state}"
                continue
        submit.append(run)
    return submit, blocked, alive


def _record(db_url: str, submitted: dict[str, str], blocked: dict[str, str], extra: dict[str, dict[str, Any]],
            attempts: dict[str, Any]) -> None:
    """One transaction: job id, attempt and state `submitted` (budgets reset) for each submitted run;
    blocked ones. A task that started before this runs wrote only its folder: `status` brings it in."""
    from seedrun.store.engine import write
    from seedrun.store.locations import busy_seconds
    from seedrun.store.states import BLOCKED, SUBMITTABLE, SUBMITTED, transition

    def body(db) -> None:
        for run_hash, job_id in submitted.items():
            attempt = attempts[run_hash]
            transition(db, run_hash, SUBMITTED, expect=SUBMITTABLE, job_id=job_id, attempt=attempt.number, seq=0,
                       provenance={**attempt.provenance, **extra[run_hash]}, error=None, failure_reason=None,
                       finished_at=None)
        for run_hash, why in blocked.items():
            transition(db, run_hash, BLOCKED, expect=SUBMITTABLE, failure_reason="blocked", error=why)

    write(db_url, body, wait_s=busy_seconds())


def _open_attempts(db_url: str, hashes: list[str]):
    """Each run's folder opens its new attempt, before any sbatch; runs whose folder says completed are
    brought into the database instead (seedrun.store.catchup). ({hash: Attempt}, [completed hashes])."""
    from seedrun.store.attempts import new_attempts, write_attempt
    from seedrun.store.catchup import catch_up
    from seedrun.store.engine import write
    from seedrun.store.locations import busy_seconds

    attempts, done = write(db_url, lambda db: new_attempts(db, hashes), wait_s=busy_seconds())
    for attempt in attempts.values():
        write_attempt(attempt)
    if done:
        catch_up(db_url, done)
    return attempts, done


def _check_requests(arrays: list[ArrayPlan], sweep, console, limit: int) -> None:
    """Every array's request against the partition's nodes (seedrun.launchers.requests); InputError if one fits
    no node. Skipped, with one line, where sinfo cannot be reached."""
    from seedrun.launchers.requests import check_arrays

    fits, skipped = check_arrays(arrays, sweep.path, getattr(sweep, "stage_blocks", {}) or {}, limit)
    for line in [f"request {fit}" for fit in fits] or [f"requests not checked against the cluster: {skipped}"]:
        console.print(line, highlight=False, soft_wrap=True)


def check_requests(plan, todo: list[RunSpec], console) -> int:
    """Every array's request against the partition's nodes, before anything is recorded or queued (a request
    no node can satisfy leaves no row and no folder behind); returns the MaxArraySize the arrays were cut at."""
    from seedrun.launchers.cluster import max_array_size

    limit = max_array_size()
    _check_requests(plan_arrays(todo, limit), plan.sweep, console, limit)
    return limit


def _sbatch_error(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if "error" in line.lower()]
    return (lines[-1] if lines else text.splitlines()[-1] if text else type(exc).__name__)[:300]


def submit_slurm(plan, todo: list[RunSpec], db_url: str, data_root: Optional[str], console,
                 job_factory: Optional[Callable[..., Any]] = None, checked_limit: Optional[int] = None) -> list[str]:
    """Submit `todo` as Slurm arrays and return at once; returns the array job ids.

    `job_factory(run_hash, run_dir, data_root, attempt)` makes each task's callable (default
    seedrun.job.run_job.RunJob). The requests are checked against the cluster's nodes first (check_requests),
    unless the caller did and passes the MaxArraySize it returned (`checked_limit`).
    """
    from seedrun.errors import InputError
    from seedrun.store.locations import seedrun_home

    sweep = plan.sweep
    if not todo:
        console.print("nothing to submit: every run is done or in flight")
        return []
    import submitit

    if job_factory is None:
        from seedrun.job.run_job import RunJob as job_factory  # no torch: the job imports it when it trains

    limit = checked_limit or check_requests(plan, todo, console)  # before any folder or sbatch
    runs, blocked, alive = _split_blocked(todo, db_url)
    attempts, done = _open_attempts(db_url, [run.hash for run in runs])
    runs = [run for run in runs if run.hash in attempts]
    arrays = plan_arrays(runs, limit)
    sid = submission_id()
    root = seedrun_home() / "submitit" / "slurm" / slug(sweep.name) / sid
    try:
        executor = submitit.AutoExecutor(folder=str(root / "%j"), cluster="slurm", slurm_max_num_timeout=SUBMITIT_MAX_TIMEOUTS)
    except RuntimeError as exc:  # no srun: not a Slurm machine
        raise InputError(sweep.path, "launcher.name", f"slurm: {exc}") from None

    task_ids: dict[str, str] = {}
    array_sizes: dict[str, int] = {}
    extra: dict[str, dict[str, Any]] = {}
    lines: list[str] = []
    failure: Optional[BaseException] = None
    with interrupts_deferred(console) as interrupted:  # Ctrl-C: this sbatch ends, the rest is not submitted
        for array in arrays:
            if interrupted:
                break
            try:
                jobs = _submit_array(executor, array, sweep, task_ids, array_sizes, alive, job_factory, attempts,
                                     data_root)
            except BaseException as exc:  # sbatch refused (bad partition, ...), or anything else: record what was queued
                failure = exc
                break
            _note_array(array, jobs, sid, root, sweep, data_root, task_ids, array_sizes, extra, lines)
    try:
        _record(db_url, task_ids, blocked, extra, attempts)
    except BaseException:
        # Queued but not recorded: cancel, so that no job runs that the database does not know about.
        from seedrun.launchers.cluster import SlurmError, cancel

        try:
            cancel(list(dict.fromkeys(job_id.partition("_")[0] for job_id in task_ids.values())))
        except SlurmError:
            pass
        raise
    _report(console, task_ids, lines, root, blocked)
    if done:
        console.print(f"{len(done)} runs had completed already (their folders say so): recorded, not submitted")
    masters = list(dict.fromkeys(job_id.partition("_")[0] for job_id in task_ids.values()))
    if interrupted or (failure is not None and not isinstance(failure, Exception)):
        console.print(f"interrupted: the {len(task_ids)} runs queued before it are recorded; `seedrun sweep` "
                      "submits the others", highlight=False)
        raise failure if failure is not None and not isinstance(failure, Exception) else KeyboardInterrupt()
    if failure is not None:
        raise InputError(sweep.path, "launcher", f"sbatch failed after {len(masters)} arrays: {_sbatch_error(failure)}")
    if task_ids:
        console.print("follow with `seedrun status`; this command does not wait", highlight=False)
    return masters


def _submit_array(executor, array: ArrayPlan, sweep, task_ids, array_sizes, alive, job_factory, attempts, data_root):
    """One sbatch for `array` (its tasks wait on the teachers they need); returns submitit's jobs."""
    params = executor_parameters(array.launcher, f"seedrun-{slug(sweep.name)}-{array.stage}")
    params["slurm_srun_args"] = list(SRUN_ARGS)
    after = dependency(array, task_ids, array_sizes, alive)
    if after:
        params["slurm_additional_parameters"] = {**params["slurm_additional_parameters"], "dependency": after}
    array.after = after
    executor.update_parameters(**params)
    with executor.batch():
        jobs = []
        for run in array.runs:
            attempt = attempts[run.hash]
            jobs.append(executor.submit(job_factory(run.hash, attempt.run_dir, data_root, attempt.number)))
    return jobs


def _note_array(array: ArrayPlan, jobs, sid, root, sweep, data_root, task_ids, array_sizes, extra, lines) -> None:
    master = jobs[0].job_id.partition("_")[0]
    array_sizes[master] = len(jobs)
    launcher = {key: value for key, value in array.launcher.items()}
    for run, job in zip(array.runs, jobs):
        task_ids[run.hash] = job.job_id
        extra[run.hash] = {"launcher": launcher, "data_root": data_root,
                           "submission": {"id": sid, "folder": str(root), "job_id": job.job_id,
                                          "array_job_id": master, "sweep": sweep.name}}
    throttle = min(len(jobs), int(array.launcher.get("array_parallelism") or 256))
    after = array.after
    lines.append(f"  {master}  {array.stage:<8} {len(jobs)} task{'s' * (len(jobs) != 1)} (at most {throttle} at once)"
                 + (f"  after {after.removeprefix('afterok:')}" if after else ""))


def _report(console, task_ids: dict[str, str], lines: list[str], root, blocked: dict[str, str]) -> None:
    masters = list(dict.fromkeys(job_id.partition("_")[0] for job_id in task_ids.values()))
    if task_ids:
        console.print(f"submitted {len(task_ids)} runs as {len(masters)} Slurm job{'s' * (len(masters) != 1)} "
                      f"(sbatch {len(masters)}x):", highlight=False)
        for line in lines:
            console.print(line, highlight=False)
        console.print(f"  logs under {root}", highlight=False, soft_wrap=True)
    if blocked:
        console.print(f"blocked {len(blocked)} runs whose teacher failed (`seedrun sweep --retry-failed` reruns both)")


@contextlib.contextmanager
def interrupts_deferred(console):
    """Ctrl-C (SIGINT) while arrays are submitted only sets a flag (the list yielded becomes non-empty):
    an sbatch interrupted half-way could queue a job whose id nobody learns. The caller stops before
    the next array, records what was queued, then raises KeyboardInterrupt itself."""
    import signal
    import threading

    interrupted: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def defer(signum, frame):
        if not interrupted:
            console.print("interrupted: finishing this sbatch, then recording what was queued", highlight=False)
        interrupted.append(signum)

    previous = signal.signal(signal.SIGINT, defer)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)
