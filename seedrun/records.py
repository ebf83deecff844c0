"""Reading runs for `status` and `table`: plain SQL over a DB-API connection, no ORM.

Importing SQLAlchemy's ORM costs more than these commands' whole latency budget (0.3 s at 10,000
runs), so the read path talks SQL directly: through the standard library's sqlite3 (read-only) for
SQLite, and through SQLAlchemy Core's raw connection for any other URL. Writes go through the ORM
models in seedrun.schema; the column names used here are theirs.
"""

from __future__ import annotations

import json
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

IN_FLIGHT = ("submitted", "running")


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


def _connect(url: str):
    """A DB-API connection and its parameter placeholder."""
    if url.startswith("sqlite:///"):
        import sqlite3

        path = Path(url.removeprefix("sqlite:///")).absolute()
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
        return connection, "?"
    from sqlalchemy import create_engine

    return create_engine(url).raw_connection(), "%s"


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, (str, bytes)) else value


_RUNS_SQL = """
    SELECT r.id, r.hash, r.stage, r.state, r.epoch, {config}, sr.axes, s.name, r.finished_at, r.error,
           r.failure_reason, r.job_id, r.summary
    FROM runs r JOIN sweep_runs sr ON sr.run_id = r.id JOIN sweeps s ON s.id = sr.sweep_id
    {where} ORDER BY s.id, sr.position
"""


def _nester(keys: list[str]):
    """A function turning the extracted values of sorted `keys` into the nested config they came from.

    Two-level keys are grouped per section (one dict(zip(...)) each); a missing value stays None,
    which readers treat as absent.
    """
    sections: list[tuple[str, list[str], int, int]] = []
    deep: list[tuple[int, list[str]]] = []
    for index, key in enumerate(keys):
        parts = key.split(".")
        if len(parts) != 2:
            deep.append((index, parts))
        elif sections and sections[-1][0] == parts[0] and sections[-1][3] == index:
            section, names, start, _ = sections[-1]
            sections[-1] = (section, names + [parts[1]], start, index + 1)
        else:
            sections.append((parts[0], [parts[1]], index, index + 1))

    def nest(values: list) -> dict[str, Any]:
        config = {section: dict(zip(names, values[start:stop])) for section, names, start, stop in sections}
        for index, parts in deep:
            if values[index] is not None:
                node = config
                for part in parts[:-1]:
                    node = node.setdefault(part, {})
                node[parts[-1]] = values[index]
        return config

    return nest


def load_records(url: str, sweep: Optional[str] = None, stage: Optional[str] = None,
                 keys: Optional[Iterable[str]] = None) -> list[RunRecord]:
    """Every run (of one sweep, if named) with the last value of each of its metrics.

    With `keys` (dotted config keys), SQLite extracts just those from each config in C (json_extract)
    and the records' configs hold only them: parsing 10,000 whole configs in Python costs seconds.
    A run in several sweeps appears once, under the first sweep that named it (unless one is asked for).
    """
    connection, mark = _connect(url)
    keys = sorted(set(keys)) if keys is not None and mark == "?" else None
    if keys is not None:
        for key in keys:  # keys come from table definitions, but they go into SQL: allow names only
            if not all(part.replace("_", "").isalnum() for part in key.split(".")):
                raise ValueError(f"not a config key: {key!r}")
        # One json_extract with many paths parses each config once and returns a JSON array of the
        # values (with two paths at least; one path would return the bare value).
        paths = [f"'$.{key}'" for key in keys] or ["'$.stage'"]
        config_sql = f"json_extract(r.config, {', '.join(paths + paths[:1] if len(paths) == 1 else paths)})"
    else:
        config_sql = "r.config"
    with closing(connection):
        cursor = connection.cursor()
        conditions, params = [], []
        if sweep is not None:
            conditions.append(f"s.name = {mark}")
            params.append(sweep)
        if stage is not None:
            conditions.append(f"r.stage = {mark}")
            params.append(stage)
        where = ("WHERE " + " AND ".join(conditions)) if conditions else ""
        cursor.execute(_RUNS_SQL.format(where=where, config=config_sql), params)
        nest = _nester(keys) if keys is not None else None
        records: dict[int, RunRecord] = {}
        for row in cursor.fetchall():
            run_id, run_hash, run_stage, state, epoch = row[:5]
            config = nest(json.loads(row[5])) if nest is not None else _json(row[5])
            axes, sweep_name, finished_at, error, reason, job_id, summary = row[6:]
            if run_id in records:
                continue
            records[run_id] = RunRecord(
                hash=run_hash, stage=run_stage, state=state, epoch=epoch, config=config, axes=_json(axes) or {},
                finished_at=finished_at, error=error, failure_reason=reason, job_id=job_id, sweep=sweep_name,
                metrics=_json(summary) or {},
            )
        return list(records.values())


def count_in_flight(url: str) -> int:
    connection, _ = _connect(url)
    with closing(connection):
        cursor = connection.cursor()
        cursor.execute("SELECT COUNT(*) FROM runs WHERE state IN ('submitted', 'running')")
        return cursor.fetchone()[0]
