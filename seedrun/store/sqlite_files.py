"""A SQLite run database as a file: which journal it may use where it lies, the lock its writers take on
a network filesystem, and one write transaction through the standard library's sqlite3.

WAL (readers never wait on the writer) needs shared memory that a network filesystem does not share
between hosts, so it is used only on a local disk; on NFS, Lustre, GPFS and the like the file uses
SQLite's rollback journal, and every write transaction of seedrun's commands holds an exclusive fcntl
lock on `<file>.lock` (NFS's lock manager serves it to every host). Said once per process.

No SQLAlchemy here: `status` brings run folders in through `write` without loading it.
"""

from __future__ import annotations

import fcntl
import sqlite3
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

from seedrun.store.folders import on_network_filesystem

_noted: set[str] = set()
T = TypeVar("T")


def journal_mode(path: str) -> str:
    """WAL on a local disk; the rollback journal (DELETE) on a network filesystem, said once."""
    remote, kind = on_network_filesystem(path)
    if not remote:
        return "WAL"
    if path not in _noted:
        _noted.add(path)
        print(f"note: {path} is on a {kind} filesystem: SQLite uses its rollback journal and a lock file there; "
              "for several login hosts, PostgreSQL suits better (--db postgresql://...)", file=sys.stderr)
    return "DELETE"


def pragmas(journal: str, busy_s: float) -> list[str]:
    return [f"PRAGMA journal_mode={journal}", "PRAGMA synchronous=" + ("NORMAL" if journal == "WAL" else "FULL"),
            f"PRAGMA busy_timeout={int(busy_s * 1000)}", "PRAGMA foreign_keys=ON"]


@contextmanager
def write_lock(path: str, journal: str) -> Iterator[None]:
    """The exclusive lock on `<path>.lock` that a write transaction holds under the rollback journal."""
    if journal == "WAL":
        yield
        return
    with open(path + ".lock", "a") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


def write(path: str, body: Callable[[sqlite3.Connection], T], wait_s: float) -> T:
    """`body(connection)` in one transaction on the file, the write lock taken first (waiting up to
    `wait_s` for it); rolled back on any error, which is raised."""
    journal = journal_mode(path)
    deadline = time.monotonic() + wait_s
    with write_lock(path, journal):
        connection = sqlite3.connect(path, timeout=wait_s, isolation_level=None)
        try:
            for pragma in pragmas(journal, max(0.0, deadline - time.monotonic())):
                connection.execute(pragma)
            connection.execute("BEGIN IMMEDIATE")
            try:
                out = body(connection)
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            return out
        finally:
            connection.close()


def connection_pragmas(journal: str, busy_s: float) -> Callable[[Any, Any], None]:
    """SQLAlchemy's connect hook for an engine on the file (seedrun.store.engine)."""
    def apply(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        for pragma in pragmas(journal, busy_s):
            cursor.execute(pragma)
        cursor.close()

    return apply
