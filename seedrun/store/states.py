"""Run states, importable without SQLAlchemy or torch (the fast commands need them).

A run moves pending -> submitted -> running -> completed | failed | cancelled; "blocked" is a run whose
upstream (its teacher, or the run it evaluates) failed; "lost" is a run whose scheduler job vanished.
"""

from __future__ import annotations


PENDING, SUBMITTED, RUNNING, COMPLETED, FAILED, CANCELLED, BLOCKED, LOST = (
    "pending", "submitted", "running", "completed", "failed", "cancelled", "blocked", "lost",
)
STATES = (PENDING, SUBMITTED, RUNNING, COMPLETED, FAILED, CANCELLED, BLOCKED, LOST)
IN_FLIGHT = (SUBMITTED, RUNNING)
