"""The database's tables as SQLAlchemy Core: sweeps, runs (one per stable config hash), sweep_runs and
metrics. The ORM models (seedrun.store.schema) are mapped onto these very tables.

Writers that need no ORM (catching up from run folders: seedrun.store.catchup, sync; every state
change: seedrun.store.states) use these.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from sqlalchemy import (JSON, Column, DateTime, Float, ForeignKey, Index, Integer, MetaData, String, Table, Text,
                        UniqueConstraint, insert, update)

from seedrun.store.folders import utcnow
from seedrun.store.states import PENDING


def _settings_of_inserted(context) -> dict[str, Any]:
    # A context-sensitive default: ORM adds and Core inserts both fill it from the row's config.
    from seedrun.sweeps.settings import settings_of

    return settings_of(context.get_current_parameters()["config"])


def _experiment_of_inserted(context) -> str:
    from seedrun.store.experiments import experiment_of

    return experiment_of(context.get_current_parameters()["config"])


metadata = MetaData()

sweeps = Table(
    "sweeps", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("ablation", String(100)),
    Column("path", Text, nullable=False),
    Column("axes", JSON, nullable=False, default=list),  # dotted keys the sweep varies
    Column("created_at", DateTime, nullable=False, default=utcnow),
)

runs = Table(
    "runs", metadata,
    Column("id", Integer, primary_key=True),
    Column("hash", String(64), nullable=False, unique=True),
    Column("stage", String(20), nullable=False),  # pretrain | distill | eval
    # Pending when recorded; changed only through seedrun.store.states.transition, never by assignment:
    # several processes write it, and the guarded UPDATE there lets exactly one of two racing writers win.
    Column("state", String(20), nullable=False, default=PENDING, index=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("epoch", Integer, nullable=False, default=0),
    Column("run_dir", Text, nullable=False),
    Column("config", JSON, nullable=False),
    # The config's experiment settings, flat (seedrun.sweeps.settings): what tables group by and status shows.
    # Never set by hand: configs do not change once recorded, and this follows the config.
    Column("settings", JSON, default=_settings_of_inserted),
    # The experiment the run is a seed of: its config hash with the seed left out (seedrun.store.experiments).
    Column("experiment", String(64), default=_experiment_of_inserted),
    Column("depends_on", String(64)),  # hash of the upstream run
    Column("job_id", String(64)),
    Column("error", Text),
    Column("failure_reason", String(40)),
    Column("provenance", JSON, nullable=False, default=dict),
    # The last value of each metric, kept next to the run so that status and tables read one row per
    # run instead of scanning the metrics table (written with every metric: add_metrics).
    Column("summary", JSON, nullable=False, default=dict),
    Column("created_at", DateTime, nullable=False, default=utcnow),
    Column("started_at", DateTime),
    Column("finished_at", DateTime),
    # When this row last changed (unix seconds, for people: nothing is ordered by it).
    Column("updated_at", Float),
    # The version of the last folder record (run.json) this row took in: the attempt a submission opened
    # and the counter its job advances with every write. A folder record is brought in only when its
    # version is newer (seedrun.store.catchup); no clock decides.
    Column("attempt", Integer, nullable=False, default=0, server_default="0"),
    Column("seq", Integer, nullable=False, default=0, server_default="0"),
)

# Columns only SQLite databases have: made by a migration and kept by triggers, never written through
# these tables (seedrun/store/migrations/versions/0003_runs_layout.py, 0005_device_hours.py); the read path's SQL names them
# only where the database has them (seedrun.store.records.table_columns).
SQLITE_ONLY_COLUMNS = {"runs": frozenset({"layout", "device_kind", "device_hours"})}

# A run as one sweep sees it: the values of the sweep's axes that produced it. Status lists a sweep's
# runs in the sweep's order: the index hands them over sorted.
sweep_runs = Table(
    "sweep_runs", metadata,
    Column("id", Integer, primary_key=True),
    Column("sweep_id", Integer, ForeignKey("sweeps.id", ondelete="CASCADE"), nullable=False),
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("position", Integer, nullable=False),
    Column("axes", JSON, nullable=False, default=dict),
    UniqueConstraint("sweep_id", "run_id"),
    Index("ix_sweep_runs_order", "sweep_id", "position"),
)

metrics = Table(
    "metrics", metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(100), nullable=False),
    Column("value", Float, nullable=False),
    Column("epoch", Integer),
    Column("created_at", DateTime, nullable=False, default=utcnow),
    Index("ix_metrics_run_name", "run_id", "name"),
)


def add_metrics(db, run_id: int, summary: Optional[dict[str, Any]], values: dict[str, Any],
                epoch: Optional[int]) -> None:
    """Metric rows for `values` and the run's summary (`summary`, as read) updated with them, in `db`'s
    transaction (a Connection or a Session). A non-finite value gets no row and is null in the summary:
    neither store holds NaN (seedrun.store.schema.record_metrics says why: the same rule)."""
    values = {name: float(value) for name, value in values.items()}
    rows = [{"run_id": run_id, "name": name, "value": value, "epoch": epoch}
            for name, value in values.items() if math.isfinite(value)]
    if rows:
        db.execute(insert(metrics), rows)
    merged = {**(summary or {}), **{name: value if math.isfinite(value) else None for name, value in values.items()}}
    db.execute(update(runs).where(runs.c.id == run_id).values(summary=merged))
