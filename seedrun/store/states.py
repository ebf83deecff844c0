"""Run states, the transitions allowed between them, and the one function that moves a run.

A run moves pending -> submitted -> running -> completed | failed | cancelled; "blocked" is a run whose
upstream (its teacher, or the run it evaluates) failed; "lost" is a run whose scheduler job vanished.

One writer per store: a job changes only its run folder's record (run.json, through
`transition_record`); seedrun's commands change the database, and bring a folder's changes in with
`folder_moves` (seedrun.store.catchup). Every change of the database is one guarded UPDATE
(`transition`): it takes effect only if the run is, at that moment, in a state the change may come from,
so of two commands racing (a launcher and `seedrun cancel`) exactly one wins, and the other is told so.
The same table, TRANSITIONS, rules the folder record and the database, SQLite and PostgreSQL alike.

Importable without SQLAlchemy or torch (jobs and the fast commands read the state names): SQLAlchemy
Core (not its ORM) is imported when a state is written.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, MutableMapping, Optional, Union

PENDING, SUBMITTED, RUNNING, COMPLETED, FAILED, CANCELLED, BLOCKED, LOST = (
    "pending", "submitted", "running", "completed", "failed", "cancelled", "blocked", "lost",
)
STATES = (PENDING, SUBMITTED, RUNNING, COMPLETED, FAILED, CANCELLED, BLOCKED, LOST)
IN_FLIGHT = (SUBMITTED, RUNNING)
#: States a run may be (re)submitted or retried from: `seedrun retry`, `seedrun sweep --retry-failed`.
RETRYABLE = (FAILED, BLOCKED, CANCELLED, LOST)
#: States a launcher may submit (or block) a run from: no job holds it.
SUBMITTABLE = (PENDING,) + RETRYABLE
#: States a job may start its run from: a cancelled run stays cancelled, a completed one is not rerun.
STARTABLE = (PENDING, SUBMITTED, RUNNING, FAILED, BLOCKED, LOST)

#: from-state -> the states a run may move to from it. Who needs each move:
#:   -> submitted   the launchers, submitting a new or retried run; the job, requeueing itself; status,
#:                  requeueing a preempted job
#:   -> running     the job starting, and again after Slurm killed and requeued it; in the database also
#:                  from a lost or failed run whose folder says its job went on (status guessed wrong)
#:   -> completed   the job, from its own `running` only: never over a cancel, a loss or a failure
#:   -> failed      the job (a failure, a spent budget), the local launcher (a job that died without
#:                  recording), status (Slurm says the job died)
#:   -> pending     the job (stopped, resumable by `seedrun sweep`), status (an array task that waited
#:                  on another teacher: resubmitted)
#:   -> blocked     whoever finds the run's upstream failed: the launchers, the job, status
#:   -> cancelled   `seedrun cancel` (pending or in flight), status (Slurm says cancelled)
#:   -> lost        status, for a run in flight whose job is gone
#: A completed run never changes again; a cancelled one only when it is retried.
TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset({SUBMITTED, RUNNING, BLOCKED, FAILED, CANCELLED}),
    SUBMITTED: frozenset({SUBMITTED, RUNNING, PENDING, BLOCKED, FAILED, CANCELLED, LOST}),
    RUNNING: frozenset({RUNNING, COMPLETED, FAILED, SUBMITTED, PENDING, CANCELLED, LOST}),
    FAILED: frozenset({SUBMITTED, RUNNING, BLOCKED}),
    BLOCKED: frozenset({SUBMITTED, RUNNING, BLOCKED}),
    CANCELLED: frozenset({SUBMITTED, BLOCKED}),
    LOST: frozenset({SUBMITTED, RUNNING, BLOCKED}),
    COMPLETED: frozenset(),
}


def sources(to: str, expect: Optional[Iterable[str]] = None) -> tuple[str, ...]:
    """The states a run may move to `to` from (only those in `expect`, if given)."""
    if to not in TRANSITIONS:
        raise ValueError(f"not a run state: {to!r}")
    expect = None if expect is None else set(expect)
    unknown = (expect or set()) - set(STATES)
    if unknown:
        raise ValueError(f"not run states: {sorted(unknown)}")
    found = tuple(state for state in STATES if to in TRANSITIONS[state] and (expect is None or state in expect))
    if not found:  # a change that can never happen is a mistake in the caller
        raise ValueError(f"no run may move to {to!r} from {sorted(expect or ())}")
    return found


class Cursor:
    """A DB-API cursor and what writing through it needs: its parameter mark and how its database keeps
    JSON and datetimes. Made from a SQLAlchemy Connection or Session (the cursor of the same transaction)
    or from a driver's own connection, so that one function writes every change, SQLite and PostgreSQL
    alike, with or without SQLAlchemy loaded."""

    def __init__(self, db: Any):
        raw = _dbapi_connection(db)
        self.cursor = raw.cursor()
        self.sqlite = type(raw).__module__.startswith("sqlite3")
        self.mark = "?" if self.sqlite else "%s"

    def execute(self, sql: str, params: Iterable[Any] = ()) -> Any:
        self.cursor.execute(sql.replace("?", self.mark), [self.stored(value) for value in params])
        return self.cursor

    def stored(self, value: Any) -> Any:
        """A value as seedrun's tables keep it (the form SQLAlchemy's JSON and DateTime types write)."""
        import datetime as dt
        import json

        if isinstance(value, (dict, list)):
            return json.dumps(value)
        if isinstance(value, dt.datetime) and self.sqlite:
            return value.strftime("%Y-%m-%d %H:%M:%S.%f")
        return value


def _dbapi_connection(db: Any) -> Any:
    if hasattr(db, "get_bind"):  # an ORM Session: its connection in this transaction
        db = db.connection()
    if hasattr(db, "exec_driver_sql"):  # a SQLAlchemy Connection: the driver's connection under it
        return db.connection.dbapi_connection
    if isinstance(db, Cursor):
        return db.cursor.connection
    return db  # a driver's connection (sqlite3, psycopg2)


def transition(db: Any, run: Union[int, str], to: str, *, expect: Optional[Iterable[str]] = None,
               where: Optional[dict[str, Any]] = None, **values: Any) -> bool:
    """Move one run (by id, or by hash) to state `to`, setting `values` with it; True if this writer won.

    One UPDATE whose WHERE holds the run's allowed from-states (TRANSITIONS, narrowed to `expect`) and
    the extra conditions `where` ({column: value}): it changes the row only if the run is in one of them
    when it runs, so of two racing writers exactly one wins. A writer that lost (False) changed nothing,
    `values` included, and must not go on as if it had won.

    `db` is a SQLAlchemy Session or Connection, a DB-API connection or a `Cursor`; the change commits with
    its transaction. Columns are those of seedrun.store.tables.runs; values are plain (dicts as JSON).
    """
    allowed = sources(to, expect)  # before anything is written: a change that can never happen is an error
    values.setdefault("updated_at", time.time())
    conditions = {"hash" if isinstance(run, str) else "id": run, **(where or {})}
    names = list(values) + list(conditions)
    if not all(name.replace("_", "").isalnum() for name in names):
        raise ValueError(f"not column names: {sorted(names)}")
    cursor = db if isinstance(db, Cursor) else Cursor(db)
    sql = (f"UPDATE runs SET state = ?, {', '.join(f'{name} = ?' for name in values)} "
           f"WHERE {' AND '.join(f'{name} = ?' for name in conditions)} "
           f"AND state IN ({', '.join(repr(state) for state in allowed)})")
    return cursor.execute(sql, [to, *values.values(), *conditions.values()]).rowcount == 1


def transition_record(record: MutableMapping[str, Any], to: str, *, expect: Optional[Iterable[str]] = None,
                      **values: Any) -> bool:
    """`transition` for a run's folder record (seedrun.store.folders, run.json) held in memory: the same
    rules, applied to the record's "state"; True if it moved (and `values` were set), False if not.

    The job changes its folder record through this, before the database (the record is written first).
    """
    if record.get("state") not in sources(to, expect):
        return False
    record["state"] = to
    record.update(values)
    return True


def moves(start: str, to: str) -> Optional[list[str]]:
    """The shortest way from `start` to `to` through TRANSITIONS, passing only through `submitted` and
    `running` (what a job does between two looks of a command); None where the rules allow none."""
    if to == start:
        return []
    paths = [[start]]
    seen = {start}
    while paths:
        path = paths.pop(0)
        for step in sorted(TRANSITIONS[path[-1]]):
            if step == to:
                return path[1:] + [to]
            if step in (SUBMITTED, RUNNING) and step not in seen:
                seen.add(step)
                paths.append(path + [step])
    return None


def folder_moves(row_state: str, row_version: tuple[int, int], record_state: str,
                 record_version: tuple[int, int]) -> Optional[list[str]]:
    """The states the database's row goes through to take in a folder record; None when the record must
    not be taken in (not newer, or refused by the rules). [] takes in its values with no change of state.

    A folder record is newer when its version (attempt, counter: seedrun.store.folders.version_of) is
    greater than the row's. Rules beside TRANSITIONS: a completed run never changes again; a cancel ends
    its attempt: a record of the same or an earlier attempt does not bring a cancelled run back in
    flight (its job may still write an epoch or a requeue before it is stopped), but a result it
    recorded stands (its model is there: a retry would only train it again). A run that a command called
    lost or failed while its job went on takes the job's record in: the folder is the truth.
    """
    if record_version <= row_version or row_state == COMPLETED:
        return None
    if row_state == CANCELLED and record_version[0] <= row_version[0] and record_state != COMPLETED:
        return None
    return moves(row_state, record_state)
