"""`seedrun status`: counts per state and a row per run, after reconciling in-flight runs with reality.

Reconciliation asks the scheduler once per invocation (one batched sacct/squeue call for every Slurm
job in flight, never one per run) and marks runs whose jobs vanished as lost, or cancelled/failed as
Slurm reports them. Local jobs are checked by process id.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any, Optional

from seedrun.records import connect, has_settings, in_flight_runs, listed_rows, load_records, states_of

from seedrun.states import STATES


def _local_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reconcile(db_url: str) -> int:
    """Bring in-flight runs up to date with their jobs; returns how many changed.

    Slurm is asked once (seedrun.slurm.query_states: one sacct, at most one squeue) for every job in
    flight. A run is changed only if it is still in flight with the same job id when the answer is
    written (one conditional UPDATE per run), so a job that records its own result meanwhile wins.
    Jobs that died without recording are classified from Slurm's state: cancelled, timeout,
    out_of_memory, node_fail, or exception (failed, with Slurm's exit code). An array task waiting on
    a teacher that failed (DependencyNeverSatisfied: it would wait forever) is cancelled and marked
    blocked, or pending when its own teacher completed (`seedrun sweep` then resubmits it).
    """
    from seedrun.states import BLOCKED, CANCELLED, COMPLETED, FAILED, LOST, PENDING

    # Read with plain SQL: the ORM (a fifth of a second to import) is loaded only to write changes.
    runs = in_flight_runs(db_url)
    changes: list[tuple[int, Optional[str], dict[str, Any]]] = []
    slurm_runs = []
    for run_id, job_id, depends_on in runs:
        if job_id and job_id.startswith(("local:", "pid:")):
            pid = job_id.split(":", 1)[1]
            if pid.isdigit() and not _local_alive(int(pid)):
                changes.append((run_id, job_id, {"state": LOST, "error": "the local job's process is gone"}))
        elif job_id:
            slurm_runs.append((run_id, job_id, depends_on))
    to_cancel: list[str] = []
    if slurm_runs:
        from seedrun.slurm import SlurmError, State, query_states

        died_as = {State.TIMEOUT: "timeout", State.OUT_OF_MEMORY: "out_of_memory", State.NODE_FAIL: "node_fail",
                   State.FAILED: "exception"}
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
            values: Optional[dict[str, Any]] = None
            if found is None or found.missing:
                values = {"state": LOST, "error": f"Slurm job {job_id} is unknown to sacct and squeue"}
            elif found.state is State.CANCELLED:
                values = {"state": CANCELLED, "failure_reason": "cancelled", "error": f"Slurm: {found.raw or 'CANCELLED'}"}
            elif found.state is State.COMPLETED:
                values = {"state": LOST, "error": "Slurm says COMPLETED but the job recorded no result"}
            elif found.terminal:
                # The job died without recording it (killed, node lost, out of memory, time limit).
                reason = died_as.get(found.state, "exception")
                code = f", exit code {found.exit_code}" if found.exit_code else ""
                code += f", signal {found.signal}" if found.signal else ""
                values = {"state": FAILED, "failure_reason": reason, "error": f"Slurm: {found.raw or found.state}{code}"}
            elif found.state is State.PENDING and found.reason == "DependencyNeverSatisfied":
                to_cancel.append(job_id)
                upstream = upstream_states.get(depends_on or "", "unknown")
                if upstream == COMPLETED:
                    values = {"state": PENDING, "job_id": None,
                              "error": "its array waited on another teacher that failed; `seedrun sweep` resubmits it"}
                else:
                    values = {"state": BLOCKED, "failure_reason": "blocked",
                              "error": f"upstream run {(depends_on or '')[:12]} is {upstream}"}
            if values is not None:
                changes.append((run_id, job_id, values))
    changed = 0
    if changes:
        from sqlalchemy import update

        from seedrun.schema import IN_FLIGHT, Run
        from seedrun.store import session_scope

        with session_scope(db_url) as session:
            for run_id, job_id, values in changes:
                result = session.execute(update(Run).where(Run.id == run_id, Run.state.in_(IN_FLIGHT), Run.job_id == job_id)
                                         .values(**values))
                changed += result.rowcount or 0
    if to_cancel:
        from seedrun.slurm import SlurmError, cancel

        try:
            cancel(to_cancel)
        except SlurmError:
            pass
    return changed


# What status shows of a config (the rest stays in the database: `sqlite3` or the run's config.json).
STATUS_KEYS = ("distill.epochs", "pretrain.epochs", "pretrain.method", "pretrain.arch", "pretrain.role")


def _epochs(config: dict[str, Any], stage: str) -> Optional[int]:
    section = config.get("pretrain" if stage == "pretrain" else "distill") or {}
    return section.get("epochs")


def _describe(record) -> str:
    if record.axes:
        return " ".join([f"{key}={value}" for key, value in record.axes.items()])
    if record.stage == "pretrain":
        p = record.config.get("pretrain", {})
        return f"{p.get('method')} {p.get('arch')} ({p.get('role') or 'teacher'})"
    return ""


def _check_sweep(db_url: str, sweep: Optional[str], runs: list) -> None:
    if sweep is not None and not runs:
        from seedrun.errors import InputError

        raise InputError("status", "SWEEP", f"no sweep named {sweep!r} in {db_url}")


# One JSON object per run, made by SQLite (json_object in C is ten times faster than json.dumps on
# 10,000 runs); its fields are those of _run_as_json, which makes them elsewhere.
_RUN_JSON_SQL = """
    SELECT r.id, r.state, json_object(
        'hash', r.hash, 'sweep', {sweep}, 'stage', r.stage, 'state', r.state, 'epoch', r.epoch,
        'epochs', json_extract(r.settings, CASE r.stage WHEN 'pretrain' THEN '$."pretrain.epochs"'
                                                        ELSE '$."distill.epochs"' END),
        'axes', json(coalesce({axes}, '{{}}')), 'metrics', json(coalesce(r.summary, '{{}}')),
        'job_id', r.job_id, 'failure_reason', r.failure_reason, 'error', r.error)
    FROM runs r"""


def _run_as_json(record) -> str:
    return json.dumps({
        "hash": record.hash, "sweep": record.sweep, "stage": record.stage, "state": record.state,
        "epoch": record.epoch, "epochs": _epochs(record.config, record.stage), "axes": record.axes,
        "metrics": record.metrics, "job_id": record.job_id, "failure_reason": record.failure_reason,
        "error": record.error}, default=str)


def _runs_as_json(db_url: str, sweep: Optional[str], in_sql: bool = True) -> list[tuple[str, str]]:
    """(state, JSON object) of every run (of one sweep, if named), in the order status lists them."""
    if in_sql and db_url.startswith("sqlite:///"):
        from contextlib import closing

        connection, _ = connect(db_url)
        with closing(connection):
            cursor = connection.cursor()
            if has_settings(cursor):
                rows = listed_rows(cursor, lambda name, axes: _RUN_JSON_SQL.format(sweep=name, axes=axes), "?", sweep)
                return [(state, text) for _, state, text in rows]
    return [(record.state, _run_as_json(record)) for record in load_records(db_url, sweep=sweep, keys=STATUS_KEYS)]


def show_status(db_url: str, sweep: Optional[str], as_json: bool = False, check_jobs: bool = True) -> int:
    if db_url.startswith("sqlite:///"):
        if not os.path.exists(db_url.removeprefix("sqlite:///")):
            print(json.dumps({"counts": {}, "runs": []}) if as_json else f"no runs recorded yet ({db_url})")
            return 0
    if check_jobs:
        reconcile(db_url)
    if as_json:
        runs = _runs_as_json(db_url, sweep)
        _check_sweep(db_url, sweep, runs)
        counts = Counter(state for state, _ in runs)
        print(f'{{"counts": {json.dumps({state: counts.get(state, 0) for state in STATES})}, '
              f'"runs": [{", ".join(text for _, text in runs)}]}}')
        return 0
    records = load_records(db_url, sweep=sweep, keys=STATUS_KEYS, metrics=["knn_top1"])
    _check_sweep(db_url, sweep, records)
    counts = Counter(record.state for record in records)
    # Plain aligned text: rich's Table takes seconds on 10,000 rows and status must stay instant.
    print("  ".join(f"{state} {counts[state]}" for state in STATES if counts.get(state)) or "no runs")
    header = ("sweep", "run", "stage", "setting", "state", "epoch", "k-NN top-1", "job")
    rows = [header]
    for r in records:
        metric = r.metrics.get("knn_top1")
        epochs = _epochs(r.config, r.stage)
        rows.append((r.sweep or "", r.hash[:12], r.stage, _describe(r),
                     f"{r.state} ({r.failure_reason})" if r.failure_reason else r.state,
                     f"{r.epoch}/{epochs}" if epochs else str(r.epoch),
                     f"{metric:.2f}" if metric is not None else "", r.job_id or ""))
    widths = [max(map(len, column)) for column in zip(*rows)]
    line = "  ".join(f"{{:<{width}}}" for width in widths)
    print("\n".join(line.format(*row).rstrip() for row in rows))
    return 0
