"""Reconciliation: in-flight runs brought up to date with their jobs, for `seedrun status` and `retry`.

The scheduler is asked once per invocation (one batched sacct/squeue call for every Slurm job in
flight, never one per run); runs whose jobs vanished are marked lost, or cancelled/failed as Slurm
reports them. Local jobs are checked by process id. Before a run is called lost (or failed, or
cancelled) its folder is read once more: a job that recorded its end in the folder after the last
look keeps what it recorded.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from seedrun.store.folders import hostname
from seedrun.store.records import in_flight_runs, states_of


def _local_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _column(db_url: str, run_ids: list[int], column: str) -> dict[int, Any]:
    """{run id: that run's `column`}, read with plain SQL, 500 ids a query."""
    from contextlib import closing

    from seedrun.store.records import connect

    connection, mark = connect(db_url)
    found: dict[int, Any] = {}
    with closing(connection):
        cursor = connection.cursor()
        for start in range(0, len(run_ids), 500):
            part = run_ids[start:start + 500]
            cursor.execute(f"SELECT id, {column} FROM runs WHERE id IN ({', '.join(mark for _ in part)})", part)
            found.update(cursor.fetchall())
    return found


def _hosts(db_url: str, run_ids: list[int]) -> dict[int, Optional[str]]:
    """{run id: the host its local job runs on} (provenance "host": the launcher's, then the job's)."""
    import json

    found = {}
    for run_id, prov in _column(db_url, run_ids, "provenance").items():
        prov = json.loads(prov) if isinstance(prov, str) else prov
        found[run_id] = (prov or {}).get("host")
    return found


def _with_failing_rank(db_url: str, changes: list[tuple[int, Optional[str], str, dict[str, Any]]]) -> None:
    """A job that Slurm calls FAILED because one rank died: srun (--kill-on-bad-exit) often ends rank 0
    before it records anything, but the failing rank wrote its class in the run folder
    (seedrun.job.ranks.write_failure), or, killed, wrote none beside its process record. That class and
    message replace Slurm's generic `exception`."""
    failed = [change for change in changes if change[2] == "failed" and change[3].get("failure_reason") == "exception"]
    if not failed:
        return
    from pathlib import Path

    from seedrun.job.ranks import RankFailed, failing_rank

    run_dirs = _column(db_url, [run_id for run_id, *_ in failed], "run_dir")
    for run_id, _, _, values in failed:
        record = failing_rank(Path(run_dirs[run_id]), others_gone=True) if run_dirs.get(run_id) else None
        if record is not None:
            values["failure_reason"] = record.get("reason") or "exception"
            values["error"] = f"{RankFailed(record)} ({values['error']})"


def reconcile(db_url: str) -> int:
    """Bring in-flight runs up to date with their jobs; returns how many changed.

    Slurm is asked once (seedrun.launchers.cluster.query_states: one sacct, at most one squeue) for every job in
    flight. A run is changed only if it is still in flight with the same job id when the answer is
    written (seedrun.store.states.transition, one per run), so a job that records its own result meanwhile wins.
    Jobs that died without recording are classified from Slurm's state (seedrun.launchers.end_states:
    every end state Slurm has, and a job it no longer knows); a preempted job is requeued within the
    run's max_preemptions (seedrun.launchers.requeue), its run failed once that is spent; a FAILED job whose
    failing rank left its record in the run folder takes that rank's class. An array task waiting on
    a teacher that failed (DependencyNeverSatisfied: it would wait forever) is cancelled and marked
    blocked, or pending when its own teacher completed (`seedrun sweep` then resubmits it).
    """
    from seedrun.store.states import BLOCKED, COMPLETED, IN_FLIGHT, LOST, PENDING, transition

    # Read with plain SQL: the ORM (a fifth of a second to import) is loaded only to write changes.
    runs = in_flight_runs(db_url)
    changes: list[tuple[int, Optional[str], str, dict[str, Any]]] = []  # (run id, job id, new state, values)
    slurm_runs = []
    local = [(run_id, job_id) for run_id, job_id, _ in runs if job_id and job_id.startswith(("local:", "pid:"))]
    hosts = _hosts(db_url, [run_id for run_id, _ in local]) if local else {}
    here = hostname()
    for run_id, job_id in local:
        pid = job_id.split(":", 1)[1]
        # A process id means something only on the host that started it: elsewhere, leave the run alone.
        if hosts.get(run_id) == here and pid.isdigit() and not _local_alive(int(pid)):
            changes.append((run_id, job_id, LOST, {"failure_reason": "vanished", "error": "the local job's process is gone"}))
    for run_id, job_id, depends_on in runs:
        if job_id and not job_id.startswith(("local:", "pid:")):
            slurm_runs.append((run_id, job_id, depends_on))
    to_cancel: list[str] = []
    preempted: list[tuple[int, str]] = []
    if slurm_runs:
        from seedrun.launchers.cluster import SlurmError, State, query_states
        from seedrun.launchers.end_states import end_of, ended

        try:
            states = query_states([job_id for _, job_id, _ in slurm_runs])
        except SlurmError:
            states = None  # Slurm unreachable: leave states as they are rather than guess
        upstream_states: dict[str, str] = {}
        if states is not None:
            waiting = [depends_on for _, job_id, depends_on in slurm_runs if depends_on and job_id in states
                       and states[job_id].reason == "DependencyNeverSatisfied"]
            if waiting:
                upstream_states = states_of(db_url, waiting)
        for run_id, job_id, depends_on in slurm_runs if states is not None else []:
            found = states.get(job_id)
            to: Optional[str] = None
            values: dict[str, Any] = {}
            if found is not None and found.state is State.PREEMPTED and not found.missing:
                preempted.append((run_id, job_id))  # back to the queue, within its budget
            elif ended(found):
                # The job died without recording it (killed, preempted, node lost, out of memory, time limit).
                to, values = end_of(job_id, found)
            elif found.state is State.PENDING and found.reason == "DependencyNeverSatisfied":
                to_cancel.append(job_id)
                upstream = upstream_states.get(depends_on or "", "unknown")
                if upstream == COMPLETED:
                    to, values = PENDING, {"job_id": None,
                                           "error": "its array waited on another teacher that failed; `seedrun sweep` resubmits it"}
                else:
                    to, values = BLOCKED, {"failure_reason": "blocked",
                                           "error": f"upstream run {(depends_on or '')[:12]} is {upstream}"}
            if to is not None:
                changes.append((run_id, job_id, to, values))
        _with_failing_rank(db_url, changes)
    changed = 0
    if changes:
        from seedrun.store.catchup import catch_up
        from seedrun.store.engine import session_scope

        # A job that ended after status's catch-up recorded its end in its folder, not in the database:
        # bring those folders in first, so that the guarded changes below find such runs no longer in flight.
        catch_up(db_url, list(_column(db_url, [run_id for run_id, *_ in changes], "hash").values()), quiet=True)

        with session_scope(db_url) as session:
            for run_id, job_id, to, values in changes:
                changed += transition(session, run_id, to, expect=IN_FLIGHT, where={"job_id": job_id}, **values)
    if preempted:
        from seedrun.launchers.requeue import requeue_preempted

        changed += requeue_preempted(db_url, preempted)
    if to_cancel:
        from seedrun.launchers.cluster import SlurmError, cancel

        try:
            cancel(to_cancel)
        except SlurmError:
            pass
    return changed
