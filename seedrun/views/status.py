"""`seedrun status`: counts per state and a row per run (or JSON), after reconciling in-flight runs
with their jobs (seedrun.launchers.reconcile).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any, Optional

from seedrun.store.records import (connect, has_settings, listed_rows, load_records, parse_all, parse_json,
                                   table_columns)
from seedrun.store.states import STATES


# What status shows of a config (the rest stays in the database: `sqlite3` or the run's config.json).
STATUS_KEYS = ("distill.epochs", "pretrain.epochs", "pretrain.method", "pretrain.arch", "pretrain.role")


def _epochs(config: dict[str, Any], stage: str) -> Optional[int]:
    section = config.get("pretrain" if stage == "pretrain" else "distill") or {}
    return section.get("epochs")


def _axes_text(axes: dict[str, Any]) -> str:
    """The setting column of a run a sweep made: its axes' values."""
    return " ".join([f"{key}={value}" for key, value in axes.items()])


def _check_sweep(db_url: str, sweep: Optional[str], runs: list) -> None:
    if sweep is not None and not runs:
        from seedrun.errors import InputError

        raise InputError("status", "SWEEP", f"no sweep named {sweep!r} in {db_url}")


# One JSON object per run, made by SQLite (json_object in C is ten times faster than json.dumps on
# 10,000 runs); its fields are those of _run_as_json, which makes them elsewhere.
_RUN_JSON_SQL = """
    SELECT r.id, r.state, json_object(
        'hash', r.hash, 'sweep', {sweep}, 'stage', r.stage, 'state', r.state, 'epoch', r.epoch,
        'epochs', json_extract(r.settings, CASE r.stage WHEN 'pretrain' THEN '$."pretrain.epochs"'
                                                        ELSE '$."distill.epochs"' END),
        'axes', json(coalesce({axes}, '{{}}')), 'metrics', json(coalesce(r.summary, '{{}}')),
        'job_id', r.job_id, 'failure_reason', r.failure_reason, 'error', r.error)
    FROM runs r"""


def _run_as_json(record) -> str:
    return json.dumps({
        "hash": record.hash, "sweep": record.sweep, "stage": record.stage, "state": record.state,
        "epoch": record.epoch, "epochs": _epochs(record.config, record.stage), "axes": record.axes,
        "metrics": record.metrics, "job_id": record.job_id, "failure_reason": record.failure_reason,
        "error": record.error}, default=str)


def _runs_as_json(db_url: str, sweep: Optional[str], in_sql: bool = True) -> list[tuple[str, str]]:
    """(state, JSON object) of every run (of one sweep, if named), in the order status lists them."""
    if in_sql and db_url.startswith("sqlite:///"):
        from contextlib import closing

        connection, _ = connect(db_url)
        with closing(connection):
            cursor = connection.cursor()
            if has_settings(cursor):
                rows = listed_rows(cursor, lambda name, axes: _RUN_JSON_SQL.format(sweep=name, axes=axes), "?", sweep)
                return [(state, text) for _, state, text in rows]
    return [(record.state, _run_as_json(record)) for record in load_records(db_url, sweep=sweep, keys=STATUS_KEYS)]


# A row of the listing, mostly as text, made by SQLite (10,000 RunRecords cost a third of status's
# time); its columns are those of _record_row, which makes them elsewhere. The setting is the axes'
# JSON, written out in Python (Python's str of a float is not SQLite's); what a row shows of the run's
# settings (a teacher's method and network, the epochs) is read in Python once per distinct settings
# text: runs of one sweep share a few dozen, and json_extract would parse them once per run. A
# multi-process run's job shows its layout, "[G x N gpu|cpu]" (processes per node x nodes,
# seedrun.job.provenance.layout), from runs.layout where the schema has it (0003): extracting it from
# each run's provenance (1-2 KB of JSON) costs a seventh of the query at 10,000 runs.
_ROW_SQL = """
    SELECT r.id, coalesce({sweep}, ''), substr(r.hash, 1, 12), r.stage, {axes}, r.settings,
        CASE WHEN r.failure_reason IS NULL THEN r.state ELSE r.state || ' (' || r.failure_reason || ')' END,
        r.epoch, json_extract(r.summary, '$."knn_top1"'), CASE WHEN r.stage = 'pretrain' THEN json_extract(r.summary, '$."init_knn_top1"') END,
        coalesce(r.job_id, '') || coalesce(' [' || {layout} || ']', ''), r.state, {hours}
    FROM runs r"""


def _settings_view(stage: str, settings: dict[str, Any]) -> tuple[str, str]:
    """(what the setting column says of a run without axes, "/epochs" or ""), from its settings (the
    STATUS_KEYS of seedrun.sweeps.settings' flat form): both listings, from SQL and from records, use it."""
    if stage == "pretrain":
        description = (f"{settings.get('pretrain.method')} {settings.get('pretrain.arch')} "
                       f"({settings.get('pretrain.role') or 'teacher'})")
        epochs = settings.get("pretrain.epochs")
    else:
        description, epochs = "", settings.get("distill.epochs")
    return description, f"/{epochs}" if epochs else ""


def _knn_text(knn: Optional[float], init: Optional[float]) -> str:
    """The k-NN column: a student-alone run's also says its network untrained (random init), which it must beat."""
    if knn is None:
        return ""
    return f"{knn:.2f}" if init is None else f"{knn:.2f} (init {init:.2f})"


def _record_row(record, layout: Optional[str] = None) -> tuple[str, ...]:
    settings = {key: (record.config.get(key.split(".")[0]) or {}).get(key.split(".")[1]) for key in STATUS_KEYS}
    description, epochs = _settings_view(record.stage, settings)
    return (record.sweep or "", record.hash[:12], record.stage, _axes_text(record.axes) if record.axes else description,
            f"{record.state} ({record.failure_reason})" if record.failure_reason else record.state,
            f"{record.epoch}{epochs}", _knn_text(record.metrics.get("knn_top1"), record.metrics.get("init_knn_top1")),
            (record.job_id or "") + (f" [{layout}]" if layout else ""), record.state)


def _layouts(db_url: str) -> dict[str, str]:
    """Each multi-process run's layout (provenance.layout: processes per node x nodes, gpu or cpu), by hash:
    the records status reads do not carry provenance."""
    from seedrun.store.engine import session_scope
    from seedrun.store.schema import Run
    from sqlalchemy import select

    with session_scope(db_url) as session:
        return {digest: prov["layout"] for digest, prov in session.execute(select(Run.hash, Run.provenance))
                if isinstance(prov, dict) and prov.get("layout")}


def _status_rows(db_url: str, sweep: Optional[str]) -> tuple[list[tuple[str, ...]],
                                                             Optional[dict[str, dict[str, float]]]]:
    """(the listing's rows as text, in the order status lists runs, each ending in the run's state; the
    device-hours each sweep used where the same query could read them, SQLite's narrow columns of
    migration 0005, else None): one pass over the runs instead of two."""
    if db_url.startswith("sqlite:///"):
        from contextlib import closing

        connection, _ = connect(db_url)
        with closing(connection):
            cursor = connection.cursor()
            columns = table_columns(cursor)
            if "settings" in columns:
                layout = "r.layout" if "layout" in columns else "json_extract(r.provenance, '$.layout')"
                narrow = "device_hours" in columns
                used = "r.device_kind, r.device_hours" if narrow else "NULL, NULL"
                hours: dict[str, dict[str, float]] = {}
                fetched = listed_rows(cursor, lambda name, axes: _ROW_SQL.format(sweep=name, axes=axes, layout=layout,
                                                                                hours=used), "?", sweep)
                axes = parse_all([row[4] for row in fetched])
                views: dict[tuple[str, Optional[str]], tuple[str, str]] = {}
                rows = []
                append = rows.append  # one call a run at 10,000 runs: the loop is a third of status's Python
                for (_, sweep_name, short, stage, _, settings, state, epoch, knn, init, job, bare, kind,
                     spent), run_axes in zip(fetched, axes):
                    if spent:
                        per_kind = hours.setdefault(sweep_name, {})
                        per_kind[kind] = per_kind.get(kind, 0.0) + spent
                    view = views.get((stage, settings))
                    if view is None:
                        view = views[stage, settings] = _settings_view(stage, parse_json(settings) or {})
                    append((sweep_name, short, stage,
                            _axes_text(run_axes) if run_axes else view[0],
                            state, f"{epoch}{view[1]}", _knn_text(knn, init), job, bare))
                return rows, (hours if narrow else None)
    layouts = _layouts(db_url)
    return [_record_row(record, layouts.get(record.hash))
            for record in load_records(db_url, sweep=sweep, keys=STATUS_KEYS, metrics=["knn_top1", "init_knn_top1"])], None


def show_status(db_url: str, sweep: Optional[str], as_json: bool = False, check_jobs: bool = True) -> int:
    if db_url.startswith("sqlite:///"):
        if not os.path.exists(db_url.removeprefix("sqlite:///")):
            print(json.dumps({"counts": {}, "runs": []}) if as_json else f"no runs recorded yet ({db_url})")
            return 0
    if check_jobs:
        from seedrun.launchers.reconcile import reconcile

        reconcile(db_url)
    if as_json:
        runs = _runs_as_json(db_url, sweep)
        _check_sweep(db_url, sweep, runs)
        counts = Counter(state for state, _ in runs)
        print(f'{{"counts": {json.dumps({state: counts.get(state, 0) for state in STATES})}, '
              f'"runs": [{", ".join(text for _, text in runs)}]}}')
        return 0
    rows, hours = _status_rows(db_url, sweep)
    _check_sweep(db_url, sweep, rows)
    columns = list(zip(*rows)) or [()] * 9
    counts = Counter(columns[-1])
    # Plain aligned text: rich's Table takes seconds on 10,000 rows and status must stay instant.
    print("  ".join(f"{state} {counts[state]}" for state in STATES if counts.get(state)) or "no runs")
    header = ("sweep", "run", "stage", "setting", "state", "epoch", "k-NN top-1", "job")
    widths = [max(len(label), max(map(len, column), default=0)) for label, column in zip(header, columns)]
    # The last column unpadded: no trailing spaces to strip from 10,000 lines.
    line = "  ".join([f"{{:<{width}}}" for width in widths[:-1]] + ["{}"])
    # A row's ninth field, its bare state, has no place in the line: format() leaves it out.
    print("\n".join([line.format(*header)] + [line.format(*row) if row[-2] else line.format(*row).rstrip()
                                           for row in rows]))
    from seedrun.views.progress import hours_by_sweep, hours_text

    used = hours_text(hours if hours is not None else hours_by_sweep(db_url, sweep))
    if used:
        print("\ndevice-hours used, per sweep:\n" + "\n".join(used))
    if counts.get("running"):
        from seedrun.views.progress import running_progress

        progress = running_progress(db_url, {row[1] for row in rows if row[-1] == "running"})
        if progress:
            print("\ntraining  epoch, pace of the last epoch, time left at that pace")
            widths = [max(len(cell) for cell in column) for column in zip(*progress)]
            for cells in progress:
                print("  " + "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip())
    return 0


def watch(db_url: str, sweep: Optional[str], every_s: float = 5.0) -> int:
    """`status --watch`: the listing again every `every_s` seconds, in place on a terminal, until no run is
    pending or in flight (or Ctrl-C). Each round brings the folders in and reconciles, as status does."""
    import sys
    import time

    from seedrun.commands import db_exists
    from seedrun.commands.read import catch_up_first
    from seedrun.store.states import IN_FLIGHT, PENDING

    if not db_exists(db_url):
        return show_status(db_url, sweep)
    try:
        while True:
            catch_up_first(db_url)
            if sys.stdout.isatty():
                print("\033[H\033[J", end="")  # home and clear: the listing redrawn in place
            show_status(db_url, sweep)
            print(f"(every {every_s:g} s; Ctrl-C to stop)", flush=True)
            if not any(state in (PENDING,) + IN_FLIGHT for state in _states(db_url, sweep)):
                return 0
            time.sleep(every_s)
    except KeyboardInterrupt:
        return 0


def _states(db_url: str, sweep: Optional[str]) -> list[str]:
    return [row[-1] for row in _status_rows(db_url, sweep)[0]]
