"""seedrun.store.plan on a real SQLite file: a sweep is what its file says now. Runs an edited file no longer
names leave the sweep; their results stay; rows that never ran and no sweep names go."""

from __future__ import annotations

from sqlalchemy import select

from conftest import TINY_SWEEP_BASE, write_sweep
from seedrun.store.plan import add_runs, read_plan, record
from seedrun.store.records import load_records
from seedrun.store.schema import Run, SweepRun
from seedrun.store.engine import session_scope
from seedrun.sweeps.sweep_file import evaluation_run, expand


def _sweep(tmp_path, taus: str):
    return expand(write_sweep(tmp_path / "tiny.yaml", f"name: tiny\n{TINY_SWEEP_BASE}grid:\n  distill.tau_teacher: {taus}\n"))


def _members(url: str) -> dict[str, str]:
    with session_scope(url) as session:
        rows = session.execute(select(Run.hash, Run.state).join(SweepRun)).all()
    return dict(rows)


def test_runs_an_edited_sweep_no_longer_names_leave_it(home, tmp_path):
    url = f"sqlite:///{home / 'seedrun.db'}"
    first = _sweep(tmp_path, "[0.1, 0.01]")
    record(read_plan(first, url), url)
    teacher, tau_01, tau_001 = (run.hash for run in first.runs)
    with session_scope(url) as session:  # 0.01 finished; 0.1 never ran
        run = session.scalars(select(Run).where(Run.hash == tau_001)).one()
        run.state, run.attempts, run.summary = "completed", 1, {"knn_top1": 50.0}
    add_runs(url, "tiny", [evaluation_run(first.runs[1], "knn")])  # what `seedrun eval` does for 0.1
    evaluation = evaluation_run(first.runs[1], "knn").hash

    second = _sweep(tmp_path, "[0.1, 0.05]")
    plan = read_plan(second, url)
    assert plan.stale == [tau_001]  # the evaluation of 0.1, still named, is not stale
    record(plan, url)
    members = _members(url)
    assert tau_001 not in members and {teacher, tau_01, evaluation, second.runs[2].hash} <= set(members)
    # its result stays: in the database, and in `seedrun status`, last and sweepless
    records = load_records(url)
    assert (records[-1].hash, records[-1].sweep, records[-1].metrics) == (tau_001, None, {"knn_top1": 50.0})
    assert [r.hash for r in load_records(url, sweep="tiny")].count(tau_001) == 0

    third = _sweep(tmp_path, "[0.05]")
    plan = read_plan(third, url)
    assert set(plan.stale) == {tau_01, evaluation}  # the evaluation goes with the run it evaluates
    record(plan, url)
    with session_scope(url) as session:
        left = set(session.scalars(select(Run.hash)))
    assert tau_01 not in left and evaluation not in left  # never ran, named by no sweep: deleted
    assert tau_001 in left  # completed: kept
    assert read_plan(third, url).stale == []
