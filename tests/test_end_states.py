"""Every way a Slurm job ends maps to a run state and a failure class (seedrun.launchers.end_states), and
`seedrun status` moves the run there; a preempted run goes back to the queue within its budget.

Slurm's answers are given (query_states replaced); scontrol is the fake of test_submit_unit, which
records `scontrol requeue` calls. The real preemption, on the test cluster: tests/test_slurm_preempt.py.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from test_submit_unit import SLURM_LAUNCHER, db_url_for, fake_slurm, specs, synthetic_plan

__all__ = ["fake_slurm"]  # the fixture, shared with test_submit_unit

EXPECTED = {  # Slurm's end -> (run state, failure class)
    "COMPLETED": ("lost", "no_result"), "FAILED": ("failed", "exception"), "TIMEOUT": ("failed", "timeout"),
    "NODE_FAIL": ("failed", "node_fail"), "BOOT_FAIL": ("failed", "node_fail"),
    "OUT_OF_MEMORY": ("failed", "out_of_memory"), "CANCELLED": ("cancelled", "cancelled"),
    "DEADLINE": ("failed", "deadline"), "vanished": ("lost", "vanished"),
    "PREEMPTED": ("submitted", None),  # requeued: within its budget
}


def _answer(monkeypatch, states: dict):
    from seedrun.launchers import cluster

    monkeypatch.setattr(cluster, "query_states", lambda ids: states)


def _rows(home) -> dict[str, tuple]:
    with sqlite3.connect(home / "seedrun.db") as db:
        return {job: (state, reason, json.loads(prov or "{}")) for job, state, reason, prov in
                db.execute("select coalesce(job_id, hash), state, failure_reason, provenance from runs")}


def test_every_slurm_end_state_has_a_run_state_and_a_failure_class(home, monkeypatch, fake_slurm):
    from seedrun.launchers.cluster import SlurmState, normalize_state
    from seedrun.launchers.reconcile import reconcile

    db_url = db_url_for(home)
    ends = sorted(EXPECTED)
    runs = specs(len(ends))
    synthetic_plan("ends", runs, db_url)
    states = {}
    with sqlite3.connect(home / "seedrun.db") as db:
        for i, (run, end) in enumerate(zip(runs, ends)):
            job = f"9_{i}"
            db.execute("update runs set state = 'running', job_id = ? where hash = ?", (job, run.hash))
            states[job] = (SlurmState(job, normalize_state("UNKNOWN"), source="missing") if end == "vanished"
                           else SlurmState(job, normalize_state(end), raw=end, source="squeue"))
    _answer(monkeypatch, states)
    assert reconcile(db_url) == len(ends)
    rows = _rows(home)
    got = {end: rows[f"9_{i}"][:2] for i, end in enumerate(ends)}
    assert got == EXPECTED
    preempted = f"9_{ends.index('PREEMPTED')}"
    assert (fake_slurm / "scontrol.calls").read_text().split() == ["requeue", preempted]


@pytest.mark.parametrize("limit, before, state, reason", [
    (-1, 5, "submitted", None),           # unlimited: requeued
    (2, 1, "submitted", None),            # the 2nd of 2: requeued
    (2, 2, "failed", "preempted"),        # a 3rd: the budget is spent
    (0, 0, "failed", "preempted"),
])
def test_a_preempted_run_is_requeued_within_its_budget_then_fails(home, monkeypatch, fake_slurm, limit, before, state, reason):
    from seedrun.launchers.cluster import SlurmState, State
    from seedrun.launchers.reconcile import reconcile

    db_url = db_url_for(home)
    (run,) = specs(1, launcher={**SLURM_LAUNCHER, "max_preemptions": limit})
    synthetic_plan("preempt", [run], db_url)
    with sqlite3.connect(home / "seedrun.db") as db:
        db.execute("update runs set state = 'running', job_id = '5', provenance = ? where hash = ?",
                   (json.dumps({"preemptions": before, "attempt_open": True}), run.hash))
    _answer(monkeypatch, {"5": SlurmState("5", State.PREEMPTED, raw="PREEMPTED", source="squeue")})
    assert reconcile(db_url) == 1
    got_state, got_reason, prov = _rows(home)["5"]
    assert (got_state, got_reason) == (state, reason)
    calls = (fake_slurm / "scontrol.calls").read_text().split() if (fake_slurm / "scontrol.calls").exists() else []
    if state == "submitted":
        assert calls == ["requeue", "5"]
        assert prov["attempt_open"] and prov["preemptions"] == before  # the job counts it when it starts
    else:
        assert calls == [] and prov["preemptions"] == before + 1 and not prov["attempt_open"]


def test_a_preempted_job_slurm_no_longer_holds_leaves_its_run_pending(home, monkeypatch, fake_slurm):
    from seedrun.launchers.cluster import SlurmState, State
    from seedrun.launchers.reconcile import reconcile

    (fake_slurm.parent / "fake-bin" / "scontrol").write_text(
        '#!/bin/bash\necho "scontrol: error: Invalid job id specified" >&2; exit 1\n')
    db_url = db_url_for(home)
    (run,) = specs(1)
    synthetic_plan("gone", [run], db_url)
    with sqlite3.connect(home / "seedrun.db") as db:
        db.execute("update runs set state = 'running', job_id = '6' where hash = ?", (run.hash,))
    _answer(monkeypatch, {"6": SlurmState("6", State.PREEMPTED, raw="PREEMPTED", source="sacct")})
    reconcile(db_url)
    state, _, _ = _rows(home)[run.hash]
    assert state == "pending"  # `seedrun sweep` submits it again; never "running" forever
