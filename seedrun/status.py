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

from seedrun.records import count_in_flight, load_records

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
    from sqlalchemy import select, update

    from seedrun.schema import BLOCKED, CANCELLED, COMPLETED, FAILED, IN_FLIGHT, LOST, PENDING, Run
    from seedrun.store import session_scope

    with session_scope(db_url) as session:
        runs = session.execute(select(Run.id, Run.job_id, Run.depends_on).where(Run.state.in_(IN_FLIGHT))).all()
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
                with session_scope(db_url) as session:
                    upstream_states = dict(session.execute(select(Run.hash, Run.state).where(Run.hash.in_(waiting))).all())
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


def _main_metric(metrics: dict[str, float]) -> Optional[float]:
    return metrics.get("knn_top1")


def _epochs(config: dict[str, Any], stage: str) -> Optional[int]:
    section = config.get("pretrain" if stage == "pretrain" else "distill") or {}
    return section.get("epochs")


def _describe(record) -> str:
    if record.axes:
        return " ".join(f"{key}={value}" for key, value in record.axes.items())
    if record.stage == "pretrain":
        p = record.config.get("pretrain", {})
        return f"{p.get('method')} {p.get('arch')} ({p.get('role') or 'teacher'})"
    return ""


def show_status(db_url: str, sweep: Optional[str], as_json: bool = False, check_jobs: bool = True) -> int:
    if db_url.startswith("sqlite:///"):
        from pathlib import Path

        if not Path(db_url.removeprefix("sqlite:///")).exists():
            print(json.dumps({"counts": {}, "runs": []}) if as_json else f"no runs recorded yet ({db_url})")
            return 0
    if check_jobs and count_in_flight(db_url):  # the ORM is imported only when there is work
        reconcile(db_url)
    records = load_records(db_url, sweep=sweep, keys=STATUS_KEYS, metrics=None if as_json else ["knn_top1"])
    if sweep is not None and not records:
        from seedrun.errors import InputError

        raise InputError("status", "SWEEP", f"no sweep named {sweep!r} in {db_url}")
    counts = Counter(record.state for record in records)
    if as_json:
        print(json.dumps({
            "counts": {state: counts.get(state, 0) for state in STATES},
            "runs": [{"hash": r.hash, "sweep": r.sweep, "stage": r.stage, "state": r.state, "epoch": r.epoch,
                      "epochs": _epochs(r.config, r.stage), "axes": r.axes, "metrics": r.metrics,
                      "job_id": r.job_id, "failure_reason": r.failure_reason, "error": r.error} for r in records],
        }, default=str))
        return 0
    # Plain aligned text: rich's Table takes seconds on 10,000 rows and status must stay instant.
    print("  ".join(f"{state} {counts[state]}" for state in STATES if counts.get(state)) or "no runs")
    header = ("sweep", "run", "stage", "setting", "state", "epoch", "k-NN top-1", "job")
    rows = []
    for r in records:
        metric = _main_metric(r.metrics)
        epochs = _epochs(r.config, r.stage)
        state = r.state + (f" ({r.failure_reason})" if r.failure_reason else "")
        rows.append((r.sweep or "", r.hash[:12], r.stage, _describe(r), state,
                     f"{r.epoch}/{epochs}" if epochs else str(r.epoch),
                     f"{metric:.2f}" if metric is not None else "", r.job_id or ""))
    widths = [max([len(header[i])] + [len(row[i]) for row in rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header] + rows]
    print("\n".join(lines))
    return 0
