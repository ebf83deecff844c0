"""Run states and where things live, importable without SQLAlchemy or torch (the fast commands need them).

A run moves pending -> submitted -> running -> completed | failed | cancelled; "blocked" is a run whose
upstream (its teacher, or the run it evaluates) failed; "lost" is a run whose scheduler job vanished.
"""

from __future__ import annotations

import os
from pathlib import Path

PENDING, SUBMITTED, RUNNING, COMPLETED, FAILED, CANCELLED, BLOCKED, LOST = (
    "pending", "submitted", "running", "completed", "failed", "cancelled", "blocked", "lost",
)
STATES = (PENDING, SUBMITTED, RUNNING, COMPLETED, FAILED, CANCELLED, BLOCKED, LOST)
IN_FLIGHT = (SUBMITTED, RUNNING)


def seedrun_home() -> Path:
    return Path(os.environ.get("SEEDRUN_HOME", ".seedrun")).absolute()


def default_db_url() -> str:
    return os.environ.get("SEEDRUN_DB") or f"sqlite:///{seedrun_home() / 'seedrun.db'}"
