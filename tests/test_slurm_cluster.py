"""seedrun.launchers.cluster and submitit against the real one-node test cluster.

Needs root on Linux; the ``slurm_cluster`` fixture (tests/slurm_fixtures.py)
starts the cluster, installing Slurm on first use. Run with the project venv's
python (``.venv/bin/python -m pytest``): submitit jobs run ``sys.executable``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from seedrun.launchers import cluster as slurm
from seedrun.launchers.cluster import State

pytestmark = pytest.mark.slurm

# The job unpickles the functions below in a fresh interpreter where this test
# module is not importable (tests/ is not on its path): ship them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def where_am_i(x: int) -> tuple[int, str]:
    import os
    import sys
    return x * x, f"{sys.executable}|{os.environ.get('SLURM_JOB_ID', '')}"


def square(x: int) -> int:
    return x * x


def sleep_long(seconds: float) -> str:
    import time
    time.sleep(seconds)
    return "woke up"


def _wait_for(poll: Callable[[], Any], ok: Callable[[Any], bool], timeout_s: float,
              every_s: float = 0.5) -> Any:
    """Poll until ok(value); return the last value (the assert that follows shows it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = poll()
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(every_s)


class CountingRun:
    """Wraps slurm._run to count subprocesses per query."""

    def __init__(self) -> None:
        self.real = slurm._run
        self.calls: list[list[str]] = []

    def __call__(self, args: Sequence[str], timeout: float = slurm.COMMAND_TIMEOUT_S) -> Any:
        self.calls.append(list(args))
        return self.real(args, timeout)


def test_submitit_job_runs_with_project_python(slurm_cluster: Any, tmp_path: Path) -> None:
    ex = slurm_cluster.executor(tmp_path / "%j", timeout_min=5)
    job = ex.submit(where_am_i, 7)
    value, info = job.result()                 # submitit polls sacct until done
    assert value == 49
    python, job_id = info.split("|")
    assert python == sys.executable            # the venv python, so the job can import seedrun
    assert job_id == job.job_id
    st = _wait_for(lambda: slurm.query_states([job.job_id]),
                   lambda s: s[job.job_id].state is State.COMPLETED, 30)
    assert st[job.job_id].state is State.COMPLETED and st[job.job_id].exit_code == 0


def test_array_states_in_one_query(slurm_cluster: Any, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    ex = slurm_cluster.executor(tmp_path / "%j", timeout_min=5)
    jobs = ex.map_array(square, [1, 2, 3, 4])
    assert len(jobs) == 4 and all("_" in j.job_id for j in jobs)
    assert [j.result() for j in jobs] == [1, 4, 9, 16]

    counter = CountingRun()
    monkeypatch.setattr(slurm, "_run", counter)
    ids = [j.job_id for j in jobs]
    per_query: list[int] = []

    def poll() -> dict[str, slurm.SlurmState]:
        before = len(counter.calls)
        states = slurm.query_states(ids)
        per_query.append(len(counter.calls) - before)
        return states

    # Accounting lags the results by a few seconds (it may even show the array
    # as one bare record): then the query adds ONE squeue call, never more.
    st = _wait_for(poll, lambda s: all(s[i].state is State.COMPLETED for i in ids), 30)
    assert {i: st[i].state for i in ids} == {i: State.COMPLETED for i in ids}
    assert all(st[i].exit_code == 0 and not st[i].missing for i in ids)
    # once accounting has caught up, one sacct call answers for all four
    _wait_for(poll, lambda s: per_query[-1] == 1, 30)
    assert per_query[-1] == 1, per_query
    assert max(per_query) <= 2, per_query
    assert all(c[0] in ("sacct", "squeue") for c in counter.calls)
    st = slurm.query_states(ids)
    assert all(st[i].state is State.COMPLETED and st[i].exit_code == 0 for i in ids)


def test_cancel_reports_cancelled(slurm_cluster: Any, tmp_path: Path) -> None:
    ex = slurm_cluster.executor(tmp_path / "%j", timeout_min=5)
    job = ex.submit(sleep_long, 300)
    jid = job.job_id
    st = _wait_for(lambda: slurm.query_states([jid]), lambda s: s[jid].state is State.RUNNING, 30)
    assert st[jid].state is State.RUNNING

    slurm.cancel([jid])
    t0 = time.monotonic()
    st = _wait_for(lambda: slurm.query_states([jid]),
                   lambda s: s[jid].state is State.CANCELLED, 30)
    assert st[jid].state is State.CANCELLED, st[jid]
    assert time.monotonic() - t0 < 30
    # with accounting, submitit sees the cancellation too instead of waiting
    # forever. (job.result() would now raise, but only after submitit's
    # 15 s wait for a result file that never comes: not worth the time here.)
    assert _wait_for(job.done, bool, 30)
    assert job.state.startswith("CANCELLED")


def test_unknown_job_is_missing(slurm_cluster: Any) -> None:
    st = slurm.query_states(["987654321", "987654321_3"])
    assert st["987654321"].missing and st["987654321_3"].missing


def test_cluster_limits(slurm_cluster: Any) -> None:
    assert slurm_cluster.partition == "debug"
    # start-slurm.sh keeps Slurm's default unless told otherwise
    assert slurm.max_array_size() == int(os.environ.get("SLURM_MAX_ARRAY_SIZE", "1001"))
