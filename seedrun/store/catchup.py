"""The index brought up to date from run folders (seedrun.store.folders): what the local launcher does
while its job runs, what `status`, `table` and `logs` do for the runs still in flight, and what `sync`
does for every folder it is given. Only seedrun's commands do this: jobs never open the database.

A folder record is applied when its version (attempt, counter) is newer than the row's
(seedrun.store.states.folder_moves decides, with the one table of transitions); every state change goes
through seedrun.store.states.transition, as every change of every command does. A record that says
`completed` for a run the index holds `submitted` moves it through `running` (the job did); one that the
rules refuse (a run cancelled meanwhile) changes nothing and is reported. Metrics rows follow the folder's metrics.jsonl (the epochs
after the row's epoch) and the final results; an evaluation run's results also go on the run it
evaluated, under its protocol's names (seedrun.store.protocols).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sys
from contextlib import closing
from typing import Any, Iterable, Optional

from seedrun.store.folders import ROW_FIELDS, metric_lines, read_config, read_record, version_of
from seedrun.store.states import COMPLETED, IN_FLIGHT, Cursor, folder_moves, transition


class Applied:
    """What applying folder records did: counts and the disagreements worth telling. A plain class, not a
    dataclass: `status` imports this module, and `dataclasses` (with `inspect`) took 5 ms of its 15x budget."""

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
    values["attempt"], values["seq"] = version_of(record)
    return values


def _metric_rows(run_id: int, pairs: Iterable[tuple[Optional[int], dict[str, Any]]]) -> list[dict[str, Any]]:
    return [{"run_id": run_id, "name": name, "value": float(value), "epoch": epoch}
            for epoch, metrics in pairs for name, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)]


class _Rows:
    """The few statements apply_record makes, over one DB-API cursor (seedrun.store.states.Cursor): the
    same SQL on SQLite and PostgreSQL, from a command that loaded SQLAlchemy or from one that did not."""

    def __init__(self, cursor: Cursor):
        self.cursor = cursor

    def row(self, run_hash: Optional[str], *columns: str) -> Optional[tuple]:
        row = self.cursor.execute(f"SELECT {', '.join(columns)} FROM runs WHERE hash = ?", [run_hash]).fetchone()
        if row is None or "summary" not in columns:
            return row
        index = columns.index("summary")
        return (*row[:index], json.loads(row[index]) if isinstance(row[index], str) else row[index], *row[index + 1:])

    def add_run(self, values: dict[str, Any]) -> int:
        from seedrun.store.experiments import experiment_of
        from seedrun.store.folders import utcnow
        from seedrun.sweeps.settings import settings_of

        values = {**values, "settings": settings_of(values["config"]), "experiment": experiment_of(values["config"]),
                  "created_at": utcnow()}
        sql = (f"INSERT INTO runs ({', '.join(values)}) VALUES ({', '.join('?' for _ in values)})"
               + ("" if self.cursor.sqlite else " RETURNING id"))
        done = self.cursor.execute(sql, list(values.values()))
        return done.lastrowid if self.cursor.sqlite else done.fetchone()[0]

    def move(self, run_id: int, to: str, expect: tuple[str, ...], values: dict[str, Any]) -> bool:
        return transition(self.cursor, run_id, to, expect=expect, **values)

    def set(self, run_id: int, state: str, values: dict[str, Any]) -> None:
        self.cursor.execute(f"UPDATE runs SET {', '.join(f'{name} = ?' for name in values)} WHERE id = ? AND state = ?",
                            [*values.values(), run_id, state])

    def add_metrics(self, rows: list[dict[str, Any]]) -> None:
        from seedrun.store.folders import utcnow

        now = utcnow()
        for row in rows:
            self.cursor.execute("INSERT INTO metrics (run_id, name, value, epoch, created_at) VALUES (?, ?, ?, ?, ?)",
                                [row["run_id"], row["name"], row["value"], row["epoch"], now])

    def set_summary(self, run_id: int, summary: dict[str, Any]) -> None:
        self.cursor.execute("UPDATE runs SET summary = ? WHERE id = ?", [summary, run_id])


def apply_record(session, record: dict[str, Any], run_dir: str, create: bool = False,
                 config: Optional[dict[str, Any]] = None, out: Optional[Applied] = None) -> Applied:
    """Apply one folder record to the database in `session` (committed by the caller): a SQLAlchemy
    connection or session, a DB-API connection, or a seedrun.store.states.Cursor. `create` adds a run the
    database lacks."""
    db = _Rows(session if isinstance(session, Cursor) else Cursor(session))
    out = out if out is not None else Applied()
    run_hash = record["hash"]
    row = db.row(run_hash, "id", "state", "epoch", "attempt", "seq", "summary")
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
        rows = _metric_rows(run_id, metric_lines(run_dir, through_epoch=values["epoch"]))
        if record["state"] == COMPLETED:
            rows += _metric_rows(run_id, [(values["epoch"], results)])
        if rows:
            db.add_metrics(rows)
        if record["state"] == COMPLETED and record["stage"] == "eval":
            _on_source(db, record, results, out)
        out.added += 1
        return out
    run_id, state, epoch, attempt, seq, summary = row
    to = record["state"]
    steps = folder_moves(state, (int(attempt or 0), int(seq or 0)), to, version_of(record))
    if steps is None:
        if to != state and version_of(record) > (int(attempt or 0), int(seq or 0)):
            out.notes.append(f"{run_hash[:12]}: folder says {to}, the database says {state}: kept")
        out.unchanged += 1
        return out
    summary = summary if isinstance(summary, dict) else {}
    values = _row_values(record, {**summary, **_finite_or_none(record.get("summary") or {})})
    current = state
    for step in steps:
        if not db.move(run_id, step, (current,), values if step == to else {}):
            out.notes.append(f"{run_hash[:12]}: changed by another command meanwhile; kept")
            return out
        current = step
    if not steps:
        db.set(run_id, state, values)
    rows = _metric_rows(run_id, metric_lines(run_dir, after_epoch=epoch or 0, through_epoch=values["epoch"]))
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
    recorded; writes only when a folder holds a newer record (SQLite through the standard library's
    sqlite3, so that `status` need not load SQLAlchemy; any other database through SQLAlchemy), in both
    cases through apply_record and the one state machine. A database that is locked or read-only is left
    as it is, with one line on stderr: reading goes on, and the folders keep the records for the next
    command.
    """
    from seedrun.store.records import connect

    try:
        connection, mark = connect(url)
    except Exception:
        return Applied()
    with closing(connection):
        hashes = None if hashes is None else list(hashes)
        newer = _newer_records(connection.cursor(), mark, hashes)
    # Written after the reader closed: the writer is then the last connection, and its close checkpoints
    # SQLite's log into the file (a few ms here); a log left to grow slows every later reading command.
    return Applied() if newer == [] else _write(url, mark, newer, hashes, quiet)


def _newer_records(cursor, mark: str, hashes: Optional[list[str]]) -> Optional[list[tuple[dict[str, Any], str]]]:
    """(record, folder) of the runs (in flight, or these) whose folder holds a newer version than the
    row; None for a database from before record versions (its first write upgrades it)."""
    select = "SELECT hash, run_dir, attempt, seq FROM runs "
    try:
        if hashes is None:
            cursor.execute(select + f"WHERE state IN ({', '.join(repr(state) for state in IN_FLIGHT)})")
            rows = cursor.fetchall()
        else:
            rows = []
            for start in range(0, len(hashes), 500):
                chunk = hashes[start:start + 500]
                cursor.execute(select + f"WHERE hash IN ({', '.join(mark for _ in chunk)})", chunk)
                rows += cursor.fetchall()
    except Exception:
        return None
    newer = []
    for run_hash, run_dir, attempt, seq in rows:
        record = read_record(run_dir) if run_dir else None
        if record is not None and record.get("hash") == run_hash and \
                version_of(record) > (int(attempt or 0), int(seq or 0)):
            newer.append((record, run_dir))
    return newer


def _write(url: str, mark: str, newer: Optional[list[tuple[dict[str, Any], str]]], hashes: Optional[list[str]],
           quiet: bool) -> Applied:
    from seedrun.store.locations import busy_seconds

    def body(session) -> Applied:
        applied = Applied()
        for record, run_dir in newer if newer is not None else _folders_of(session, hashes):
            apply_record(session, record, run_dir, out=applied)
        return applied

    try:
        if mark == "?" and newer is not None:  # SQLite: through sqlite3, without loading SQLAlchemy
            from seedrun.store import sqlite_files
            from seedrun.store.folders import sqlite_path

            out = sqlite_files.write(sqlite_path(url), body, wait_s=min(10.0, busy_seconds()))
        else:  # PostgreSQL, or a database from before record versions (upgraded by its first write)
            from seedrun.store.engine import write

            out = write(url, body, wait_s=min(10.0, busy_seconds()))
    except Exception as exc:  # locked for longer, read-only, gone: the folders stay the record
        if not quiet:
            print(f"note: {len(newer or ())} run(s) have newer records in their folders than in the database, which "
                  f"could not be written ({str(exc).strip().splitlines()[0][:120]})", file=sys.stderr)
        return Applied()
    if not quiet:
        for note in out.notes:
            print(f"note: {note}", file=sys.stderr)
    return out


def _folders_of(session, hashes: Optional[list[str]]) -> list[tuple[dict[str, Any], str]]:
    """The folder records of these runs (or of the runs in flight), where the database says they are."""
    from sqlalchemy import select

    from seedrun.store.tables import runs

    query = select(runs.c.hash, runs.c.run_dir)
    query = query.where(runs.c.state.in_(IN_FLIGHT) if hashes is None else runs.c.hash.in_(hashes))
    return [(record, run_dir) for run_hash, run_dir in session.execute(query).all()
            if (record := read_record(run_dir)) is not None and record.get("hash") == run_hash]
