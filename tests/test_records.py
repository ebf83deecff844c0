"""Run folders as the record of truth (seedrun.store.folders, catchup, sync; seedrun.job.recording):
the job writes its folder first; a SQLite file is written only by jobs on its own host; `sync` rebuilds
a lost database and merges two homes; a database locked for longer than its busy window never fails a
run, and its record catches up."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sqlite3
import threading
import time
from pathlib import Path

from seedrun.job import run_job as jobmod
from seedrun.store.catchup import catch_up
from seedrun.store.engine import session_scope
from seedrun.store.folders import jobs_write_db, read_record
from seedrun.store.records import load_records
from seedrun.store.schema import Run
from seedrun.store.sync import sync


class QuickJob(jobmod.RunJob):
    """Records like a real job, trains nothing: `epochs` epochs of `epoch_s` seconds each."""

    epochs, epoch_s = 2, 0.0
    during = None

    def _train(self, stage, config, run_dir, hooks, teacher_dir):
        for epoch in range(1, self.epochs + 1):
            if epoch == 1 and self.during is not None:
                self.during()
            time.sleep(self.epoch_s)
            hooks.epoch_end(epoch, {"loss": 1.0 / epoch})
        return {"knn_top1": 50.0 + config["seed"], "knn_top5": 90.0}


def _config(seed: int, width: int = 8) -> dict:
    return {"stage": "distill", "seed": seed, "student": {"arch": "resnet18", "width": width},
            "distill": {"strategy": "seed", "tau_teacher": 0.01, "epochs": 2}, "data": {"name": "tiny"}}


def _home(tmp_path: Path, name: str, monkeypatch, host: str = "login") -> tuple[str, Path]:
    home = tmp_path / name
    monkeypatch.setenv("SEEDRUN_HOME", str(home))
    monkeypatch.setenv("SEEDRUN_HOSTNAME", host)
    return f"sqlite:///{home / 'seedrun.db'}", home


def _record_runs(url: str, home: Path, configs: list[dict]) -> list[str]:
    from seedrun.sweeps.spec import config_hash

    hashes = [config_hash(config) for config in configs]
    with session_scope(url) as session:
        session.add_all(Run(hash=h, stage="distill", run_dir=str(home / "runs" / h[:16]), config=config,
                            provenance={}, state="submitted") for h, config in zip(hashes, configs))
    return hashes


def _rows(url: str) -> dict[str, tuple]:
    return {r.hash: (r.state, r.epoch, dict(r.metrics), r.finished_at) for r in load_records(url)}


def _metric_rows(url: str) -> list[tuple]:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        return sorted(db.execute("select r.hash, m.name, m.value, m.epoch from metrics m join runs r on r.id = m.run_id"))


def test_the_job_writes_its_folder_first_and_sync_rebuilds_a_lost_database(tmp_path, monkeypatch):
    url, home = _home(tmp_path, "home", monkeypatch)
    hashes = _record_runs(url, home, [_config(seed) for seed in (0, 1, 2)])
    for h in hashes:
        assert QuickJob(h, url)() == {"knn_top1": 50.0 + hashes.index(h), "knn_top5": 90.0}
        record = read_record(str(home / "runs" / h[:16]))
        assert record["state"] == "completed" and record["epoch"] == 2 and record["results"]["knn_top5"] == 90.0
    before, metrics = _rows(url), _metric_rows(url)
    assert {state for state, *_ in before.values()} == {"completed"} and len(metrics) == 3 * (2 + 2)
    for path in home.glob("seedrun.db*"):
        path.unlink()
    _, report = sync(url, [str(home / "runs")])
    assert "3 added" in report[-1]
    assert _rows(url) == before and _metric_rows(url) == metrics
    _, report = sync(url, [str(home / "runs")])  # idempotent
    assert "0 added, 0 updated from their folders, 3 unchanged" in report[-1]
    assert _metric_rows(url) == metrics


def _job_on_another_host(url: str, home: str, run_hash: str) -> None:
    os.environ.update(SEEDRUN_HOME=home, SEEDRUN_HOSTNAME="node7")
    QuickJob(run_hash, url)()


def _digest(home: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(home.glob("seedrun.db*"))}


def test_a_job_on_another_host_never_writes_the_sqlite_file_and_status_brings_its_record_in(tmp_path, monkeypatch):
    url, home = _home(tmp_path, "home", monkeypatch, host="login")
    (run_hash,) = _record_runs(url, home, [_config(0)])
    assert jobs_write_db(url)[0]
    # What the Slurm launcher leaves in the folder for a job that may not read the database.
    from seedrun.store.folders import prepare_folders

    prepare_folders(url, [run_hash])
    untouched = _digest(home)
    process = multiprocessing.get_context("spawn").Process(target=_job_on_another_host, args=(url, str(home), run_hash))
    process.start()
    process.join(timeout=120)
    assert process.exitcode == 0
    assert _digest(home) == untouched  # not one byte of the database (or its WAL) changed
    assert read_record(str(home / "runs" / run_hash[:16]))["state"] == "completed"
    assert _rows(url)[run_hash][0] == "submitted"
    applied = catch_up(url)  # what `seedrun status` and `table` do first, on the database's host
    assert applied.updated == 1
    state, epoch, metrics, _ = _rows(url)[run_hash]
    assert (state, epoch, metrics["knn_top1"]) == ("completed", 2, 50.0)


def test_sync_merges_two_homes_and_the_newer_record_wins(tmp_path, monkeypatch):
    url_a, home_a = _home(tmp_path, "a", monkeypatch)
    (a0, shared) = _record_runs(url_a, home_a, [_config(0), _config(5)])
    for h in (a0, shared):
        QuickJob(h, url_a)()
    url_b, home_b = _home(tmp_path, "b", monkeypatch)
    (b0, shared_b) = _record_runs(url_b, home_b, [_config(1), _config(5)])
    assert shared_b == shared
    QuickJob(b0, url_b)()
    from seedrun.store.folders import prepare_folders

    prepare_folders(url_b, [shared])  # b submitted it too; it never ran there
    target = f"sqlite:///{tmp_path / 'merged.db'}"
    _, report = sync(target, [str(home_a / "runs"), str(home_b / "runs")])
    rows = _rows(target)
    assert set(rows) == {a0, b0, shared} and rows[shared][0] == "completed" and rows[b0][0] == "completed"
    assert any("folder says submitted" in line and shared[:12] in line for line in report)  # b's copy never ran
    assert "2 added" not in report[-1] and "3 added" in report[-1]
    _, again = sync(target, [str(home_a / "runs"), str(home_b / "runs")])
    assert "0 added, 0 updated" in again[-1]


def test_a_database_locked_past_its_busy_window_never_fails_a_run(tmp_path, monkeypatch):
    url, home = _home(tmp_path, "home", monkeypatch)
    monkeypatch.setenv("SEEDRUN_DB_BUSY_S", "0.3")  # each statement waits 0.3 s for the lock
    monkeypatch.setenv("SEEDRUN_DB_WAIT_S", "1.0")  # a job's write, retried, gives up after 1 s...
    (run_hash,) = _record_runs(url, home, [_config(0)])
    hold_s = 4.0  # ...and the lock is held four times as long, while the run trains and finishes
    locked, released = threading.Event(), threading.Event()

    def hold_lock():
        db = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(hold_s)
        db.execute("ROLLBACK")
        db.close()
        released.set()

    holder = threading.Thread(target=hold_lock)
    job = QuickJob(run_hash, url)
    job.epochs, job.epoch_s = 3, 0.5
    job.during = lambda: (holder.start(), locked.wait(10))
    started = time.monotonic()
    assert job()["knn_top1"] == 50.0  # the run completed, the lock notwithstanding
    assert time.monotonic() - started < hold_s + 3
    holder.join()
    assert read_record(str(home / "runs" / run_hash[:16]))["state"] == "completed"
    assert "database not written" in (home / "runs" / run_hash[:16] / "log.txt").read_text()
    catch_up(url)
    state, epoch, metrics, finished = _rows(url)[run_hash]
    assert (state, epoch, metrics, finished is not None) == ("completed", 3, {"loss": 1 / 3, "knn_top1": 50.0,
                                                                              "knn_top5": 90.0}, True)
    assert len(_metric_rows(url)) == 3 + 2  # every epoch's loss and both results


def test_folder_records_of_old_releases_and_bad_folders_are_reported_not_fatal(tmp_path, monkeypatch):
    url, home = _home(tmp_path, "home", monkeypatch)
    old = home / "runs" / "0123456789abcdef"
    old.mkdir(parents=True)
    (old / "config.json").write_text(json.dumps(_config(0)))
    _, report = sync(url, [str(home / "runs")])
    assert any("no run.json" in line for line in report) and "0 added" in report[-1]


def test_status_brings_newer_folders_in_with_plain_sql_without_sqlalchemy(tmp_path, monkeypatch):
    """The catch-up `status` and `table` do first writes SQLite with plain SQL through the state rules
    (seedrun.store.states.transition_sql), never importing SQLAlchemy (a quarter of a second or more)."""
    import subprocess
    import sys

    url, home = _home(tmp_path, "home", monkeypatch, host="login")
    (run_hash, waiting) = _record_runs(url, home, [_config(0), _config(1)])
    from seedrun.store.folders import prepare_folders

    prepare_folders(url, [run_hash, waiting])
    process = multiprocessing.get_context("spawn").Process(target=_job_on_another_host, args=(url, str(home), run_hash))
    process.start()
    process.join(timeout=120)
    assert process.exitcode == 0 and _rows(url)[run_hash][0] == "submitted"
    probe = ("import json, sys; from seedrun.cli import main; rc = main(['status', '--json', '--no-reconcile']); "
             "print(json.dumps({'rc': rc, 'sqlalchemy': 'sqlalchemy' in sys.modules, 'torch': 'torch' in sys.modules}), "
             "file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "SEEDRUN_DB": url})
    seen = json.loads(result.stderr.strip().splitlines()[-1])
    assert seen == {"rc": 0, "sqlalchemy": False, "torch": False}, result.stderr
    runs = {run["hash"]: run for run in json.loads(result.stdout)["runs"]}
    assert (runs[run_hash]["state"], runs[run_hash]["metrics"]["knn_top1"]) == ("completed", 50.0)
    assert runs[waiting]["state"] == "submitted"
    state, epoch, metrics, finished = _rows(url)[run_hash]
    assert (state, epoch, finished is not None) == ("completed", 2, True)
    assert [row[1:] for row in _metric_rows(url)] == sorted([("loss", 1.0, 1), ("loss", 0.5, 2),
                                                             ("knn_top1", 50.0, 2), ("knn_top5", 90.0, 2)])
    import datetime as dt

    from sqlalchemy import select

    with session_scope(url) as session:  # stored as SQLAlchemy stores them: the ORM reads them back
        run = session.scalars(select(Run).where(Run.hash == run_hash)).one()
        assert isinstance(run.finished_at, dt.datetime) and isinstance(run.started_at, dt.datetime)
        assert isinstance(run.provenance, dict) and run.summary["knn_top1"] == 50.0 and run.updated_at > 0
