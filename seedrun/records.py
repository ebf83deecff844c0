"""Reading runs for `status` and `table`: plain SQL over a DB-API connection, no ORM.

Importing SQLAlchemy's ORM costs more than these commands' whole latency budget (0.3 s at 10,000
runs), so the read path talks SQL directly: through the standard library's sqlite3 (read-only) for
SQLite, and through SQLAlchemy Core's raw connection for any other URL. Writes go through the ORM
models in seedrun.schema; the column names used here are theirs.

Two shapes come out: RunRecord, one per run (status, eval, the sweep's references), and RunGroup,
runs counted together by stage, state and settings (tables: 10,000 runs are mostly seeds of a few
dozen settings, and SQLite groups them faster than Python can look at them one by one).
"""

from __future__ import annotations

import json
import math
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from seedrun.settings import SETTING_KEYS, settings_of
from seedrun.states import COMPLETED, IN_FLIGHT


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


@dataclass
class RunGroup:
    """Runs of one stage, state and settings: what a table cell needs of them, without the runs."""

    stage: str
    state: str
    settings: dict[str, Any]  # seedrun.settings: {dotted key: value}
    count: int = 0
    metrics: dict[str, list[float]] = field(default_factory=dict)  # if completed: each metric's finite values
    latest: Any = None  # the last finished_at among the runs; None when none finished

    @property
    def completed(self) -> int:
        return self.count if self.state == COMPLETED else 0


def _finished(run: RunRecord) -> tuple:
    """Sorts unfinished runs first, then by finished_at."""
    return (False, 0) if run.finished_at is None else (True, run.finished_at)


def latest_per_hash(records: Iterable[RunRecord]) -> list[RunRecord]:
    """One record per config hash: completed before not, then the latest finished.

    The database holds one row per hash; records put together by hand (tests, merges) may not.
    """
    latest: dict[str, RunRecord] = {}
    for run in records:
        old = latest.setdefault(run.hash, run)
        if old is not run and (run.state == COMPLETED, _finished(run)) >= (old.state == COMPLETED, _finished(old)):
            latest[run.hash] = run
    return list(latest.values())


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def group_records(records: Iterable[RunRecord]) -> list[RunGroup]:
    """What load_groups reads from the database, from records in memory (one per hash kept)."""
    groups: dict[tuple, RunGroup] = {}
    for run in latest_per_hash(records):
        settings = settings_of(run.config or {})
        key = (run.stage, run.state, json.dumps(settings))
        group = groups.get(key)
        if group is None:
            group = groups[key] = RunGroup(run.stage, run.state, settings)
        group.count += 1
        for name, value in (run.metrics or {}).items() if run.state == COMPLETED else ():
            if _finite(value):
                group.metrics.setdefault(name, []).append(float(value))
        if run.finished_at is not None and (group.latest is None or run.finished_at > group.latest):
            group.latest = run.finished_at
    return list(groups.values())


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


def _parse_all(values: list) -> list:
    """Many JSON texts parsed in one json.loads: each call costs microseconds, and 10,000 add up."""
    if all(value is None or isinstance(value, str) for value in values):
        return json.loads("[" + ",".join("null" if value is None else value for value in values) + "]")
    return [_json(value) for value in values]  # a driver that hands back parsed JSON already


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

    def nest(values: Optional[list]) -> dict[str, Any]:
        values = values or [None] * len(keys)
        config = {section: dict(zip(names, values[start:stop])) for section, names, start, stop in sections}
        for index, parts in deep:
            if values[index] is not None:
                node = config
                for part in parts[:-1]:
                    node = node.setdefault(part, {})
                node[parts[-1]] = values[index]
        return config

    return nest


def _settings_nester(keys: list[str]):
    """Like _nester, for the parsed runs.settings object: the nested config of just these keys."""
    def nest(settings: Optional[dict[str, Any]]) -> dict[str, Any]:
        config: dict[str, Any] = {}
        for key in keys:
            section, name = key.split(".")
            config.setdefault(section, {})[name] = (settings or {}).get(key)
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
    from_settings = keys is not None and set(keys) <= set(SETTING_KEYS) and _has_settings(connection.cursor())
    if from_settings:
        # Settings keys come from the small runs.settings object, whole: its text repeats across
        # seeds, so Python parses each distinct one once.
        config_sql = "r.settings"
    elif keys is not None:
        # One json_extract with several paths parses the document once and returns a JSON array
        # (with one path it would return the bare value, hence the repeated first path).
        _names_only(keys)
        paths = [f"'$.{key}'" for key in keys] or ["'$.stage'"]
        config_sql = f"json_extract(r.config, {', '.join(paths + paths[:1] if len(paths) == 1 else paths)})"
    else:
        config_sql = "r.config"
    _names_only(metrics or [])
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
        if from_settings:
            nest = _settings_nester(keys)
        else:
            nest = _nester(keys) if keys is not None else None
        rows = list({row[0]: row for row in reversed(cursor.fetchall())}.values())[::-1]  # first membership wins
        configs = [row[9] for row in rows]
        if nest is not None:
            # Runs of one setting (seeds, say) extract the same values: parse each distinct text once.
            # The records then share one config dict, which readers never modify.
            nested = {text: nest(_json(text)) for text in set(configs)}
            configs = [nested[text] for text in configs]
        else:
            configs = _parse_all(configs)
        axes = _parse_all([row[-2] for row in rows])
        summaries = _parse_all([row[10] for row in rows]) if metrics is None else None
        records = []
        for index, row in enumerate(rows):
            _, run_hash, run_stage, state, epoch, finished_at, error, reason, job_id = row[:9]
            if metrics is not None:
                values = {name: value for name, value in zip(metrics, row[10:10 + width]) if value is not None}
            else:
                values = summaries[index] or {}
            records.append(RunRecord(
                hash=run_hash, stage=run_stage, state=state, epoch=epoch, config=configs[index],
                axes=axes[index] or {}, finished_at=finished_at, error=error, failure_reason=reason,
                job_id=job_id, sweep=row[-1], metrics=values,
            ))
        return records


def _has_settings(cursor) -> bool:
    """Whether runs.settings exists (a database last written before it was added has only configs)."""
    cursor.execute("SELECT name FROM pragma_table_info('runs')")
    return "settings" in {name for (name,) in cursor.fetchall()}


_GROUPS_SQL = """
    SELECT r.stage, r.state, r.settings, COUNT(*), MAX(r.finished_at){metric_columns}
    FROM runs r
    {where}
    GROUP BY r.stage, r.settings, r.state  -- the order of ix_runs_grouping: no sort
"""


def load_groups(url: str, sweep: Optional[str] = None, stages: Optional[Iterable[str]] = None,
                metrics: Iterable[str] = ()) -> list[RunGroup]:
    """The runs (of one sweep, if named; of these stages, if given) grouped by stage, state and settings.

    On SQLite the grouping and the picking of metric values out of each run's summary happen in one
    query, so Python sees a row per group, not per run. Elsewhere (or on a database without
    runs.settings) the records are read and grouped in Python, with the same result.
    """
    metrics = sorted(set(metrics))
    _names_only(metrics)
    stages = sorted(set(stages)) if stages is not None else None
    connection, mark = _connect(url)
    with closing(connection):
        cursor = connection.cursor()
        fast = mark == "?" and _has_settings(cursor)
        if fast:
            conditions, params = [], []
            if sweep is not None:
                conditions.append("r.id IN (SELECT sr.run_id FROM sweep_runs sr JOIN sweeps s ON s.id = sr.sweep_id "
                                  "WHERE s.name = ?)")
                params.append(sweep)
            if stages is not None:
                conditions.append(f"r.stage IN ({', '.join('?' for _ in stages)})")
                params.extend(stages)
            # The completed runs' metric values, as one JSON array per run (one json_extract with
            # several paths parses each summary once; with one path it would return a bare value).
            paths = [f"'$.{name}'" for name in metrics]
            metric_columns = (f", json_group_array(json(json_extract(r.summary, {', '.join(paths + paths[:1])}))) "
                              f"FILTER (WHERE r.state = '{COMPLETED}')") if metrics else ""
            cursor.execute(_GROUPS_SQL.format(metric_columns=metric_columns,
                                              where=("WHERE " + " AND ".join(conditions)) if conditions else ""), params)
            rows = cursor.fetchall()
    if not fast:
        records = load_records(url, sweep=sweep, keys=SETTING_KEYS, metrics=metrics, with_axes=False)
        return group_records(record for record in records if stages is None or record.stage in stages)
    groups = []
    parsed: dict[str, dict[str, Any]] = {}
    for stage, state, settings, count, latest, *values in rows:
        if settings not in parsed:
            parsed[settings] = _json(settings) or {}
        group = RunGroup(stage, state, parsed[settings], count, latest=latest)
        if values and values[0] is not None:
            # record_metrics writes numbers, or null for NaN and infinities: dropping nulls is enough.
            for name, column in zip(metrics, zip(*json.loads(values[0]))):
                found = [value for value in column if value is not None]
                if found:
                    group.metrics[name] = found
        groups.append(group)
    return groups


def count_in_flight(url: str) -> int:
    connection, _ = _connect(url)
    with closing(connection):
        cursor = connection.cursor()
        cursor.execute(f"SELECT COUNT(*) FROM runs WHERE state IN ({', '.join(repr(state) for state in IN_FLIGHT)})")
        return cursor.fetchone()[0]
