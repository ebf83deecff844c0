"""Every way a Slurm job ends, as a run state and a failure class (what `seedrun status` moves a run to).

A job that records its own end (RunJob) needs none of this. These are the jobs that ended without
recording it: killed, preempted, lost with their node, or gone from Slurm altogether.

| Slurm says                      | run state  | failure class  |
|---------------------------------|------------|----------------|
| COMPLETED (but nothing recorded)| lost       | no_result      |
| FAILED                          | failed     | exception      |
| TIMEOUT                         | failed     | timeout        |
| PREEMPTED                       | submitted (requeued) within max_preemptions, else failed: preempted |
| NODE_FAIL, BOOT_FAIL            | failed     | node_fail      |
| OUT_OF_MEMORY                   | failed     | out_of_memory  |
| CANCELLED                       | cancelled  | cancelled      |
| DEADLINE                        | failed     | deadline       |
| unknown to sacct and squeue     | lost       | vanished       |

A preempted job (PreemptMode=CANCEL: Slurm cancels it, it does not come back) goes back to the queue:
the run is moved to `submitted` and its job requeued with `scontrol requeue` (same job id, same task
pickle; the job resumes from its checkpoint and counts the preemption when it starts, as for any
attempt that ended without recording how). Once `max_preemptions` is spent the run fails with class
`preempted` instead. A job Slurm no longer holds cannot be requeued: its run goes back to `pending`,
and the next `seedrun sweep` submits it again.
"""

from __future__ import annotations

from typing import Any, Optional

from seedrun.launchers.cluster import SlurmState, State
from seedrun.store.states import CANCELLED, FAILED, LOST

#: Slurm's end state -> (run state, failure class). PREEMPTED: once the budget is spent.
END_STATES: dict[State, tuple[str, str]] = {
    State.COMPLETED: (LOST, "no_result"),
    State.FAILED: (FAILED, "exception"),
    State.TIMEOUT: (FAILED, "timeout"),
    State.PREEMPTED: (FAILED, "preempted"),
    State.NODE_FAIL: (FAILED, "node_fail"),
    State.BOOT_FAIL: (FAILED, "node_fail"),
    State.OUT_OF_MEMORY: (FAILED, "out_of_memory"),
    State.CANCELLED: (CANCELLED, "cancelled"),
    State.DEADLINE: (FAILED, "deadline"),
}
VANISHED = (LOST, "vanished")


def ended(found: Optional[SlurmState]) -> bool:
    """True when the job will not run again by itself (or Slurm knows nothing of it)."""
    return found is None or found.missing or found.terminal or found.state is State.PREEMPTED


def end_of(job_id: str, found: Optional[SlurmState]) -> tuple[str, dict[str, Any]]:
    """(run state, values to set) for a job that ended without recording its end."""
    if found is None or found.missing:
        to, reason = VANISHED
        return to, {"failure_reason": reason, "error": f"Slurm job {job_id} is unknown to sacct and squeue"}
    to, reason = END_STATES[found.state]
    if found.state is State.COMPLETED:
        return to, {"failure_reason": reason, "error": "Slurm says COMPLETED but the job recorded no result"}
    code = f", exit code {found.exit_code}" if found.exit_code else ""
    code += f", signal {found.signal}" if found.signal else ""
    return to, {"failure_reason": reason, "error": f"Slurm: {found.raw or found.state}{code}"}


def preemption_budget(config: dict[str, Any], provenance: dict[str, Any]) -> tuple[int, int]:
    """(preemptions counted so far, max_preemptions) from the run's record."""
    from seedrun.job.budgets import budgets_of

    launcher = {**(config.get("launcher") or {}), **(provenance.get("launcher") or {})}
    return int(provenance.get("preemptions") or 0), budgets_of(launcher)["max_preemptions"]
