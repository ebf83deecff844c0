"""Where runs and metrics are recorded: the engine, sessions, and the few queries everyone needs.

SQLite is the default (a file under SEEDRUN_HOME, in WAL mode so that many array tasks can write
while `seedrun status` reads); any SQLAlchemy URL works through `--db` or SEEDRUN_DB.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from seedrun.schema import Base, Metric, Run, Sweep, SweepRun


def seedrun_home() -> Path:
    return Path(os.environ.get("SEEDRUN_HOME", ".seedrun")).absolute()


def default_db_url() -> str:
    return os.environ.get("SEEDRUN_DB") or f"sqlite:///{seedrun_home() / 'seedrun.db'}"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


_engines: dict[str, Engine] = {}


def engine_for(url: str, create: bool = True) -> Engine:
    """One engine per URL per process; tables are created on first use when `create` is set."""
    if url in _engines:
        return _engines[url]
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not create and not path.exists():
            raise FileNotFoundError(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    Base.metadata.create_all(engine)
    _engines[url] = engine
    return engine


@contextmanager
def session_scope(url: str, retries: int = 8) -> Iterator[Session]:
    """A transaction that commits on success; SQLite lock contention is retried with backoff.

    The body must be safe to re-run (it is, for every writer here: each reads what it changes).
    """
    factory = sessionmaker(engine_for(url), expire_on_commit=False)
    with factory() as session:
        yield session
        for attempt in range(retries):
            try:
                session.commit()
                return
            except OperationalError as exc:
                if "locked" not in str(exc) or attempt == retries - 1:
                    raise
                time.sleep(0.05 * 2**attempt)


@dataclass
class RunRecord:
    """A run as tables and status see it: plain data, no session attached."""

    hash: str
    stage: str
    state: str
    epoch: int
    config: dict[str, Any]
    axes: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # last value of each metric
    finished_at: Any = None
    error: Optional[str] = None
    failure_reason: Optional[str] = None
    job_id: Optional[str] = None
    sweep: Optional[str] = None


def load_records(url: str, sweep: Optional[str] = None, stage: Optional[str] = None) -> list[RunRecord]:
    """Every run (of one sweep, if named) with the last value of each of its metrics."""
    with session_scope(url) as session:
        query = select(Run, SweepRun.axes, Sweep.name).join(SweepRun, SweepRun.run_id == Run.id).join(Sweep)
        if sweep is not None:
            query = query.where(Sweep.name == sweep)
        if stage is not None:
            query = query.where(Run.stage == stage)
        query = query.order_by(Sweep.id, SweepRun.position)
        records: dict[int, RunRecord] = {}
        for run, axes, sweep_name in session.execute(query):
            if run.id in records:
                continue
            records[run.id] = RunRecord(
                hash=run.hash, stage=run.stage, state=run.state, epoch=run.epoch, config=run.config,
                axes=axes, finished_at=run.finished_at, error=run.error,
                failure_reason=run.failure_reason, job_id=run.job_id, sweep=sweep_name,
            )
        if records:
            # Metrics are written in time order, so the last row per (run, name) is the latest value.
            metric_query = select(Metric.run_id, Metric.name, Metric.value).order_by(Metric.id)
            if sweep is not None:
                metric_query = metric_query.where(Metric.run_id.in_(list(records)))
            for run_id, name, value in session.execute(metric_query):
                if run_id in records:
                    records[run_id].metrics[name] = value
        return list(records.values())
