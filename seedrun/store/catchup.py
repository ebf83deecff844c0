"""The index brought up to date from run folders (seedrun.store.folders): what a job's own write does
after its folder, what `status` and `table` do for the runs still in flight, and what `sync` does for
every folder it is given.

A folder record is applied when it is newer than the row (run.json's "updated" against runs.updated_at,
which every database write sets). Its state change goes through seedrun.store.states.transition, as
every state change does: a record that says `completed` for a run the index holds `submitted` moves it
through `running` (the job did), and one that the rules refuse (a run cancelled or marked lost
meanwhile) changes nothing and is reported. Metrics rows follow the folder's metrics.jsonl (the epochs
after the row's epoch) and the final results; an evaluation run's results also go on the run it
evaluated, under its protocol's names (seedrun.store.protocols).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sqlite3
import sys
from contextlib import closing
from typing import Any, Iterable, Optional

from seedrun.store.folders import ROW_FIELDS, metric_lines, read_config, read_record
from seedrun.store.states import COMPLETED, IN_FLIGHT, RUNNING, TRANSITIONS


class Applied:
    """What applying folder records did: counts and the disagreements worth telling.
    (A plain class: `dataclasses` imports `inspect`, a tenth of `status`'s start-up.)"""

    def __init__(self) -> None:
        self.added = self.updated = self.unchanged = 0
        self.notes: list[str] = []


def _when(value: Any) -> Optional[dt.datetime]:
    if value is None or isinstance(value, dt.datetime):
        return value
    try:
        return dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None


def _finite_or_none(values: dict[str, Any]) -> dict[str, Any]:
    return {name: value if isinstance(value, (int, float)) and math.isfinite(value) else None
            for name, value in (values or {}).items()}


def _row_values(record: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    values = {name: record.get(name) for name in ROW_FIELDS if name != "state"}
    values["started_at"], values["finished_at"] = _when(values["started_at"]), _when(values["finished_at"])
    values["provenance"] = values["provenance"] or {}
    values["summary"] = summary
    values["attempts"], values["epoch"] = int(values["attempts"] or 0), int(values["epoch"] or 0)
    values["updated_at"] = float(record.get("updated") or 0)
    return values


def _path(start: str, to: str) -> Optional[list[str]]:
    """The states a run goes through from `start` to `to` (a job that started and finished between two
    looks goes through running); None where the rules allow no way."""
    if to in TRANSITIONS[start]:
        return [to]
    if RUNNING in TRANSITIONS[start] and to in TRANSITIONS[RUNNING]:
        return [RUNNING, to]
    return None


def _metric_rows(run_id: int, pairs: Iterable[tuple[Optional[int], dict[str, Any]]]) -> list[dict[str, Any]]:
    return [{"run_id": run_id, "name": name, "value": float(value), "epoch": epoch}
            for epoch, metrics in pairs for name, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)]


class _Core:
    """The few statements apply_record makes, as SQLAlchemy Core over a connection (or an ORM session)."""

    def __init__(self, db):
        from sqlalchemy import insert, select, update

        from seedrun.store.tables import metrics, runs

        self.db, self.insert, self.select, self.update, self.runs, self.metrics = db, insert, select, update, runs, metrics

    def row(self, run_hash: Optional[str], *columns: str) -> Optional[tuple]:
        c = self.runs.c
        return self.db.execute(self.select(*(c[name] for name in columns)).where(c.hash == run_hash)).first()

    def add_run(self, values: dict[str, Any]) -> int:
        return self.db.execute(self.insert(self.runs).values(**values)).inserted_primary_key[0]

    def move(self, run_id: int, to: str, expect: tuple[str, ...], values: dict[str, Any]) -> bool:
        from seedrun.store.states import transition

        return transition(self.db, run_id, to, expect=expect, **values)

    def set(self, run_id: int, state: str, values: dict[str, Any]) -> None:
        c = self.runs.c
        self.db.execute(self.update(self.runs).where(c.id == run_id, c.state == state).values(**values))

    def add_metrics(self, rows: list[dict[str, Any]]) -> None:
        self.db.execute(self.insert(self.metrics), rows)

    def set_summary(self, run_id: int, summary: dict[str, Any]) -> None:
        self.db.execute(self.update(self.runs).where(self.runs.c.id == run_id).values(summary=summary))


def _stored(value: Any) -> Any:
    """A value as SQLAlchemy stores it in SQLite: JSON as text, datetimes in its DATETIME format."""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


class _Sqlite:
    """The same statements as plain SQL over a sqlite3 cursor: what `status` and `table` catch up with,
    so that bringing 100 newer folders in costs no SQLAlchemy import (a quarter of a second or more).
    The columns are seedrun.store.tables.runs'; state changes go through seedrun.store.states."""

    def __init__(self, cursor):
        self.cursor = cursor

    def row(self, run_hash: Optional[str], *columns: str) -> Optional[tuple]:
        self.cursor.execute(f"SELECT {', '.join(columns)} FROM runs WHERE hash = ?", (run_hash,))
        row = self.cursor.fetchone()
        if row is None or "summary" not in columns:
            return row
        index = columns.index("summary")
        return (*row[:index], json.loads(row[index]) if isinstance(row[index], str) else row[index], *row[index + 1:])

    def add_run(self, values: dict[str, Any]) -> int:
        raise NotImplementedError("runs are added through SQLAlchemy (seedrun.store.sync), which fills their defaults")

    def move(self, run_id: int, to: str, expect: tuple[str, ...], values: dict[str, Any]) -> bool:
        from seedrun.store.states import transition_sql

        return transition_sql(self.cursor, run_id, to, expect=expect,
                              **{name: _stored(value) for name, value in values.items()})

    def set(self, run_id: int, state: str, values: dict[str, Any]) -> None:
        names = list(values)
        self.cursor.execute(f"UPDATE runs SET {', '.join(f'{name} = ?' for name in names)} WHERE id = ? AND state = ?",
                            [_stored(values[name]) for name in names] + [run_id, state])

    def add_metrics(self, rows: list[dict[str, Any]]) -> None:
        now = _stored(dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))
        self.cursor.executemany("INSERT INTO metrics (run_id, name, value, epoch, created_at) VALUES (?, ?, ?, ?, ?)",
                                [(row["run_id"], row["name"], row["value"], row["epoch"], now) for row in rows])

    def set_summary(self, run_id: int, summary: dict[str, Any]) -> None:
        self.cursor.execute("UPDATE runs SET summary = ? WHERE id = ?", (json.dumps(summary), run_id))


def apply_record(session, record: dict[str, Any], run_dir: str, create: bool = False,
                 config: Optional[dict[str, Any]] = None, out: Optional[Applied] = None) -> Applied:
    """Apply one folder record to the database in `session` (committed by the caller): a SQLAlchemy
    connection or ORM session (Core statements: no ORM import), or a sqlite3 cursor (plain SQL: no
    SQLAlchemy at all; runs are not added through it)."""
    db = _Sqlite(session) if isinstance(session, sqlite3.Cursor) else _Core(session)
    out = out if out is not None else Applied()
    run_hash = record["hash"]
    row = db.row(run_hash, "id", "state", "epoch", "updated_at", "summary")
    results = record.get("results") or {}
    if row is None:
        config = config if config is not None else read_config(run_dir)
        if not create or config is None:
            out.notes.append(f"{run_hash[:12]}: not in the database" + ("" if create else "; `seedrun sync` adds it"))
            return out
        values = _row_values(record, _finite_or_none(record.get("summary") or {}))
        # A row made from its folder takes the state recorded there: a copy of a state, not a change of one.
        run_id = db.add_run(dict(hash=run_hash, stage=record["stage"], run_dir=run_dir, config=config,
                                 depends_on=record.get("depends_on"), state=record["state"], **values))
        rows = _metric_rows(run_id, metric_lines(run_dir))
        if record["state"] == COMPLETED:
            rows += _metric_rows(run_id, [(values["epoch"], results)])
        if rows:
            db.add_metrics(rows)
        if record["state"] == COMPLETED and record["stage"] == "eval":
            _on_source(db, record, results, out)
        out.added += 1
        return out
    run_id, state, epoch, updated_at, summary = row
    if float(record.get("updated") or 0) <= float(updated_at or 0):
        if record.get("state") != state:
            out.notes.append(f"{run_hash[:12]}: folder says {record.get('state')}, the database's newer record says "
                             f"{state}: kept")
        out.unchanged += 1
        return out
    summary = summary if isinstance(summary, dict) else {}
    values = _row_values(record, {**summary, **_finite_or_none(record.get("summary") or {})})
    to = record["state"]
    if to != state:
        steps = _path(state, to)
        if steps is None:
            out.notes.append(f"{run_hash[:12]}: folder says {to}, the database says {state}: kept ({state} cannot "
                             f"become {to})")
            out.unchanged += 1
            return out
        current = state
        for step in steps:
            if not db.move(run_id, step, (current,), values if step == to else {}):
                out.notes.append(f"{run_hash[:12]}: changed by another writer meanwhile; kept")
                return out
            current = step
    else:
        db.set(run_id, state, values)
    rows = _metric_rows(run_id, metric_lines(run_dir, after_epoch=epoch or 0))
    if to == COMPLETED and state != COMPLETED:
        rows += _metric_rows(run_id, [(values["epoch"], results)])
        if record.get("stage") == "eval":
            _on_source(db, record, results, out)
    if rows:
        db.add_metrics(rows)
    out.updated += 1
    return out


def _on_source(db, record: dict[str, Any], results: dict[str, Any], out: Applied) -> None:
    """An evaluation's results on the run it evaluated, under the protocol's names, at its final epoch:
    metric rows, and the run's summary (non-finite values as null, as seedrun.store.tables.add_metrics)."""
    from seedrun.store.protocols import qualified

    source = db.row(record.get("depends_on"), "id", "epoch", "summary")
    if source is None:
        out.notes.append(f"{record['hash'][:12]}: the run it evaluated is not in the database")
        return
    run_id, epoch, summary = source
    values = qualified(record.get("protocol_key"), results)
    rows = _metric_rows(run_id, [(epoch, values)])
    if rows:
        db.add_metrics(rows)
    db.set_summary(run_id, {**(summary if isinstance(summary, dict) else {}), **_finite_or_none(values)})


def catch_up(url: str, hashes: Optional[Iterable[str]] = None, quiet: bool = False) -> Applied:
    """Bring the runs the index holds in flight (or these runs) up to date from their folders.

    Reads only those runs' folders, so its cost grows with runs in flight, not with runs ever
    recorded; writes only when a folder holds something newer (SQLite through the standard library's
    sqlite3, so `status` never imports SQLAlchemy; a server database through SQLAlchemy Core). A
    database that is locked or read-only is left as it is, with one line on stderr: reading goes on.
    """
    from seedrun.store.records import connect

    out = Applied()
    try:
        connection, mark = connect(url)
    except Exception:
        return out
    with closing(connection):
        cursor = connection.cursor()
        try:
            if hashes is None:
                cursor.execute("SELECT hash, run_dir, updated_at FROM runs "
                               f"WHERE state IN ({', '.join(repr(state) for state in IN_FLIGHT)})")
                rows = cursor.fetchall()
            else:
                hashes, rows = list(hashes), []
                for start in range(0, len(hashes), 500):
                    chunk = hashes[start:start + 500]
                    cursor.execute(f"SELECT hash, run_dir, updated_at FROM runs WHERE hash IN "
                                   f"({', '.join(mark for _ in chunk)})", chunk)
                    rows += cursor.fetchall()
        except Exception:  # a database from before runs.updated_at: its first write upgrades it
            return out
    newer = []
    for run_hash, run_dir, updated_at in rows:
        record = read_record(run_dir) if run_dir else None
        if record is not None and record.get("hash") == run_hash and \
                float(record.get("updated") or 0) > float(updated_at or 0):
            newer.append((record, run_dir))
    if not newer:
        return out
    from seedrun.store.locations import busy_seconds

    def body(session) -> Applied:
        applied = Applied()
        for record, run_dir in newer:
            apply_record(session, record, run_dir, out=applied)
        return applied

    try:
        if mark == "?":  # SQLite: plain SQL, no SQLAlchemy import (a quarter of a second of `status`)
            out = _write_sqlite(url, body, wait_s=min(10.0, busy_seconds()))
        else:
            from seedrun.store.engine import write

            out = write(url, body, wait_s=min(10.0, busy_seconds()))
    except Exception as exc:  # locked for longer, read-only, gone: the folders stay the record
        if not quiet:
            print(f"note: {len(newer)} run(s) have newer records in their folders than in the database, which "
                  f"could not be written ({str(exc).strip().splitlines()[0][:120]})", file=sys.stderr)
        return out
    if not quiet:
        for note in out.notes:
            print(f"note: {note}", file=sys.stderr)
    return out


def _write_sqlite(url: str, body, wait_s: float) -> Applied:
    """`body(cursor)` in one transaction on the SQLite file, taking the write lock first (waiting up to
    `wait_s` for it); rolled back on any error, which is raised."""
    from seedrun.store.folders import sqlite_path

    connection = sqlite3.connect(sqlite_path(url), timeout=wait_s, isolation_level=None)
    try:
        connection.execute("PRAGMA foreign_keys=ON")
        cursor = connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        try:
            out = body(cursor)
            cursor.execute("COMMIT")
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        return out
    finally:
        connection.close()
