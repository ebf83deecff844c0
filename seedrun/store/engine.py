"""Where runs and metrics are recorded: the engine, ORM sessions, and writes that must not fail.

Only seedrun's commands open the database (jobs write their run folders). SQLite is the default: a file
under SEEDRUN_HOME, in WAL mode on a local disk and with the rollback journal and a lock file on a
network filesystem (seedrun.store.sqlite_files); any SQLAlchemy URL works through `--db` or SEEDRUN_DB.

The ORM is imported by `session_scope` only: `write` hands its body a Core connection.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from seedrun.errors import InputError, database_error
from seedrun.store.sqlite_files import connection_pragmas, journal_mode, write_lock
from seedrun.store.locations import busy_seconds
from seedrun.store.migrate import upgrade

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


_engines: dict[str, Engine] = {}
#: {URL: (file, journal)} of SQLite files: their write transactions take the lock the journal needs
_files: dict[str, tuple[str, str]] = {}


@contextmanager
def _write_lock(url: str) -> Iterator[None]:
    path, journal = _files.get(url, ("", "WAL"))
    with write_lock(path, journal):
        yield


def engine_for(url: str, create: bool = True) -> Engine:
    """One engine per URL per process; tables are created on first use when `create` is set."""
    sqlite_path = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
    if url in _engines:
        if sqlite_path is None or sqlite_path.exists():
            return _engines[url]
        _engines.pop(url).dispose()  # the file was deleted (to be rebuilt by `seedrun sync`): a new one
    if sqlite_path is not None and not create and not sqlite_path.exists():
        raise FileNotFoundError(sqlite_path)
    try:
        if sqlite_path is not None:
            sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"timeout": busy_seconds()})
            journal = journal_mode(str(sqlite_path))
            _files[url] = (str(sqlite_path), journal)
            event.listen(engine, "connect", connection_pragmas(journal, busy_seconds()))
        else:
            engine = create_engine(url, pool_pre_ping=True)
        with engine.connect():  # a server that is down or a URL that is wrong fails here, before any work
            pass
    except Exception as exc:  # unknown kind of database, no driver, no server (the driver's own errors too)
        raise database_error(url, exc) from exc
    upgrade(engine)  # to HEAD (seedrun.store.migrations); one line on stderr when it was older
    _engines[url] = engine
    return engine


@contextmanager
def session_scope(url: str, retries: int = 8) -> Iterator["Session"]:
    """A transaction that commits on success and rolls back on any error (then re-raised).

    A lock met in commit() is retried with backoff. A body that can meet a lock itself, and must not
    fail, goes through `write` instead, which re-runs the whole transaction.
    """
    from sqlalchemy.orm import sessionmaker

    factory = sessionmaker(engine_for(url), expire_on_commit=False)
    with _write_lock(url), factory() as session:
        try:
            yield session
            for attempt in range(retries):
                try:
                    session.commit()
                    return
                except OperationalError as exc:
                    if "locked" not in str(exc) or attempt == retries - 1:
                        raise
                    time.sleep(0.05 * 2**attempt)
        except BaseException:
            session.rollback()
            raise


T = TypeVar("T")


def write(url: str, body: Callable[[Connection], T], wait_s: float = 60.0) -> T:
    """Run `body(connection)` in a transaction and commit it, retrying the whole transaction (after a
    rollback) with backoff while the database is locked, busy or unreachable, for up to `wait_s`
    seconds in all; then the last error is raised. `body` must be safe to re-run (it reads what it changes).

    `body` gets a Core connection (statements over seedrun.store.tables), not an ORM session.
    """
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        try:
            engine = engine_for(url)
            with _write_lock(url), engine.begin() as connection:
                return body(connection)
        except (OperationalError, DBAPIError) as exc:
            if not _transient(exc) or time.monotonic() + delay > deadline:
                raise
        except InputError as exc:  # engine_for: a server that is down (or a URL that is wrong)
            if exc.source != "--db" or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


def _transient(exc: BaseException) -> bool:
    """A lock, a busy file or a connection that failed: worth another try (not a mistake in the SQL)."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    text_ = str(exc).lower()
    return any(word in text_ for word in ("locked", "busy", "could not connect", "connection", "server closed",
                                          "terminating", "timeout", "timed out", "unable to open"))
