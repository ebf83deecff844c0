"""Run states and where things live, importable without SQLAlchemy or torch (the fast commands need them).

A run moves pending -> submitted -> running -> completed | failed | cancelled; "blocked" is a run whose
upstream (its teacher, or the run it evaluates) failed; "lost" is a run whose scheduler job vanished.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

PENDING, SUBMITTED, RUNNING, COMPLETED, FAILED, CANCELLED, BLOCKED, LOST = (
    "pending", "submitted", "running", "completed", "failed", "cancelled", "blocked", "lost",
)
STATES = (PENDING, SUBMITTED, RUNNING, COMPLETED, FAILED, CANCELLED, BLOCKED, LOST)
IN_FLIGHT = (SUBMITTED, RUNNING)


def _home() -> str:
    return os.path.abspath(os.environ.get("SEEDRUN_HOME", ".seedrun"))


def seedrun_home() -> "Path":
    from pathlib import Path

    return Path(_home())


def default_db_url() -> str:
    # os.path, not pathlib: `status` and `table` start 7 ms sooner without importing it
    return os.environ.get("SEEDRUN_DB") or f"sqlite:///{os.path.join(_home(), 'seedrun.db')}"
