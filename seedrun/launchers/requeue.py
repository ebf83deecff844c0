"""Preempted jobs go back to the queue within their run's budget (see seedrun.launchers.end_states).

For each run whose job Slurm reports PREEMPTED (and that is still in flight under that job id): if a
further preemption would exceed `max_preemptions`, the run fails with class `preempted`; else it moves
to `submitted` and its job is requeued, all of them with one `scontrol requeue`. The job counts the
preemption when it starts again (its previous attempt is still open in its record). A job that Slurm
refuses to requeue (no longer held) leaves its run `pending`, for the next `seedrun sweep`.
"""

from __future__ import annotations

from typing import Any


def requeue_preempted(db_url: str, preempted: list[tuple[int, str]]) -> int:
    """Requeue or fail the runs of preempted jobs [(run id, job id)]; returns how many runs changed."""
    from sqlalchemy import select

    from seedrun.job.budgets import record_event
    from seedrun.launchers.end_states import preemption_budget
    from seedrun.store.engine import session_scope
    from seedrun.store.schema import Run, utcnow
    from seedrun.store.states import FAILED, IN_FLIGHT, PENDING, SUBMITTED, transition

    requeued: dict[int, str] = {}
    changed = 0
    with session_scope(db_url) as session:
        ids = [run_id for run_id, _ in preempted]
        rows = {row.id: row for row in session.execute(
            select(Run.id, Run.config, Run.provenance, Run.attempts).where(Run.id.in_(ids)))}
        for run_id, job_id in preempted:
            row = rows.get(run_id)
            if row is None:
                continue
            prov: dict[str, Any] = dict(row.provenance or {})
            count, limit = preemption_budget(row.config or {}, prov)
            if 0 <= limit < count + 1:
                prov.update(preemptions=count + 1, attempt_open=False)
                record_event(prov, row.attempts or 0, "preempted", f"Slurm job {job_id} preempted; budget spent")
                changed += transition(session, run_id, FAILED, expect=IN_FLIGHT, where={"job_id": job_id},
                                      provenance=prov, failure_reason="preempted", finished_at=utcnow(),
                                      error=f"preemption budget spent: {count + 1} preemptions > max_preemptions={limit}")
            elif transition(session, run_id, SUBMITTED, expect=IN_FLIGHT, where={"job_id": job_id},
                            error=f"Slurm job {job_id} was preempted; requeued"):
                requeued[run_id] = job_id
                changed += 1
    if not requeued:
        return changed
    from seedrun.launchers.cluster import SlurmError, requeue

    try:
        refused = set(requeue(list(requeued.values())))
    except SlurmError as exc:
        refused, why = set(requeued.values()), str(exc)
    else:
        why = "Slurm no longer holds it"
    if refused:
        with session_scope(db_url) as session:
            for run_id, job_id in requeued.items():
                if job_id in refused:
                    transition(session, run_id, PENDING, expect=(SUBMITTED,), where={"job_id": job_id}, job_id=None,
                               error=f"Slurm job {job_id} was preempted and could not be requeued ({why}); "
                                     "`seedrun sweep` submits it again")
    return changed
