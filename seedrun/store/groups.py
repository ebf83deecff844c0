"""Reading runs grouped by stage, state and settings, for `seedrun table`.

10,000 runs are mostly seeds of a few dozen settings, and a table cell needs only counts, states,
the metric values of the completed runs and when the last one finished. On SQLite one query does
the grouping (over a covering index, see seedrun.store.engine); Python then sees a row per group.
"""

from __future__ import annotations

import json
import math
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from seedrun.store.records import RunRecord, connect, load_records, names_only, parse_json, table_columns
from seedrun.sweeps.settings import settings_of
from seedrun.store.states import COMPLETED


@dataclass(slots=True)
class RunGroup:
    """Runs of one stage, state and settings: what a table cell needs of them, without the runs."""

    stage: str
    state: str
    settings: dict[str, Any]  # seedrun.sweeps.settings: {dotted key: value}
    count: int = 0
    metrics: dict[str, list[float]] = field(default_factory=dict)  # if completed: each metric's finite values
    latest: Any = None  # the last finished_at among the runs; None when none finished
    experiment: Optional[str] = None  # seedrun.store.experiments: the config hash without the seed

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


def group_records(records: Iterable[RunRecord], experiments: Optional[dict[str, str]] = None) -> list[RunGroup]:
    """What load_groups reads from the database, from records in memory (one per hash kept).

    `experiments` ({hash: experiment key}) where the records' configs are partial; else from each config."""
    from seedrun.store.experiments import experiment_of

    groups: dict[tuple, RunGroup] = {}
    for run in latest_per_hash(records):
        settings = settings_of(run.config or {})
        experiment = experiments.get(run.hash) if experiments is not None else experiment_of(run.config or {})
        key = (run.stage, run.state, json.dumps(settings), experiment)
        group = groups.get(key)
        if group is None:
            group = groups[key] = RunGroup(run.stage, run.state, settings, experiment=experiment)
        group.count += 1
        for name, value in (run.metrics or {}).items() if run.state == COMPLETED else ():
            if _finite(value):
                group.metrics.setdefault(name, []).append(float(value))
        if run.finished_at is not None and (group.latest is None or run.finished_at > group.latest):
            group.latest = run.finished_at
    return list(groups.values())


_GROUPS_SQL = """
    SELECT r.stage, r.state, r.settings, {experiment}, COUNT(*), MAX(r.finished_at){metric_columns}
    FROM runs r
    {where}
    GROUP BY r.stage, r.settings, {experiment}, r.state  -- the order of ix_runs_grouping: no sort
"""


def load_groups(url: str, sweep: Optional[str] = None, stages: Optional[Iterable[str]] = None,
                metrics: Iterable[str] = (), names: Optional[dict[str, list[str]]] = None) -> list[RunGroup]:
    """The runs (of one sweep, if named; of these stages, if given) grouped by stage, state, settings
    and experiment (seedrun.store.experiments).

    `names`: where a metric is read under other names ({metric: [name, ...]}, the first found per run:
    seedrun.store.protocols.candidates); the groups hold it under the metric's own name.
    On SQLite the grouping and the picking of metric values out of each run's summary happen in one
    query, so Python sees a row per group, not per run. Elsewhere (or on a database without
    runs.settings) the records are read and grouped in Python, with the same result.
    """
    metrics = sorted(set(metrics))
    names = {metric: (names or {}).get(metric) or [metric] for metric in metrics}
    read = list(dict.fromkeys(name for metric in metrics for name in names[metric]))
    names_only(read)
    stages = sorted(set(stages)) if stages is not None else None
    connection, mark = connect(url)
    with closing(connection):
        cursor = connection.cursor()
        columns = table_columns(cursor) if mark == "?" else set()
        fast = "settings" in columns
        experiment_sql = "r.experiment" if "experiment" in columns else "NULL"
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
            paths = [f"'$.\"{name}\"'" for name in read]
            metric_columns = (f", json_group_array(json(json_extract(r.summary, {', '.join(paths + paths[:1])}))) "
                              f"FILTER (WHERE r.state = '{COMPLETED}')") if metrics else ""
            cursor.execute(_GROUPS_SQL.format(metric_columns=metric_columns, experiment=experiment_sql,
                                              where=("WHERE " + " AND ".join(conditions)) if conditions else ""), params)
            rows = cursor.fetchall()
    if not fast:
        records = load_records(url, sweep=sweep, metrics=read, with_axes=False)
        records = [record._replace(metrics=_first_found(record.metrics, metrics, names)) for record in records
                   if stages is None or record.stage in stages]
        return group_records(records)
    groups = []
    parsed: dict[str, dict[str, Any]] = {}
    position = {name: index for index, name in enumerate(read)}
    where = [(metric, [position[name] for name in names[metric]]) for metric in metrics]
    for stage, state, settings, experiment, count, latest, *values in rows:
        if settings not in parsed:
            parsed[settings] = parse_json(settings) or {}
        group = RunGroup(stage, state, parsed[settings], count, latest=latest, experiment=experiment)
        if values and values[0] is not None:
            # record_metrics writes numbers, or null for NaN and infinities: dropping nulls is enough.
            runs = json.loads(values[0])
            for metric, columns in where:
                # Plain loops, no generator a value: this runs for every run and metric at 10,000 runs.
                if len(columns) == 1:
                    column = columns[0]
                    found = [run[column] for run in runs if run[column] is not None]
                else:
                    found = []
                    for run in runs:
                        for column in columns:  # the first name the run has it under
                            if run[column] is not None:
                                found.append(run[column])
                                break
                if found:
                    group.metrics[metric] = found
        groups.append(group)
    return groups


def _first_found(values: dict[str, Any], metrics: list[str], names: dict[str, list[str]]) -> dict[str, Any]:
    out = {}
    for metric in metrics:
        value = next((values[name] for name in names[metric] if values.get(name) is not None), None)
        if value is not None:
            out[metric] = value
    return out
