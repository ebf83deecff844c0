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

from seedrun.states import IN_FLIGHT


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
    SELECT r.id, r.hash, r.stage, r.state, r.epoch, r.finished_at, r.error, r.failure_reason, r.job_id,
           {values}, {sweep_columns}
    FROM runs r {sweep_join}
    {where} {order}
"""


def _names_only(names: list[str]) -> None:
    for name in names:  # they go into SQL: allow dotted identifiers only
        if not all(part.replace("_", "").isalnum() for part in name.split(".")):
            raise ValueError(f"not a config key or metric name: {name!r}")


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
                 keys: Optional[Iterable[str]] = None, metrics: Optional[Iterable[str]] = None,
                 with_axes: bool = True) -> list[RunRecord]:
    """Every run (of one sweep, if named) with the last value of each of its metrics.

    Readers that know what they need say so, and on SQLite the database hands over just that:
    `keys` (dotted config keys) and `metrics` (names) are picked out of the stored JSON by
    json_extract in C, as one short JSON array per run; the records then hold only those. Parsing
    10,000 whole configs in Python costs seconds; this costs a fraction of one. `with_axes=False` skips
    the sweep membership (axes, sweep name) when no sweep is named.
    A run in several sweeps appears once, under the first sweep that named it (unless one is asked for).
    """
    connection, mark = _connect(url)
    sqlite = mark == "?"
    keys = sorted(set(keys)) if keys is not None and sqlite else None
    metrics = sorted(set(metrics)) if metrics is not None and sqlite else None
    if keys is not None:
        # One json_extract with several paths parses the document once and returns a JSON array
        # (with one path it would return the bare value, hence the repeated first path).
        _names_only(keys + (metrics or []))
        paths = [f"'$.{key}'" for key in keys] or ["'$.stage'"]
        config_sql = f"json_extract(r.config, {', '.join(paths + paths[:1] if len(paths) == 1 else paths)})"
    else:
        config_sql = "r.config"
    if metrics is not None:
        # One column per metric: summaries are small, and SQLite's numbers need no parsing in Python.
        summary_sql = ", ".join(f"json_extract(r.summary, '$.{name}')" for name in metrics) or "NULL"
    else:
        summary_sql = "r.summary"
    width = len(metrics) if metrics else 1
    joined = with_axes or sweep is not None
    with closing(connection):
        cursor = connection.cursor()
        conditions, params = [], []
        if sweep is not None:
            conditions.append(f"s.name = {mark}")
            params.append(sweep)
        if stage is not None:
            conditions.append(f"r.stage = {mark}")
            params.append(stage)
        sql = _RUNS_SQL.format(
            values=f"{config_sql}, {summary_sql}",
            sweep_columns="sr.axes, s.name" if joined else "NULL, NULL",
            sweep_join="JOIN sweep_runs sr ON sr.run_id = r.id JOIN sweeps s ON s.id = sr.sweep_id" if joined else "",
            where=("WHERE " + " AND ".join(conditions)) if conditions else "",
            order="ORDER BY s.id, sr.position" if joined else "ORDER BY r.id",
        )
        cursor.execute(sql, params)
        nest = _nester(keys) if keys is not None else None
        # Runs of one setting (seeds, say) extract the same values: parse each distinct text once.
        # The records then share one config dict, which readers never modify.
        configs: dict[str, dict[str, Any]] = {}
        records: dict[int, RunRecord] = {}
        for row in cursor.fetchall():
            run_id, run_hash, run_stage, state, epoch, finished_at, error, reason, job_id, config = row[:10]
            summary, (axes, sweep_name) = row[10:10 + width], row[10 + width:]
            if run_id in records:
                continue
            if nest is not None:
                text = config
                config = configs.get(text)
                if config is None:
                    config = configs[text] = nest(json.loads(text))
            else:
                config = _json(config)
            if metrics is not None:
                values = {name: value for name, value in zip(metrics, summary) if value is not None}
            else:
                values = _json(summary[0]) or {}
            records[run_id] = RunRecord(
                hash=run_hash, stage=run_stage, state=state, epoch=epoch, config=config,
                axes=_json(axes) or {}, finished_at=finished_at, error=error, failure_reason=reason,
                job_id=job_id, sweep=sweep_name, metrics=values,
            )
        return list(records.values())


def count_in_flight(url: str) -> int:
    connection, _ = _connect(url)
    with closing(connection):
        cursor = connection.cursor()
        cursor.execute(f"SELECT COUNT(*) FROM runs WHERE state IN ({', '.join(repr(state) for state in IN_FLIGHT)})")
        return cursor.fetchone()[0]
