"""Reading runs one record per run, for `status`, `eval` and the sweep's references: plain SQL over
a DB-API connection, no ORM.

Loading SQLAlchemy (its ORM especially) would take several times `python -c pass`, more than these
commands' whole budget (benchmarks/cli_latency.py), so the read path talks SQL directly: through the
standard library's sqlite3 (read-only) for SQLite, and through SQLAlchemy's raw connection for any other
URL. The column names used here are seedrun.store.tables'. Tables read runs grouped instead
(seedrun.store.groups).
"""

from __future__ import annotations

import json
import os
from contextlib import closing
from typing import Any, Callable, Iterable, NamedTuple, Optional, Sequence

from seedrun.sweeps.settings import SETTING_KEYS
from seedrun.store.states import IN_FLIGHT


class RunRecord(NamedTuple):
    """A run as status and the other readers see it: plain data, no session attached, never modified."""

    hash: str
    stage: str
    state: str
    epoch: int
    config: dict[str, Any]
    axes: dict[str, Any] = {}  # shared by records without axes: read-only like the rest
    metrics: dict[str, float] = {}  # last value of each metric
    finished_at: Any = None
    error: Optional[str] = None
    failure_reason: Optional[str] = None
    job_id: Optional[str] = None
    sweep: Optional[str] = None


def connect(url: str):
    """A DB-API connection and its parameter placeholder."""
    if url.startswith("sqlite:///"):
        import sqlite3

        path = os.path.abspath(url.removeprefix("sqlite:///"))
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
        # Read through a memory map: a listing touches every page of the wide runs rows, and one read()
        # per 4 KiB page costs half of status's query time at 10,000 runs (benchmarks/cli_latency.py).
        connection.execute("PRAGMA mmap_size = 1073741824")
        return connection, "?"
    from sqlalchemy import create_engine

    try:
        return create_engine(url).raw_connection(), "%s"
    except Exception as exc:  # unknown kind of database, no driver, no server (the driver's own errors too)
        from seedrun.errors import database_error

        raise database_error(url, exc) from exc


def parse_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def parse_all(values: list) -> list:
    """Many JSON texts parsed in one json.loads: each call costs microseconds, and 10,000 add up."""
    if all(value is None or isinstance(value, str) for value in values):
        return json.loads("[" + ",".join("null" if value is None else value for value in values) + "]")
    return [parse_json(value) for value in values]  # a driver that hands back parsed JSON already


# Runs that no sweep names. Written so that SQLite finds their ids in a small index (ix_runs_state)
# rather than by scanning the wide runs rows: 3 ms instead of 18 at 10,000 runs.
_SWEEPLESS = "r.id IN (SELECT r2.id FROM runs r2 WHERE r2.id NOT IN (SELECT run_id FROM sweep_runs))"


def _where(conditions: list[str]) -> str:
    return ("WHERE " + " AND ".join(conditions)) if conditions else ""


def listed_rows(cursor, select: Callable[[str, str], str], mark: str, sweep: Optional[str] = None,
                conditions: Sequence[str] = (), params: Sequence[Any] = ()) -> list[tuple]:
    """Rows in the order status lists runs: each sweep's runs in the sweep's order, a run in several
    sweeps once (under the first), and, when no sweep is named, the runs no sweep names last.

    `select(sweep_name_sql, axes_sql)` is a "SELECT ... FROM runs r" whose first column is r.id; it
    gets the sweep's name and the run's axes as SQL expressions (NULL for runs no sweep names).
    """
    conditions, params = list(conditions), list(params)
    named = conditions + ([f"s.name = {mark}"] if sweep is not None else [])
    cursor.execute(f"{select('s.name', 'sr.axes')} JOIN sweep_runs sr ON sr.run_id = r.id "
                   f"JOIN sweeps s ON s.id = sr.sweep_id {_where(named)} "
                   "ORDER BY sr.sweep_id, sr.position",  # ix_sweep_runs_order: no sort
                   params + ([sweep] if sweep is not None else []))
    fetched = cursor.fetchall()
    if sweep is None:  # runs an edited sweep file dropped: listed last, sweepless
        cursor.execute(f"{select('NULL', 'NULL')} {_where(conditions + [_SWEEPLESS])} ORDER BY r.id", params)
        fetched += cursor.fetchall()
    first: dict[Any, tuple] = {}
    for row in fetched:
        first.setdefault(row[0], row)
    return list(first.values())


_RUN_COLUMNS = "r.id, r.hash, r.stage, r.state, r.epoch, r.finished_at, r.error, r.failure_reason, r.job_id"


def names_only(names: list[str]) -> None:
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
    """Like _nester, for the parsed runs.settings object ({dotted key: value})."""
    nest = _nester(keys)
    return lambda settings: nest([(settings or {}).get(key) for key in keys])


def load_records(url: str, sweep: Optional[str] = None, stage: Optional[str] = None,
                 keys: Optional[Iterable[str]] = None, metrics: Optional[Iterable[str]] = None,
                 with_axes: bool = True) -> list[RunRecord]:
    """Every run (of one sweep, if named) with the last value of each of its metrics.

    Readers that know what they need say so, and on SQLite the database hands over just that:
    `keys` (dotted config keys) and `metrics` (names) are picked out of the stored JSON by
    json_extract in C, as one short JSON array per run; the records then hold only those. Parsing
    10,000 whole configs in Python costs seconds; this costs a fraction of one. `with_axes=False` skips
    the sweep membership (axes, sweep name) when no sweep is named.
    A run in several sweeps appears once, under the first sweep that named it (unless one is asked for);
    with no sweep asked for, runs that no sweep names come last, with no sweep.
    """
    connection, mark = connect(url)
    sqlite = mark == "?"
    keys = sorted(set(keys)) if keys is not None and sqlite else None
    metrics = sorted(set(metrics)) if metrics is not None and sqlite else None
    from_settings = keys is not None and set(keys) <= set(SETTING_KEYS) and has_settings(connection.cursor())
    if from_settings:
        # Settings keys come from the small runs.settings object, whole: its text repeats across
        # seeds, so Python parses each distinct one once.
        config_sql = "r.settings"
    elif keys is not None:
        # One json_extract with several paths parses the document once and returns a JSON array
        # (with one path it would return the bare value, hence the repeated first path).
        names_only(keys)
        paths = [f"'$.{key}'" for key in keys] or ["'$.stage'"]
        config_sql = f"json_extract(r.config, {', '.join(paths + paths[:1] if len(paths) == 1 else paths)})"
    else:
        config_sql = "r.config"
    names_only(metrics or [])
    if metrics is not None:
        # One column per metric: summaries are small, and SQLite's numbers need no parsing in Python.
        summary_sql = ", ".join(f"json_extract(r.summary, '$.\"{name}\"')" for name in metrics) or "NULL"
    else:
        summary_sql = "r.summary"
    width = len(metrics) if metrics else 1
    with closing(connection):
        cursor = connection.cursor()
        conditions, params = ([f"r.stage = {mark}"], [stage]) if stage is not None else ([], [])
        columns = f"{_RUN_COLUMNS}, {config_sql}, {summary_sql}"
        if with_axes or sweep is not None:
            rows = listed_rows(cursor, lambda name, axes: f"SELECT {columns}, {axes}, {name} FROM runs r", mark,
                               sweep, conditions, params)
        else:
            cursor.execute(f"SELECT {columns}, NULL, NULL FROM runs r {_where(conditions)} ORDER BY r.id", params)
            rows = cursor.fetchall()
        if from_settings:
            nest = _settings_nester(keys)
        else:
            nest = _nester(keys) if keys is not None else None
        configs = [row[9] for row in rows]
        if nest is not None:
            # Runs of one setting (seeds, say) extract the same values: parse each distinct text once.
            # The records then share one config dict, which readers never modify.
            nested = {text: nest(parse_json(text)) for text in set(configs)}
            configs = [nested[text] for text in configs]
        else:
            configs = parse_all(configs)
        axes = parse_all([row[-2] for row in rows])
        if metrics is None:
            summaries = parse_all([row[10] for row in rows])
        else:
            summaries = [{name: value for name, value in zip(metrics, row[10:10 + width]) if value is not None}
                         for row in rows]
        # Positional: twice as fast as keywords, and this runs 10,000 times for `seedrun status`.
        return [RunRecord(row[1], row[2], row[3], row[4], config, run_axes or {}, summary or {}, row[5], row[6],
                          row[7], row[8], row[-1])
                for row, config, run_axes, summary in zip(rows, configs, axes, summaries)]


def table_columns(cursor, table: str = "runs") -> set[str]:
    """The columns a table has in this database (SQLite): the read path copes with every earlier schema."""
    cursor.execute(f"SELECT name FROM pragma_table_info('{table}')")
    return {name for (name,) in cursor.fetchall()}


def has_settings(cursor) -> bool:
    """Whether runs.settings exists (a database last written before it was added has only configs)."""
    return "settings" in table_columns(cursor)


def in_flight_runs(url: str) -> list[tuple[int, Optional[str], Optional[str]]]:
    """(id, job id, upstream hash) of every run whose job may be running: what status reconciles."""
    connection, _ = connect(url)
    with closing(connection):
        cursor = connection.cursor()
        cursor.execute("SELECT id, job_id, depends_on FROM runs "
                       f"WHERE state IN ({', '.join(repr(state) for state in IN_FLIGHT)})")
        return [tuple(row) for row in cursor.fetchall()]


def states_of(url: str, hashes: Iterable[str]) -> dict[str, str]:
    """{hash: state} of these runs."""
    hashes = list(hashes)
    connection, mark = connect(url)
    with closing(connection):
        cursor = connection.cursor()
        found: dict[str, str] = {}
        for start in range(0, len(hashes), 500):
            chunk = hashes[start:start + 500]
            cursor.execute(f"SELECT hash, state FROM runs WHERE hash IN ({', '.join(mark for _ in chunk)})", chunk)
            found.update(cursor.fetchall())
        return found
