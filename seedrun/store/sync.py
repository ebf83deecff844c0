"""`seedrun sync [FOLDER...]`: build or repair a database from run folders.

A lost database, a copy of a cluster's runs/ on a laptop, two clusters' results merged into one
database: each FOLDER is a run folder or a folder of run folders (default $SEEDRUN_HOME/runs). Every
run folder with a record (run.json, seedrun.store.folders) is applied to the database
(seedrun.store.catchup.apply_record): a run the database lacks is added with its config, state, metrics
and provenance; one whose folder is newer is brought up to date through the state rules; one whose
database record is newer is kept. Sweeps come back from the sweep notes next to the runs
(<home>/sweeps/<name>.json, written when a sweep is recorded). Nothing is deleted, and a second sync
changes nothing. What disagreed is reported.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Iterable

from seedrun.store.catchup import Applied, apply_record
from seedrun.store.folders import CONFIG, RECORD, read_config, read_record

STAGE_ORDER = {"pretrain": 0, "distill": 1, "eval": 2}


def run_folders(folders: Iterable[str]) -> list[str]:
    """The run folders in (or being) each of `folders`, in a stable order."""
    found: list[str] = []
    for folder in folders:
        folder = os.path.abspath(folder)
        if os.path.exists(os.path.join(folder, RECORD)) or os.path.exists(os.path.join(folder, CONFIG)):
            found.append(folder)
            continue
        with os.scandir(folder) as entries:
            found += sorted(entry.path for entry in entries if entry.is_dir()
                            and (os.path.exists(os.path.join(entry.path, RECORD))
                                 or os.path.exists(os.path.join(entry.path, CONFIG))))
    return list(dict.fromkeys(found))


def sync(url: str, folders: Iterable[str]) -> tuple[Applied, list[str]]:
    """Apply every run folder under `folders` to the database at `url`; (what happened, report lines)."""
    from seedrun.store.engine import engine_for, write

    started = time.perf_counter()
    dirs = run_folders(folders)
    items, report = [], []
    for run_dir in dirs:
        record, config = read_record(run_dir), read_config(run_dir)
        if record is None or config is None or "hash" not in record:
            report.append(f"{run_dir}: no run.json and config.json (recorded before folder records?): skipped")
            continue
        items.append((STAGE_ORDER.get(record.get("stage"), 3), record, config, run_dir))
    items.sort(key=lambda item: item[0])
    engine_for(url)

    def body(session) -> Applied:
        out = Applied()
        for _, record, config, run_dir in items:
            apply_record(session, record, run_dir, create=True, config=config, out=out)
            _relocate(session, record["hash"], run_dir)
        _sweeps(session, {os.path.dirname(run_dir) for *_, run_dir in items}, out)
        return out

    out = write(url, body, wait_s=60.0)
    report += out.notes
    report.append(f"sync: {len(dirs)} run folders: {out.added} added, {out.updated} updated from their folders, "
                  f"{out.unchanged} unchanged ({time.perf_counter() - started:.1f} s)")
    return out, report


def _relocate(session, run_hash: str, run_dir: str) -> None:
    """A run whose recorded folder is gone (a copied runs/) is found where sync read it."""
    from sqlalchemy import select, update

    from seedrun.store.tables import runs

    c = runs.c
    recorded = session.execute(select(c.run_dir).where(c.hash == run_hash)).scalar()
    if recorded != run_dir and not os.path.isdir(recorded or ""):
        session.execute(update(runs).where(c.hash == run_hash).values(run_dir=run_dir))


def sweep_notes(home_runs: str) -> list[dict[str, Any]]:
    """The sweep notes next to a runs/ folder (<home>/sweeps/*.json)."""
    folder = os.path.join(os.path.dirname(home_runs), "sweeps")
    notes = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return notes
    for name in names:
        if name.endswith(".json"):
            try:
                with open(os.path.join(folder, name), "rb") as fh:
                    notes.append(json.loads(fh.read()))
            except (OSError, ValueError):
                continue
    return notes


def _sweeps(session, parents: set[str], out: Applied) -> None:
    """Sweeps and their memberships from the sweep notes, for the runs the database holds."""
    from sqlalchemy import insert, select

    from seedrun.store.tables import runs, sweep_runs, sweeps

    for parent in sorted(parents):
        for note in sweep_notes(parent):
            if not isinstance(note, dict) or not note.get("name"):
                continue
            sweep_id = session.execute(select(sweeps.c.id).where(sweeps.c.name == note["name"])).scalar()
            if sweep_id is None:
                sweep_id = session.execute(insert(sweeps).values(
                    name=note["name"], ablation=note.get("ablation"), path=note.get("path") or "",
                    axes=note.get("axes") or [])).inserted_primary_key[0]
            members = set(session.execute(select(sweep_runs.c.run_id).where(sweep_runs.c.sweep_id == sweep_id)).scalars())
            hashes = [member[0] for member in note.get("runs") or []]
            ids: dict[str, int] = {}
            for start in range(0, len(hashes), 500):
                ids.update(session.execute(select(runs.c.hash, runs.c.id)
                                           .where(runs.c.hash.in_(hashes[start:start + 500]))).all())
            rows = [{"sweep_id": sweep_id, "run_id": ids[run_hash], "position": position, "axes": axes or {}}
                    for run_hash, position, axes in note.get("runs") or [] if run_hash in ids
                    and ids[run_hash] not in members]
            if rows:
                session.execute(insert(sweep_runs), rows)
