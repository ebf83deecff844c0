"""A sweep against the database: which runs are new, done, in flight or failed, and recording them.

Recording is one transaction: the sweep, its runs (one row per hash, shared across sweeps) and the
memberships land together or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import insert, select

from seedrun.schema import (BLOCKED, CANCELLED, COMPLETED, FAILED, IN_FLIGHT, LOST, PENDING, Run, Sweep as SweepRow,
                            SweepRun)
from seedrun.spec import RunSpec
from seedrun.store import seedrun_home, session_scope
from seedrun.sweep import Sweep


@dataclass
class Plan:
    sweep: Sweep
    states: dict[str, str] = field(default_factory=dict)  # hash -> recorded state ("new" if none)

    def with_state(self, *states: str) -> list[RunSpec]:
        return [run for run in self.sweep.runs if self.states.get(run.hash, "new") in states]

    def counts(self) -> dict[str, int]:
        counts = {"new": 0, "done": 0, "running": 0, "failed": 0}
        for run in self.sweep.runs:
            state = self.states.get(run.hash, "new")
            key = {"new": "new", PENDING: "new", COMPLETED: "done", FAILED: "failed", BLOCKED: "failed",
                   CANCELLED: "failed", LOST: "failed"}.get(state, "running" if state in IN_FLIGHT else "new")
            counts[key] += 1
        return counts

    def to_run(self, retry_failed: bool = False) -> list[RunSpec]:
        """Runs that are neither completed nor in flight (failed ones only when asked)."""
        todo = ["new", PENDING] + ([FAILED, BLOCKED, CANCELLED, LOST] if retry_failed else [])
        return self.with_state(*todo)


def run_dir_for(run_hash: str) -> Path:
    return seedrun_home() / "runs" / run_hash[:16]


def read_plan(sweep: Sweep, db_url: str) -> Plan:
    hashes = [run.hash for run in sweep.runs]
    states: dict[str, str] = {}
    with session_scope(db_url) as session:
        for start in range(0, len(hashes), 500):
            chunk = hashes[start:start + 500]
            states.update(session.execute(select(Run.hash, Run.state).where(Run.hash.in_(chunk))).all())
    return Plan(sweep, states)


def record(plan: Plan, db_url: str) -> None:
    """Insert the sweep, its new runs and memberships (existing runs are linked, not touched).

    Bulk inserts: one statement for the runs and one for the memberships, however large the sweep.
    """
    sweep = plan.sweep
    with session_scope(db_url) as session:
        row = session.scalars(select(SweepRow).where(SweepRow.name == sweep.name)).one_or_none()
        if row is None:
            row = SweepRow(name=sweep.name, ablation=sweep.ablation, path=str(Path(sweep.path).absolute()), axes=sweep.axes)
            session.add(row)
            session.flush()
        else:
            row.ablation, row.axes, row.path = sweep.ablation, sweep.axes, str(Path(sweep.path).absolute())
        hashes = list(dict.fromkeys(spec.hash for spec in sweep.runs))

        def ids() -> dict[str, int]:
            found: dict[str, int] = {}
            for start in range(0, len(hashes), 500):
                found.update(session.execute(select(Run.hash, Run.id).where(Run.hash.in_(hashes[start:start + 500]))).all())
            return found

        existing = ids()
        new = {spec.hash: spec for spec in sweep.runs if spec.hash not in existing}
        if new:
            session.execute(insert(Run), [
                {"hash": spec.hash, "stage": spec.stage, "state": PENDING, "run_dir": str(run_dir_for(spec.hash)),
                 "config": spec.config, "depends_on": spec.depends_on, "attempts": 0, "epoch": 0, "provenance": {}}
                for spec in new.values()])
            existing = ids()
        members = set(session.scalars(select(SweepRun.run_id).where(SweepRun.sweep_id == row.id)))
        rows, seen = [], set(members)
        for position, spec in enumerate(sweep.runs):
            run_id = existing[spec.hash]
            if run_id not in seen:
                seen.add(run_id)
                rows.append({"sweep_id": row.id, "run_id": run_id, "position": position, "axes": spec.axes})
        if rows:
            session.execute(insert(SweepRun), rows)


def add_runs(db_url: str, sweep_name: str, specs: list[RunSpec]) -> None:
    """Append runs to an existing sweep (evaluations of its runs); runs already members stay as they are."""
    from sqlalchemy import func

    with session_scope(db_url) as session:
        row = session.scalars(select(SweepRow).where(SweepRow.name == sweep_name)).one()
        position = (session.scalar(select(func.max(SweepRun.position)).where(SweepRun.sweep_id == row.id)) or 0) + 1
        members = {m.run_id for m in session.scalars(select(SweepRun).where(SweepRun.sweep_id == row.id))}
        for spec in specs:
            run = session.scalars(select(Run).where(Run.hash == spec.hash)).one_or_none()
            if run is None:
                run = Run(hash=spec.hash, stage=spec.stage, state=PENDING, run_dir=str(run_dir_for(spec.hash)),
                          config=spec.config, depends_on=spec.depends_on, attempts=0, epoch=0, provenance={})
                session.add(run)
                session.flush()
            if run.id not in members:
                session.add(SweepRun(sweep_id=row.id, run_id=run.id, position=position, axes=spec.axes))
                position += 1
