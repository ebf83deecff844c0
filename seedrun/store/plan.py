"""A sweep against the database: which runs are new, done, in flight or failed, and recording them.

Recording is one transaction: the sweep, its runs (one row per hash, shared across sweeps) and the
memberships land together or not at all. New runs are recorded pending; from there
only seedrun.store.states.transition moves them.

A sweep is what its file says now. When an edited file no longer names runs that an earlier version
recorded, recording drops them from the sweep, so that `status SWEEP` and `table --sweep` show the
sweep as it is: their results stay in the database (and in `seedrun status`, sweepless), and rows
that never started and that no other sweep names are deleted, since nothing would ever run them.
Evaluation runs that `seedrun eval` added for runs the sweep still names are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import insert, select

from seedrun.store.schema import Run, Sweep as SweepRow, SweepRun
from seedrun.store.states import BLOCKED, CANCELLED, COMPLETED, FAILED, IN_FLIGHT, LOST, PENDING, RETRYABLE
from seedrun.sweeps.spec import RunSpec
from seedrun.store.engine import session_scope
from seedrun.store.locations import seedrun_home
from seedrun.sweeps.sweep_file import Sweep


@dataclass
class Plan:
    sweep: Sweep
    states: dict[str, str] = field(default_factory=dict)  # hash -> recorded state ("new" if none)
    stale: list[str] = field(default_factory=list)  # hashes an earlier version of the sweep named

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
        todo = ["new", PENDING] + (list(RETRYABLE) if retry_failed else [])
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
        members = session.execute(select(Run.hash, Run.stage, Run.depends_on).join(SweepRun).join(SweepRow)
                                  .where(SweepRow.name == sweep.name).order_by(SweepRun.position)).all()
    named = set(hashes)
    stale = [run_hash for run_hash, stage, depends_on in members
             if run_hash not in named and not (stage == "eval" and depends_on in named)]
    return Plan(sweep, states, stale)


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
                {"hash": spec.hash, "stage": spec.stage, "run_dir": str(run_dir_for(spec.hash)),  # pending: the default
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
        if plan.stale:
            _drop_stale(session, row.id, plan.stale)
        note = _sweep_note(session, row)
    write_sweep_note(note)


def _sweep_note(session, row: SweepRow) -> dict:
    members = session.execute(select(Run.hash, SweepRun.position, SweepRun.axes).join(SweepRun)
                              .where(SweepRun.sweep_id == row.id).order_by(SweepRun.position)).all()
    return {"name": row.name, "ablation": row.ablation, "path": row.path, "axes": row.axes,
            "runs": [[run_hash, position, axes] for run_hash, position, axes in members]}


def write_sweep_note(note: dict) -> None:
    """$SEEDRUN_HOME/sweeps/<name>.json: the sweep and its runs, for `seedrun sync` to rebuild a lost
    database's sweeps from (seedrun.store.sync)."""
    import hashlib

    from seedrun.atomic import atomic_write_json

    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in note["name"])[:80]
    if safe != note["name"]:
        safe += "-" + hashlib.sha256(note["name"].encode()).hexdigest()[:8]
    atomic_write_json(seedrun_home() / "sweeps" / f"{safe}.json", note)


def _drop_stale(session, sweep_id: int, hashes: list[str]) -> None:
    """Drop runs the sweep no longer names from it; delete those that never ran and that no sweep names."""
    from sqlalchemy import delete, func

    for start in range(0, len(hashes), 500):
        ids = list(session.scalars(select(Run.id).where(Run.hash.in_(hashes[start:start + 500]))))
        session.execute(delete(SweepRun).where(SweepRun.sweep_id == sweep_id, SweepRun.run_id.in_(ids)))
        still_named = select(func.count()).select_from(SweepRun).where(SweepRun.run_id == Run.id).scalar_subquery()
        session.execute(delete(Run).where(Run.id.in_(ids), Run.state == PENDING, Run.attempts == 0, still_named == 0)
                        .execution_options(synchronize_session=False))


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
                run = Run(hash=spec.hash, stage=spec.stage, run_dir=str(run_dir_for(spec.hash)),
                          config=spec.config, depends_on=spec.depends_on, attempts=0, epoch=0, provenance={})
                session.add(run)
                session.flush()
            if run.id not in members:
                session.add(SweepRun(sweep_id=row.id, run_id=run.id, position=position, axes=spec.axes))
                position += 1
        session.flush()
        note = _sweep_note(session, row)
    write_sweep_note(note)
