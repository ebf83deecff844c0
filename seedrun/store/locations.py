"""Where things live: SEEDRUN_HOME (run folders, submitit logs, the default SQLite file) and the
database URL. No SQLAlchemy, no pathlib at import: `status` and `table` start sooner without them."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


def _home() -> str:
    return os.path.abspath(os.environ.get("SEEDRUN_HOME", ".seedrun"))


def seedrun_home() -> "Path":
    from pathlib import Path

    return Path(_home())


def default_db_url() -> str:
    # os.path, not pathlib: `status` and `table` start 7 ms sooner without importing it
    return os.environ.get("SEEDRUN_DB") or f"sqlite:///{os.path.join(_home(), 'seedrun.db')}"


def busy_seconds() -> float:
    """How long one SQLite statement waits for a lock (SEEDRUN_DB_BUSY_S, default 60)."""
    try:
        return max(0.0, float(os.environ.get("SEEDRUN_DB_BUSY_S", "60")))
    except ValueError:
        return 60.0
