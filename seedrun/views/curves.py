"""A sweep's recorded training curves, per run and per epoch, for `seedrun plot`: no torch, no TensorBoard.

Which runs: the sweep's members in the database (the order `status` lists them). Their points: each run
folder's metrics.jsonl (seedrun.store.folders, one line per epoch, the record the job writes first), or,
where the folder is not on this machine, the database's metric rows. An epoch recorded twice (a run
redone after its record was written) counts once, with its last value.
"""

from __future__ import annotations

import os
from contextlib import closing
from typing import Any, NamedTuple, Optional

from seedrun.store.folders import metric_lines
from seedrun.store.records import connect, listed_rows, parse_json


class Curve(NamedTuple):
    label: str
    stage: str  # "pretrain" (the teacher, the students alone) or "distill"
    points: list[tuple[int, float]]  # (epoch, value), epochs increasing


class UnknownSweep(LookupError):
    pass


def run_label(stage: str, config: dict[str, Any], axes: dict[str, Any]) -> str:
    """A run as a legend names it: its setting (the sweep's varied values) and seed."""
    if stage == "pretrain":
        p = config.get("pretrain") or {}
        if p.get("role") == "baseline":
            return f"{p.get('arch')} alone, seed {p.get('seed')}"
        return f"teacher {p.get('method')} {p.get('arch')} width {p.get('width')}"
    setting = ", ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in axes.items() if key != "seed")
    seed = axes.get("seed", config.get("seed"))
    return f"{setting or (config.get('student') or {}).get('arch', 'student')}, seed {seed}"


def folder_points(run_dir: str, metric: str) -> list[tuple[int, float]]:
    values: dict[int, float] = {}
    for epoch, entry in metric_lines(run_dir):
        if isinstance(entry.get(metric), (int, float)):
            values[epoch] = float(entry[metric])
    return sorted(values.items())


def _db_points(cursor, mark: str, run_id: int, metric: str) -> list[tuple[int, float]]:
    cursor.execute(f"SELECT epoch, value FROM metrics WHERE run_id = {mark} AND name = {mark} AND epoch IS NOT NULL "
                   "ORDER BY id", (run_id, metric))
    return sorted(dict(cursor.fetchall()).items())


def _run_folder(run_dir: Optional[str], run_hash: str) -> str:
    if run_dir and os.path.isdir(run_dir):
        return run_dir
    from seedrun.store.locations import seedrun_home

    return str(seedrun_home() / "runs" / run_hash[:16])  # where the job puts it when the row names none


def load_curves(db_url: str, sweep: str, metric: str) -> list[Curve]:
    """One curve per training run of the sweep that recorded `metric`, in the sweep's order."""
    connection, mark = connect(db_url)
    with closing(connection):
        cursor = connection.cursor()
        cursor.execute(f"SELECT id FROM sweeps WHERE name = {mark}", (sweep,))
        if cursor.fetchone() is None:
            cursor.execute("SELECT name FROM sweeps ORDER BY id")
            known = [name for (name,) in cursor.fetchall()]
            raise UnknownSweep(f"no sweep named {sweep!r}; recorded: {', '.join(known) or 'none'}")
        rows = listed_rows(cursor, lambda name, axes: f"SELECT r.id, r.hash, r.stage, r.run_dir, r.config, {axes} "
                           "FROM runs r", mark, sweep)
        curves = []
        for run_id, run_hash, stage, run_dir, config, axes in rows:
            if stage not in ("pretrain", "distill"):
                continue  # evaluation runs train nothing
            folder = _run_folder(run_dir, run_hash)
            points = folder_points(folder, metric) if os.path.isdir(folder) else _db_points(cursor, mark, run_id,
                                                                                              metric)
            if points:
                curves.append(Curve(run_label(stage, parse_json(config) or {}, parse_json(axes) or {}), stage,
                                    points))
        return curves


def metric_names(db_url: str, sweep: str) -> list[str]:
    """The metrics the sweep's runs recorded per epoch (for the message when the asked one is missing)."""
    names: set[str] = set()
    connection, mark = connect(db_url)
    with closing(connection):
        rows = listed_rows(connection.cursor(), lambda name, axes: "SELECT r.id, r.hash, r.run_dir FROM runs r",
                           mark, sweep)
    for _, run_hash, run_dir in rows:
        for _, entry in metric_lines(_run_folder(run_dir, run_hash)):
            names.update(name for name, value in entry.items() if isinstance(value, (int, float)))
    return sorted(names)
