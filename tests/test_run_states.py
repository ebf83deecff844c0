"""The one owner of run state (seedrun.store.states), on real SQLite files: every transition of the
table, two processes racing for one run, a job that ends after its run was cancelled or marked lost,
and the read path's SQL against the schema's column names."""

from __future__ import annotations

import ast
import contextlib
import json
import multiprocessing
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from seedrun.job import run_job as jobmod
from seedrun.job.failures import AttemptOver, Stopped
from seedrun.store.engine import engine_for, session_scope
from seedrun.store.schema import Run, Sweep, SweepRun, utcnow
from seedrun.store.states import (BLOCKED, CANCELLED, COMPLETED, FAILED, IN_FLIGHT, LOST, PENDING, RUNNING, STARTABLE,
                                  STATES, SUBMITTABLE, SUBMITTED, TRANSITIONS, folder_moves, moves, sources,
                                  transition)

ROOT = Path(__file__).resolve().parent.parent


def _database(tmp_path: Path, runs: int = 1, state: str = "pending") -> tuple[str, list[int]]:
    url = f"sqlite:///{tmp_path / 'seedrun.db'}"
    with session_scope(url) as session:
        rows = [Run(hash=f"{i:064x}", stage="distill", run_dir=str(tmp_path / f"run{i}"), config={"i": i},
                    provenance={}, state=state, job_id="9_1") for i in range(runs)]
        session.add_all(rows)
        session.flush()
        ids = [row.id for row in rows]
    return url, ids


def _row(url: str, run_id: int) -> dict:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        db.row_factory = sqlite3.Row
        return dict(db.execute("select * from runs where id = ?", (run_id,)).fetchone())


def _set_state(url: str, run_id: int, state: str) -> None:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        db.execute("update runs set state = ?, error = 'before' where id = ?", (state, run_id))


# ---- the table ----------------------------------------------------------------------------------

def test_every_pair_of_states_moves_exactly_when_the_table_allows_it(tmp_path):
    url, (run_id,) = _database(tmp_path)
    run_hash = _row(url, run_id)["hash"]
    engine = engine_for(url)
    for i, (source, to) in enumerate((source, to) for source in STATES for to in STATES):
        _set_state(url, run_id, source)
        allowed = to in TRANSITIONS[source]
        # Sessions and connections, ids and hashes: every way a writer calls it.
        if i % 2:
            with session_scope(url) as session:
                won = transition(session, run_hash, to, error="after")
        else:
            with engine.begin() as connection:
                won = transition(connection, run_id, to, error="after")
        row = _row(url, run_id)
        assert won is allowed, f"{source} -> {to}"
        assert (row["state"], row["error"]) == ((to, "after") if allowed else (source, "before")), f"{source} -> {to}"


def test_the_table_keeps_finished_runs_finished():
    assert TRANSITIONS[COMPLETED] == frozenset()
    assert {source for source in STATES if COMPLETED in TRANSITIONS[source]} == {RUNNING}
    assert set(sources(RUNNING)) == set(STARTABLE) == set(STATES) - {CANCELLED, COMPLETED}
    assert all({SUBMITTED, BLOCKED} <= TRANSITIONS[state] for state in SUBMITTABLE)  # what the launchers take over
    assert not {RUNNING, SUBMITTED} & set(SUBMITTABLE)  # a run some job holds is never submitted again
    assert set(TRANSITIONS) == set(STATES) and all(targets <= set(STATES) for targets in TRANSITIONS.values())


def test_a_folder_record_is_taken_in_only_when_its_version_is_newer_and_the_table_allows_it():
    assert folder_moves(SUBMITTED, (1, 0), RUNNING, (1, 1)) == [RUNNING]
    assert folder_moves(SUBMITTED, (1, 0), COMPLETED, (1, 5)) == [RUNNING, COMPLETED]  # started and ended between looks
    assert folder_moves(RUNNING, (1, 3), RUNNING, (1, 3)) is None  # not newer
    assert folder_moves(RUNNING, (2, 0), COMPLETED, (1, 9)) is None  # an older attempt, whatever its counter
    assert folder_moves(RUNNING, (1, 3), RUNNING, (1, 4)) == []  # an epoch: values, no change of state
    assert folder_moves(COMPLETED, (1, 4), RUNNING, (2, 1)) is None  # a completed run never changes again
    assert folder_moves(LOST, (1, 2), COMPLETED, (1, 3)) == [RUNNING, COMPLETED]  # status guessed wrong
    assert folder_moves(FAILED, (1, 2), RUNNING, (1, 3)) == [RUNNING]
    assert folder_moves(CANCELLED, (1, 2), RUNNING, (1, 3)) is None  # the cancel ended attempt 1
    assert folder_moves(CANCELLED, (1, 2), SUBMITTED, (1, 3)) is None
    assert folder_moves(CANCELLED, (1, 2), COMPLETED, (1, 3)) == [SUBMITTED, RUNNING, COMPLETED]  # its result stands
    assert folder_moves(CANCELLED, (1, 2), RUNNING, (2, 1)) == [SUBMITTED, RUNNING]  # a retry's attempt
    for start in STATES:  # every way it finds is allowed step by step by the one table
        for to in STATES:
            path = moves(start, to)
            if path:
                assert all(b in TRANSITIONS[a] for a, b in zip([start] + path, path)), (start, to, path)
    assert moves(PENDING, BLOCKED) == [BLOCKED] and moves(COMPLETED, RUNNING) is None


def test_expect_and_where_narrow_a_transition_and_a_loser_writes_nothing(tmp_path):
    url, (run_id, other) = _database(tmp_path, runs=2, state=RUNNING)
    with session_scope(url) as session:
        assert not transition(session, run_id, LOST, expect=IN_FLIGHT, where={"job_id": "9_2"}, error="gone")
        assert not transition(session, run_id, CANCELLED, expect=("pending",), error="gone")
    assert (_row(url, run_id)["state"], _row(url, run_id)["error"]) == (RUNNING, None)
    with session_scope(url) as session:
        assert transition(session, run_id, LOST, expect=IN_FLIGHT, where={"job_id": "9_1"}, error="gone")
        assert [transition(session, i, CANCELLED, error="cancelled") for i in (run_id, other)] == [False, True]
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:  # the same function over a driver's own connection
        assert not transition(db, other, RUNNING) and transition(db, run_id, SUBMITTED, error="again")
    assert _row(url, run_id)["state"] == SUBMITTED
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        db.execute("update runs set state = 'lost', error = 'gone' where id = ?", (run_id,))
    assert [(_row(url, i)["state"], _row(url, i)["error"]) for i in (run_id, other)] == [(LOST, "gone"),
                                                                                       (CANCELLED, "cancelled")]
    with pytest.raises(ValueError):
        transition(None, run_id, "finished")
    with pytest.raises(ValueError):  # no completed run may start again: a caller asking for it is wrong
        sources(RUNNING, expect=(COMPLETED, CANCELLED))


# ---- two writers, two processes -------------------------------------------------------------------

def _racer(url: str, run_ids: list[int], to: str, barrier, results) -> None:
    """What `seedrun status` (to lost) or the job (to completed) does, once per run, after the barrier."""
    engine = engine_for(url, create=False)
    won = []
    for run_id in run_ids:
        barrier.wait(timeout=60)
        with engine.begin() as connection:
            if to == LOST:
                won.append(transition(connection, run_id, LOST, expect=IN_FLIGHT, where={"job_id": "9_1"}, error="gone"))
            else:
                won.append(transition(connection, run_id, COMPLETED, expect=(RUNNING,), finished_at=utcnow()))
    results.put((to, won))


def test_of_two_processes_racing_for_a_running_run_exactly_one_wins(tmp_path):
    url, run_ids = _database(tmp_path, runs=40, state=RUNNING)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    racers = [context.Process(target=_racer, args=(url, run_ids, to, barrier, results)) for to in (LOST, COMPLETED)]
    for racer in racers:
        racer.start()
    outcomes = dict(results.get(timeout=120) for _ in racers)
    for racer in racers:
        racer.join(timeout=60)
        assert racer.exitcode == 0
    for i, run_id in enumerate(run_ids):
        lost, completed = outcomes[LOST][i], outcomes[COMPLETED][i]
        assert lost != completed, f"run {run_id}: {'both' if lost else 'neither'} won"
        assert _row(url, run_id)["state"] == (LOST if lost else COMPLETED)


# ---- the job, when another writer got there first ------------------------------------------------

class LateJob(jobmod.RunJob):
    """Trains three steps without torch; while it trains, `interfere` ends the run from outside."""

    interfere = None
    ending = "finish"

    def _train(self, stage, config, run_dir, hooks, teacher_dir):
        self.interfere(self)
        for step in range(1, 4):
            if self.ending == "failure":
                raise RuntimeError("flaky file system")
            if step == 2 and self.ending in ("sigterm", "usr2"):
                signal.raise_signal(signal.SIGTERM if self.ending == "sigterm" else submitit_usr2())
            if hooks.should_stop():
                raise Stopped(f"stopped at step {step}")
        hooks.epoch_end(1, {"loss": 1.0})
        return {"knn_top1": 50.0}


def submitit_usr2() -> int:
    return jobmod.submitit.JobEnvironment._usr_sig()


def _cancel(job, monkeypatch, killed) -> None:
    from seedrun.launchers import control

    monkeypatch.setattr(control.os, "kill", lambda pid, signum: killed.append((pid, signum)))
    assert control.cancel(job.url, job.run_hash[:12]) == 0


def _status_finds_it_gone(job, monkeypatch, killed) -> None:
    from seedrun.launchers.reconcile import reconcile

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    job._record["job_id"] = f"local:{gone.pid}"  # what a local job's folder says of it
    job._save()
    with sqlite3.connect(job.url.removeprefix("sqlite:///")) as db:
        db.execute("update runs set job_id = ?, provenance = ? where hash = ?",
                   (f"local:{gone.pid}", json.dumps({"host": "here"}), job.run_hash))
    assert reconcile(job.url) == 1


class FakeSubmititHandler:
    def __init__(self):
        self.calls = []

    def has_timed_out(self) -> bool:
        return False

    def checkpoint_and_try_requeue(self, signum, frame):
        self.calls.append(signum)
        raise SystemExit(-1)


#: what the job's folder says at its end, and so what a run the job was not told about becomes
FOLDER_AT_END = {"finish": COMPLETED, "failure": SUBMITTED, "sigterm": "pending", "usr2": SUBMITTED}


@pytest.mark.parametrize("ending", ["finish", "failure", "sigterm", "usr2"])
@pytest.mark.parametrize("interfere", [_cancel, _status_finds_it_gone])
def test_a_job_that_ends_after_its_run_was_cancelled_or_called_lost(tmp_path, monkeypatch, interfere, ending):
    """A job never reads the database: a cancel reaches it as a signal (SIGINT, scancel), not as a state.
    A cancel ends its attempt: what the job writes after it does not bring the run back in flight, but a
    result it finished stands. `lost` was status's guess: the job's own record replaces it."""
    from conftest import open_attempts

    from seedrun.store.catchup import catch_up

    monkeypatch.setenv("SEEDRUN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SEEDRUN_HOSTNAME", "here")
    monkeypatch.setattr(jobmod, "SIGTERM_WAIT_S", 0.3)
    url, (run_id,) = _database(tmp_path)
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:  # retries and requeues allowed, were the run its own
        db.execute("update runs set config = ? where id = ?", (json.dumps({"launcher": {"max_failures": 5}}), run_id))
    if ending == "failure":  # under submitit: a failure would be retried
        monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
        monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "4242")
    usr2, previous = submitit_usr2(), signal.getsignal(submitit_usr2())
    fake = FakeSubmititHandler()
    signal.signal(usr2, fake.checkpoint_and_try_requeue)
    killed: list = []
    run_hash = _row(url, run_id)["hash"]
    attempt = open_attempts(url, [run_hash])[run_hash]
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        db.execute("update runs set job_id = 'local:424242' where id = ?", (run_id,))  # what run_local notes
    job = LateJob(run_hash, attempt.run_dir, None, attempt.number)
    job.url = url
    job.interfere, job.ending = (lambda job: interfere(job, monkeypatch, killed)), ending
    raises = {"failure": SystemExit, "sigterm": AttemptOver, "usr2": SystemExit}.get(ending)
    try:
        with pytest.raises(raises) if raises else contextlib.nullcontext():
            job()
    finally:
        signal.signal(usr2, previous)
    assert json.loads((Path(attempt.run_dir) / "run.json").read_text())["state"] == FOLDER_AT_END[ending]
    catch_up(url, [run_hash], quiet=True)
    row = _row(url, run_id)
    cancelled = interfere is _cancel
    if cancelled and ending != "finish":
        assert (row["state"], row["error"]) == (CANCELLED, "cancelled with `seedrun cancel`")
        assert killed and killed[0][1] == signal.SIGINT  # what cancel does to a local job
    else:
        assert row["state"] == FOLDER_AT_END[ending]
    if ending == "finish":
        assert json.loads(row["summary"])["knn_top1"] == 50.0


def test_a_job_does_not_start_a_run_whose_folder_holds_another_attempt(tmp_path, monkeypatch):
    """The attempt's guard: a retry opened the next attempt between this job's submission and its start."""
    from conftest import open_attempts

    monkeypatch.setenv("SEEDRUN_HOME", str(tmp_path / "home"))
    url, (run_id,) = _database(tmp_path)
    run_hash = _row(url, run_id)["hash"]
    first = open_attempts(url, [run_hash])[run_hash]
    _set_state(url, run_id, CANCELLED)
    second = open_attempts(url, [run_hash])[run_hash]
    assert (first.number, second.number) == (1, 2)
    job = LateJob(run_hash, first.run_dir, None, first.number)
    job.interfere = lambda job: pytest.fail("trained another attempt's run")
    before = (Path(first.run_dir) / "run.json").read_bytes()
    assert job() == {}
    assert (Path(first.run_dir) / "run.json").read_bytes() == before


# ---- the read path's SQL against the schema -----------------------------------------------------

READ_PATH = ["seedrun/store/records.py", "seedrun/store/groups.py", "seedrun/views/status.py"]
ALIASES = {"r": Run.__table__, "r2": Run.__table__, "sr": SweepRun.__table__, "s": Sweep.__table__}


def _sql_strings(path: Path) -> list[str]:
    """The string constants of a module (f-string parts included), docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def _columns_used(text: str) -> set[tuple[str, str]]:
    """(table, column) for each `alias.column`, and each column of an unaliased `SELECT ... FROM table`."""
    used = {(ALIASES[alias].name, column) for alias, column in re.findall(r"\b(r2|r|sr|s)\.([A-Za-z_]\w*)", text)}
    unaliased = r"SELECT\s+([\w\s,]+?)\s+FROM\s+(runs|sweep_runs|sweeps)\b(?!\s+(?:r2|r|sr|s)\b)(?:\s+WHERE\s+(\w+))?"
    for columns, table, where in re.findall(unaliased, text):
        used |= {(table, name.strip()) for name in columns.split(",") + ([where] if where else [])}
    return used


def test_the_read_paths_sql_names_only_columns_the_schema_has():
    from seedrun.store.tables import SQLITE_ONLY_COLUMNS

    tables = {table.name: set(table.columns.keys()) | SQLITE_ONLY_COLUMNS.get(table.name, set())
              for table in ALIASES.values()}
    assert _columns_used("SELECT r.nope, sr.axes FROM runs r") == {("runs", "nope"), ("sweep_runs", "axes")}
    assert _columns_used("SELECT id, gone FROM runs WHERE state IN (SELECT run FROM sweep_runs)") == {
        ("runs", "id"), ("runs", "gone"), ("runs", "state"), ("sweep_runs", "run")}
    used = set()
    for name in READ_PATH:
        for text in _sql_strings(ROOT / name):
            used |= _columns_used(text)
    unknown = sorted(f"{table}.{column}" for table, column in used if column not in tables[table])
    assert unknown == []
    # What the read path needs of runs is found at all (the parsing above did not silently miss it).
    assert {"id", "hash", "stage", "state", "epoch", "settings", "summary", "job_id", "depends_on"} <= {
        column for table, column in used if table == "runs"}
