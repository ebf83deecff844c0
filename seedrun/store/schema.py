"""The database schema: sweeps, runs (one per stable config hash) and their metrics.

A run belongs to every sweep that names its config (SweepRun), so two sweeps that share a
teacher or a cell share the run rather than training it twice.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any, Optional

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from seedrun.sweeps.settings import settings_of
from seedrun.store.states import PENDING


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _settings_of_inserted(context) -> dict[str, Any]:
    # A context-sensitive default: ORM adds and Core bulk inserts both fill it from the row's config.
    return settings_of(context.get_current_parameters()["config"])


def _experiment_of_inserted(context) -> str:
    from seedrun.store.experiments import experiment_of

    return experiment_of(context.get_current_parameters()["config"])


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Sweep(Base):
    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    ablation: Mapped[Optional[str]] = mapped_column(String(100))
    path: Mapped[str] = mapped_column(Text)
    axes: Mapped[list[Any]] = mapped_column(default=list)  # dotted keys the sweep varies
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    members: Mapped[list["SweepRun"]] = relationship(back_populates="sweep", cascade="all, delete-orphan")


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    stage: Mapped[str] = mapped_column(String(20))  # teacher | distill
    # Pending when recorded; changed only through seedrun.store.states.transition, never by assignment:
    # several processes write it, and the guarded UPDATE there lets exactly one of two racing writers win.
    state: Mapped[str] = mapped_column(String(20), default=PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    run_dir: Mapped[str] = mapped_column(Text)
    config: Mapped[dict[str, Any]] = mapped_column()
    # The config's experiment settings, flat (seedrun.sweeps.settings): what tables group by and status shows.
    # Never set by hand: configs do not change once recorded, and this follows the config.
    settings: Mapped[Optional[dict[str, Any]]] = mapped_column(default=_settings_of_inserted)
    # The experiment the run is a seed of: its config hash with the seed left out (seedrun.store.experiments).
    experiment: Mapped[Optional[str]] = mapped_column(String(64), default=_experiment_of_inserted)
    depends_on: Mapped[Optional[str]] = mapped_column(String(64))  # hash of the upstream run
    job_id: Mapped[Optional[str]] = mapped_column(String(64))
    error: Mapped[Optional[str]] = mapped_column(Text)
    failure_reason: Mapped[Optional[str]] = mapped_column(String(40))
    provenance: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The last value of each metric, kept next to the run so that status and tables read one row per
    # run instead of scanning the metrics table (written with every metric by record_metrics).
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime)
    finished_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime)
    # When this row last took in a change (unix seconds): a run folder's record (run.json, written first
    # by the job) newer than this is brought in by `status`, `table` and `sync` (seedrun.store.catchup).
    updated_at: Mapped[Optional[float]] = mapped_column(Float)

    metrics: Mapped[list["Metric"]] = relationship(back_populates="run", cascade="all, delete-orphan")
    memberships: Mapped[list["SweepRun"]] = relationship(back_populates="run", cascade="all, delete-orphan")


class SweepRun(Base):
    """A run as one sweep sees it: the values of the sweep's axes that produced it."""

    __tablename__ = "sweep_runs"
    # Status lists a sweep's runs in the sweep's order: the index hands them over sorted.
    __table_args__ = (UniqueConstraint("sweep_id", "run_id"), Index("ix_sweep_runs_order", "sweep_id", "position"))

    id: Mapped[int] = mapped_column(primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"))
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    axes: Mapped[dict[str, Any]] = mapped_column(default=dict)

    sweep: Mapped[Sweep] = relationship(back_populates="members")
    run: Mapped[Run] = relationship(back_populates="memberships")


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_run_name", "run_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)
    epoch: Mapped[Optional[int]] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    run: Mapped[Run] = relationship(back_populates="metrics")


def record_metrics(session, run: Run, metrics: dict[str, float], epoch: Optional[int]) -> None:
    """Append metric rows and update the run's summary in the same transaction."""
    values = {name: float(value) for name, value in metrics.items()}
    # Neither store holds NaN: SQLite keeps it as NULL (a NOT NULL value here), and json.dumps would
    # write a bare NaN that SQLite's json functions reject as malformed, breaking every read of the
    # run. A non-finite value is recorded as null in the summary and gets no metric row.
    session.add_all(Metric(run_id=run.id, name=name, value=value, epoch=epoch)
                    for name, value in values.items() if math.isfinite(value))
    run.summary = {**(run.summary or {}), **{name: value if math.isfinite(value) else None
                                               for name, value in values.items()}}
