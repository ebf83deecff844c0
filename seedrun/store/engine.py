"""Where runs and metrics are recorded: the engine, sessions, and the few queries everyone needs.

SQLite is the default (a file under SEEDRUN_HOME, in WAL mode so that many array tasks can write
while `seedrun status` reads); any SQLAlchemy URL works through `--db` or SEEDRUN_DB.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, inspect, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from seedrun.errors import database_error
from seedrun.store.schema import Base, Run
from seedrun.sweeps.settings import settings_of


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
    sqlite_path = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
    if sqlite_path is not None and not create and not sqlite_path.exists():
        raise FileNotFoundError(sqlite_path)
    try:
        if sqlite_path is not None:
            sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"timeout": 60})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True)
        with engine.connect():  # a server that is down or a URL that is wrong fails here, before any work
            pass
    except Exception as exc:  # unknown kind of database, no driver, no server (the driver's own errors too)
        raise database_error(url, exc) from exc
    Base.metadata.create_all(engine)
    _upgrade(engine)
    _engines[url] = engine
    return engine


def _upgrade(engine: Engine) -> None:
    """Bring a database recorded by an earlier seedrun up to this schema; a no-op once it is.

    create_all makes only missing tables (with their indexes), so columns and indexes added to an
    existing table since are added here: runs.settings, filled from each run's config, and the
    indexes the read path (seedrun.store.records) relies on.
    """
    if "settings" not in {column["name"] for column in inspect(engine).get_columns("runs")}:
        with engine.begin() as connection:
            try:
                connection.execute(text("ALTER TABLE runs ADD COLUMN settings JSON"))
            except DBAPIError as exc:  # another process added it first
                if "duplicate column" not in str(exc) and "already exists" not in str(exc):
                    raise
            missing = connection.execute(select(Run.id, Run.config).where(Run.settings.is_(None))).all()
            for run_id, config in missing:
                connection.execute(update(Run).where(Run.id == run_id).values(settings=settings_of(config or {})))
    with engine.begin() as connection:
        connection.execute(text("CREATE INDEX IF NOT EXISTS ix_sweep_runs_order ON sweep_runs (sweep_id, position)"))
        if engine.dialect.name == "sqlite":
            # A covering index for `seedrun table`'s one query (seedrun.store.groups.load_groups). Runs rows are
            # wide (the config is two kilobytes), so grouping 10,000 runs by scanning the table reads
            # some 25 MB; this index holds just what the query reads, in its order. SQLite only:
            # PostgreSQL cannot put JSON columns in a B-tree index.
            connection.execute(text("CREATE INDEX IF NOT EXISTS ix_runs_grouping "
                                    "ON runs (stage, settings, state, finished_at, summary)"))


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

