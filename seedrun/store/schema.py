"""The ORM models over the database's tables (seedrun.store.tables): sweeps, runs (one per stable config
hash) and their metrics.

A run belongs to every sweep that names its config (SweepRun), so two sweeps that share a
teacher or a cell share the run rather than training it twice. The columns are declared once, as
Core tables, in seedrun.store.tables (what writers that need no ORM use); the annotations here only
type them.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any, Optional

from sqlalchemy.orm import DeclarativeBase, Mapped, relationship

from seedrun.store import tables
from seedrun.store.tables import utcnow

__all__ = ["Base", "Metric", "Run", "Sweep", "SweepRun", "record_metrics", "utcnow"]


class Base(DeclarativeBase):
    metadata = tables.metadata


class Sweep(Base):
    __table__ = tables.sweeps

    id: Mapped[int]
    name: Mapped[str]
    ablation: Mapped[Optional[str]]
    path: Mapped[str]
    axes: Mapped[list[Any]]  # dotted keys the sweep varies
    created_at: Mapped[dt.datetime]

    members: Mapped[list["SweepRun"]] = relationship(back_populates="sweep", cascade="all, delete-orphan")


class Run(Base):
    __table__ = tables.runs

    id: Mapped[int]
    hash: Mapped[str]
    stage: Mapped[str]
    # Changed only through seedrun.store.states.transition, never by assignment (see seedrun.store.tables).
    state: Mapped[str]
    attempts: Mapped[int]
    epoch: Mapped[int]
    run_dir: Mapped[str]
    config: Mapped[dict[str, Any]]
    settings: Mapped[Optional[dict[str, Any]]]  # never set by hand: follows the config
    experiment: Mapped[Optional[str]]
    depends_on: Mapped[Optional[str]]
    job_id: Mapped[Optional[str]]
    error: Mapped[Optional[str]]
    failure_reason: Mapped[Optional[str]]
    provenance: Mapped[dict[str, Any]]
    summary: Mapped[dict[str, Any]]
    created_at: Mapped[dt.datetime]
    started_at: Mapped[Optional[dt.datetime]]
    finished_at: Mapped[Optional[dt.datetime]]
    updated_at: Mapped[Optional[float]]
    attempt: Mapped[int]
    seq: Mapped[int]

    metrics: Mapped[list["Metric"]] = relationship(back_populates="run", cascade="all, delete-orphan")
    memberships: Mapped[list["SweepRun"]] = relationship(back_populates="run", cascade="all, delete-orphan")


class SweepRun(Base):
    """A run as one sweep sees it: the values of the sweep's axes that produced it."""

    __table__ = tables.sweep_runs

    id: Mapped[int]
    sweep_id: Mapped[int]
    run_id: Mapped[int]
    position: Mapped[int]
    axes: Mapped[dict[str, Any]]

    sweep: Mapped[Sweep] = relationship(back_populates="members")
    run: Mapped[Run] = relationship(back_populates="memberships")


class Metric(Base):
    __table__ = tables.metrics

    id: Mapped[int]
    run_id: Mapped[int]
    name: Mapped[str]
    value: Mapped[float]
    epoch: Mapped[Optional[int]]
    created_at: Mapped[dt.datetime]

    run: Mapped[Run] = relationship(back_populates="metrics")


def record_metrics(session, run: Run, metrics: dict[str, float], epoch: Optional[int]) -> None:
    """Append metric rows and update the run's summary in the same transaction (seedrun.store.tables.add_metrics
    does it without the ORM)."""
    values = {name: float(value) for name, value in metrics.items()}
    # Neither store holds NaN: SQLite keeps it as NULL (a NOT NULL value here), and json.dumps would
    # write a bare NaN that SQLite's json functions reject as malformed, breaking every read of the
    # run. A non-finite value is recorded as null in the summary and gets no metric row.
    session.add_all(Metric(run_id=run.id, name=name, value=value, epoch=epoch)
                    for name, value in values.items() if math.isfinite(value))
    run.summary = {**(run.summary or {}), **{name: value if math.isfinite(value) else None
                                               for name, value in values.items()}}
