"""How a job records its run: the folder first (seedrun.store.folders), the database after, and never at
the cost of the run.

- Where the job may write the database (seedrun.store.folders.jobs_write_db: a server database, or a
  SQLite file on a local disk of this very host), each change of the folder record is applied to it
  (seedrun.store.catchup.apply_record) in a transaction that is rolled back and retried with backoff
  while the database is locked, busy or unreachable, for SEEDRUN_DB_WAIT_S seconds (default 60). After
  that the job logs one line, leaves the database alone for as long again and trains on; the record
  in its folder is complete, and the next write, `seedrun status`, `table` or `sync` brings it in.
- Elsewhere (a SQLite file on a network filesystem, or created by another host) the job writes only
  its folder.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from seedrun.store.folders import FolderRecord, jobs_write_db, read_config, read_record

if TYPE_CHECKING:
    from seedrun.job.run_job import RunJob


def wait_seconds() -> float:
    """How long a job's database write is retried before the job gives up on it (SEEDRUN_DB_WAIT_S)."""
    try:
        return max(0.0, float(os.environ.get("SEEDRUN_DB_WAIT_S", "60")))
    except ValueError:
        return 60.0


def finite_or_none(values: dict[str, Any]) -> dict[str, Any]:
    """Metric values as records hold them: numbers, or None for NaN and infinities (no store holds NaN)."""
    return {name: float(value) if math.isfinite(float(value)) else None for name, value in (values or {}).items()}


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _row_record(row) -> tuple[FolderRecord, dict[str, Any], str]:
    (run_hash, stage, depends_on, state, attempts, epoch, job_id, error, failure_reason, provenance, summary,
     started_at, finished_at, updated_at, config, run_dir) = row
    record = FolderRecord(hash=run_hash, stage=stage, depends_on=depends_on, state=state, attempts=attempts or 0,
                          epoch=epoch or 0, job_id=job_id, error=error, failure_reason=failure_reason,
                          provenance=dict(provenance or {}), summary=dict(summary or {}), started_at=started_at,
                          finished_at=finished_at, updated=float(updated_at or 0))
    return record, dict(config or {}), run_dir


def _read_rows(session, hashes: list[str]) -> dict[str, tuple]:
    from sqlalchemy import select

    from seedrun.store.tables import runs

    c = runs.c
    rows = session.execute(select(c.hash, c.stage, c.depends_on, c.state, c.attempts, c.epoch, c.job_id, c.error,
                                  c.failure_reason, c.provenance, c.summary, c.started_at, c.finished_at,
                                  c.updated_at, c.config, c.run_dir).where(c.hash.in_(hashes))).all()
    return {row[0]: tuple(row) for row in rows}


def _newer(folder: Optional[FolderRecord], db: Optional[FolderRecord]) -> Optional[FolderRecord]:
    if folder is None or db is None:
        return folder or db
    return folder if float(folder.get("updated") or 0) > float(db.get("updated") or 0) else db


def load_run(job: "RunJob") -> Optional[tuple[FolderRecord, dict[str, Any], Path, Optional[tuple[str, str]]]]:
    """(the run's record, its config, its folder, (upstream state, upstream folder) or None).

    From the database where the job writes it and from the run's folder, the newer record winning;
    from the folder alone elsewhere, or while the database cannot be read.
    """
    from seedrun.store.locations import seedrun_home

    job._writes_db, why = jobs_write_db(job.db_url)
    rows: dict[str, tuple] = {}
    if job._writes_db:
        from seedrun.store.engine import write

        def read(session) -> dict[str, tuple]:
            found = _read_rows(session, [job.run_hash])
            depends_on = found[job.run_hash][2] if job.run_hash in found else None
            return {**found, **(_read_rows(session, [depends_on]) if depends_on else {})}

        try:
            rows = write(job.db_url, read, wait_s=wait_seconds())
        except Exception as exc:  # the folder holds the record: train from it
            job._log(f"database not read ({_first_line(exc)}); the run's folder has its record")
            job._db_down_until = time.monotonic() + wait_seconds()
    else:
        job._log(f"recording to the run's folder only: {why}")
    db_record, config, run_dir = _row_record(rows[job.run_hash]) if job.run_hash in rows else (None, {}, None)
    run_dir = Path(run_dir) if run_dir else seedrun_home() / "runs" / job.run_hash[:16]
    record = _newer(read_record(str(run_dir)), db_record)
    config = config or read_config(str(run_dir)) or {}
    if record is None or not config:
        job._log(f"run {job.run_hash[:12]}: no record in {run_dir} and none in the database this job may read")
        return None
    record = FolderRecord(record)
    record.setdefault("hash", job.run_hash)
    if record.get("stage") == "eval":
        from seedrun.store.protocols import protocol_key

        record["protocol_key"] = protocol_key(config)
    upstream = None
    depends_on = record.get("depends_on")
    if depends_on:
        up_db, _, up_dir = _row_record(rows[depends_on]) if depends_on in rows else (None, {}, None)
        up_dir = Path(up_dir) if up_dir else run_dir.parent / depends_on[:16]
        up = _newer(read_record(str(up_dir)), up_db)
        if up is None and (up_dir / "model.pt").exists():
            up = FolderRecord(state="completed")  # trained before folder records: its model is there
        upstream = ((up or {}).get("state", "missing"), str(up_dir))
    return record, config, run_dir, upstream


def _state_row(session, run_hash: str):
    from sqlalchemy import select

    from seedrun.store.tables import runs

    c = runs.c
    return session.execute(select(c.state, c.error, c.failure_reason, c.finished_at, c.updated_at)
                           .where(c.hash == run_hash)).first()


def _adopt(record: FolderRecord, row) -> bool:
    """Take the database's state into the record where the database changed it later (another writer)."""
    if row is None or row[0] == record.get("state") or float(row[4] or 0) < float(record.get("updated") or 0):
        return False
    state, error, failure_reason, finished_at, updated_at = row
    record.update(state=state, error=error, failure_reason=failure_reason, finished_at=finished_at,
                  updated=float(updated_at or 0))
    return True


def pull(job: "RunJob", record: FolderRecord) -> bool:
    """Before the job changes its record: a newer state the database holds (a cancel, a loss recorded
    by `seedrun status`) comes into it; True if it did. Never raises."""
    if not getattr(job, "_writes_db", False) or time.monotonic() < job._db_down_until:
        return False
    from seedrun.store.engine import write

    try:
        row = write(job.db_url, lambda session: _state_row(session, record["hash"]), wait_s=wait_seconds())
    except Exception as exc:
        job._db_down_until = time.monotonic() + wait_seconds()
        job._log(f"database not read ({_first_line(exc)}); the run goes on from its folder's record")
        return False
    return _adopt(record, row)


def push(job: "RunJob", record: FolderRecord, run_dir: Path) -> bool:
    """Apply the record (already in its folder) to the database, if this job writes it; never raises.

    Returns True when the database held a newer change of the run's state (another writer's: a
    cancel, a loss) that now stands in the record too.
    """
    if not getattr(job, "_writes_db", False) or time.monotonic() < job._db_down_until:
        return False
    from seedrun.store.catchup import apply_record
    from seedrun.store.engine import write

    def body(session):
        apply_record(session, record, str(run_dir))
        return _state_row(session, record["hash"])

    try:
        row = write(job.db_url, body, wait_s=wait_seconds())
    except Exception as exc:
        job._db_down_until = time.monotonic() + wait_seconds()
        job._log(f"database not written ({_first_line(exc)}); the run goes on, its folder holds the record "
                 "(`seedrun status` or `seedrun sync` bring it in)")
        return False
    if row is None or row[0] == record.get("state"):
        return False
    row = (*row[:4], max(float(row[4] or 0), float(record["updated"])))  # refused: the database's state stands
    return _adopt(record, row)
