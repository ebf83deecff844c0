"""A submission opens a new attempt of each run: in the run's folder first, then in the database.

Before a launcher starts or queues a job, it writes the run's folder: config.json as recorded, and a
run.json whose version opens attempt N+1 (N the newest attempt either store knows) in state `submitted`,
with the run's budgets counted afresh. The job is told its attempt, and finds it there whatever the
database's state or reachability; a job that finds another attempt leaves (seedrun.job.run_job).

A folder whose record says `completed` is never overwritten: the run is brought into the database from
it (seedrun.store.catchup) instead of being submitted again.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Optional

from seedrun.store.folders import CONFIG, RECORD, read_record, version_of
from seedrun.store.states import COMPLETED, SUBMITTED

#: What a new submission starts afresh in the record's provenance (seedrun.job.budgets counts them).
BUDGET_COUNTS = {"preemptions": 0, "timeouts": 0, "failures": 0, "progress_timeouts": 0, "attempt_open": False}


class Attempt(NamedTuple):
    run_dir: str
    number: int
    record: dict[str, Any]  # run.json of the new attempt
    config: dict[str, Any]

    @property
    def provenance(self) -> dict[str, Any]:
        return self.record["provenance"]


def new_attempts(db, hashes: list[str]) -> tuple[dict[str, Attempt], list[str]]:
    """({hash: the attempt to open}, [hashes whose folder says completed: not to be opened]) for the runs
    in `db` (a SQLAlchemy connection or session). Nothing is written: `write_attempt` does."""
    from sqlalchemy import select

    from seedrun.store.tables import runs

    c = runs.c
    rows = []
    for start in range(0, len(hashes), 500):
        rows += db.execute(select(c.hash, c.stage, c.depends_on, c.attempts, c.epoch, c.provenance, c.summary,
                                  c.started_at, c.attempt, c.config, c.run_dir)
                           .where(c.hash.in_(hashes[start:start + 500]))).all()
    opened: dict[str, Attempt] = {}
    done: list[str] = []
    for run_hash, stage, depends_on, attempts, epoch, provenance, summary, started_at, attempt, config, run_dir in rows:
        folder = read_record(run_dir)
        if folder is not None and folder.get("state") == COMPLETED:
            done.append(run_hash)
            continue
        folder = folder or {}
        number = max(int(attempt or 0), version_of(folder)[0]) + 1
        record = {
            "hash": run_hash, "stage": stage, "depends_on": depends_on, "state": SUBMITTED,
            "attempts": max(int(attempts or 0), int(folder.get("attempts") or 0)),
            "epoch": max(int(epoch or 0), int(folder.get("epoch") or 0)),
            "summary": {**(summary or {}), **(folder.get("summary") or {})},
            "started_at": folder.get("started_at") or (started_at.isoformat() if started_at else None),
            "job_id": None, "error": None, "failure_reason": None, "finished_at": None,
            "provenance": {**(provenance or {}), **(folder.get("provenance") or {}), **BUDGET_COUNTS},
            "version": [number, 0],
        }
        opened[run_hash] = Attempt(run_dir, number, record, config)
    return opened, done


def write_attempt(attempt: Attempt) -> None:
    """The run's folder opens the attempt: config.json as recorded, run.json `submitted` at version (N, 0).
    Without fsync: a submission of thousands of runs must not wait on each file; a crash before the data
    reach the disk loses the submission, which `seedrun sweep` repeats."""
    from seedrun.atomic import atomic_write_json
    from seedrun.store.folders import json_default

    atomic_write_json(os.path.join(attempt.run_dir, CONFIG), attempt.config, indent=2, sort_keys=True, fsync=False)
    atomic_write_json(os.path.join(attempt.run_dir, RECORD), attempt.record, sort_keys=True, default=json_default,
                      fsync=False)


def claim(db, run_hash: str) -> "Optional[Attempt] | str":
    """Open a new attempt of one run in `db`'s transaction: `submitted` at the new attempt in the database,
    then its record in the folder, before the caller commits (the job finds its attempt whatever happens
    after). None when another process holds the run; COMPLETED when its folder says it completed: then
    nothing is opened, and the caller brings the folder in instead."""
    from seedrun.store.states import SUBMITTABLE, transition

    opened, done = new_attempts(db, [run_hash])
    if done:
        return COMPLETED
    attempt = opened[run_hash]
    if not transition(db, run_hash, SUBMITTED, expect=SUBMITTABLE, attempt=attempt.number, seq=0,
                      provenance=attempt.provenance, job_id=None, error=None, failure_reason=None, finished_at=None):
        return None
    write_attempt(attempt)
    return attempt
