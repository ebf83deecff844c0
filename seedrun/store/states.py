"""Run states, the transitions allowed between them, and the one function that moves a run.

A run moves pending -> submitted -> running -> completed | failed | cancelled; "blocked" is a run whose
upstream (its teacher, or the run it evaluates) failed; "lost" is a run whose scheduler job vanished.

Several processes write a run's state: its job, the launcher that submitted it, `seedrun status`
(reconciling runs with their jobs) and `seedrun cancel`. Each change is one guarded UPDATE (`transition`):
it takes effect only if the run is, at that moment, in a state the change may come from, so of two
writers racing (a job finishing while status marks its run lost, a job starting while the run is
cancelled) exactly one wins, and the other is told it lost.

Importable without SQLAlchemy or torch (the fast commands read the state names): SQLAlchemy Core (not
its ORM) is imported when a state is written.
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
#:                  requeueing a preempted job (also one whose start only its folder recorded)
#:   -> running     the job starting, also before its launcher has recorded the submission (a task can
#:                  start within a second of sbatch) and again after Slurm killed and requeued it
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


def _statement(to: str, expect: Optional[Iterable[str]], where: Iterable[Any], values: dict[str, Any]):
    from sqlalchemy import literal_column, update

    from seedrun.store.tables import runs as table  # Core: no ORM import for a state change
    values.setdefault("updated_at", time.time())  # newer than any folder record written before it
    # The allowed states inline (they are this module's constants): an executemany cannot expand an IN list.
    allowed = [literal_column(f"'{state}'") for state in sources(to, expect)]
    return table, update(table).where(table.c.state.in_(allowed), *where).values(state=to, **values)


def transition(db, run: Union[int, str], to: str, *, expect: Optional[Iterable[str]] = None,
               where: Iterable[Any] = (), **values: Any) -> bool:
    """Move one run (by id, or by hash) to state `to`, setting `values` with it; True if this writer won.

    One UPDATE whose WHERE holds the run's allowed from-states (TRANSITIONS, narrowed to `expect`) and
    the extra conditions `where`: it changes the row only if the run is in one of them when it runs,
    so of two racing writers exactly one wins. A writer that lost (False) changed nothing, `values`
    included, and must not go on as if it had won.

    `db` is a Session or a Connection; the change commits with its transaction. `where` and `values`
    are SQLAlchemy expressions over `seedrun.store.tables.runs.c` (the same as `Run.__table__.c`; not the
    ORM attributes, which would make this an ORM statement); `values` may also be plain values.
    """
    table, statement = _statement(to, expect, where, values)
    key = table.c.hash if isinstance(run, str) else table.c.id
    return db.execute(statement.where(key == run)).rowcount == 1


def transition_sql(cursor, run_id: int, to: str, *, expect: Optional[Iterable[str]] = None, **values: Any) -> bool:
    """`transition` over a plain DB-API cursor of SQLite (qmark parameters), for writers that must not
    import SQLAlchemy (`status` catching up from run folders: seedrun.store.catchup). The same guarded
    UPDATE; `values` are column names (identifiers of seedrun.store.tables.runs) and values already in
    the form the database stores (JSON as text, datetimes as SQLAlchemy writes them on SQLite).
    """
    if not all(name.replace("_", "").isalnum() for name in values):
        raise ValueError(f"not column names: {sorted(values)}")
    values.setdefault("updated_at", time.time())  # newer than any folder record written before it
    allowed = ", ".join(f"'{state}'" for state in sources(to, expect))
    assignments = ", ".join(f"{name} = ?" for name in values)
    cursor.execute(f"UPDATE runs SET state = ?, {assignments} WHERE id = ? AND state IN ({allowed})",
                   [to, *values.values(), run_id])
    return cursor.rowcount == 1


def transition_many(db, to: str, rows: list[dict[str, Any]], *, expect: Optional[Iterable[str]] = None,
                    where: Iterable[Any] = (), **values: Any) -> int:
    """`transition` for many runs as one statement run for each of `rows` (an executemany); returns how
    many moved, as the driver counts them.

    Each row holds the run's id under "rid" and the values of the bindparams that `values` name (a
    bindparam may not share its name with a column: hence "rid").
    """
    from sqlalchemy import bindparam

    if not rows:
        return 0
    table, statement = _statement(to, expect, where, values)
    return db.execute(statement.where(table.c.id == bindparam("rid")), rows).rowcount


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


# ---- the lease: one live attempt per run ------------------------------------------------------------
#
# A job moves its run to `running` only while it holds the run's lease: the file `lease.json` in the
# run's folder, created with O_CREAT|O_EXCL (atomic, also on NFS), holding the attempt's job id, host
# and a token, its modification time the heartbeat (the holder touches it every LEASE_BEAT_S). A second
# attempt finds the lease live and leaves without touching the folder. A lease whose heartbeat is older
# than LEASE_STALE_S (SEEDRUN_LEASE_STALE_S, default 300 s) is taken over: renamed away (one renamer
# wins), then created anew. The same job id (Slurm requeues a job under its id, on any node) takes its
# own lease back at once, and so does any attempt on the host of a local attempt whose process is gone.
# The folder, not the database, holds it: jobs that cannot write the database
# (seedrun.store.folders.jobs_write_db) race the same way.

LEASE_FILE = "lease.json"
LEASE_BEAT_S = 30.0


def lease_stale_s() -> float:
    import os

    try:
        return float(os.environ.get("SEEDRUN_LEASE_STALE_S", "300"))
    except ValueError:
        return 300.0


def read_lease(run_dir: str) -> Optional[dict[str, Any]]:
    """The lease's holder ({"job_id", "host", "token", "since", "age_s"}), or None when nobody holds it."""
    import os

    try:
        return read_lease_file(os.path.join(run_dir, LEASE_FILE))
    except FileNotFoundError:
        return None


def read_lease_file(path: str) -> dict[str, Any]:
    import json
    import os

    try:
        age = time.time() - os.stat(path).st_mtime
        with open(path, encoding="utf-8") as f:
            holder = json.load(f)
    except FileNotFoundError:
        raise
    except (OSError, ValueError):  # being written this very moment: a live holder
        holder = {}
        age = 0.0
    return {**(holder if isinstance(holder, dict) else {}), "age_s": age}


def take_lease(run_dir: str, job_id: str, host: str) -> tuple[Optional[str], Optional[dict[str, Any]]]:
    """(token, None) when this attempt now holds the run's lease; (None, holder) when a live one does."""
    import json
    import os
    import uuid

    path = os.path.join(run_dir, LEASE_FILE)
    token = uuid.uuid4().hex
    os.makedirs(run_dir, exist_ok=True)
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_lease(run_dir)
            if holder is None:
                continue  # released meanwhile: try again
            if holder.get("job_id") != job_id and holder["age_s"] < lease_stale_s() and not _dead_here(holder, host):
                return None, holder
            old = f"{path}.{token}.old"
            try:  # our own job id (requeued) or a stale holder: take it over; one renamer wins
                os.rename(path, old)
            except FileNotFoundError:
                continue
            moved = read_lease_file(old)
            if moved.get("job_id") != job_id and moved["age_s"] < lease_stale_s():
                try:  # a live lease created since we looked: put it back
                    os.link(old, path)
                except OSError:
                    pass
                os.remove(old)
                return None, moved
            os.remove(old)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"job_id": job_id, "host": host, "token": token, "since": time.time()}, f)
        return token, None
    return None, read_lease(run_dir) or {"job_id": "?", "host": "?", "age_s": 0.0}


def _dead_here(holder: dict[str, Any], host: str) -> bool:
    """A local attempt of this very host whose process is gone (killed): its lease is stale at once."""
    import os

    kind, _, pid = str(holder.get("job_id") or "").partition(":")
    if holder.get("host") != host or kind not in ("local", "pid") or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def beat_lease(run_dir: str, token: str) -> bool:
    """The holder's heartbeat; False when the lease is no longer this token's (taken over as stale)."""
    import os

    holder = read_lease(run_dir)
    if holder is None or holder.get("token") != token:
        return False
    try:
        os.utime(os.path.join(run_dir, LEASE_FILE))
    except OSError:
        return False
    return True


def release_lease(run_dir: str, token: Optional[str]) -> None:
    import os

    holder = read_lease(run_dir) if token else None
    if holder is not None and holder.get("token") == token:
        try:
            os.remove(os.path.join(run_dir, LEASE_FILE))
        except OSError:
            pass
