"""One writer per store (seedrun.store.attempts, catchup, sync; seedrun.job.recording): a submission
opens an attempt in the run's folder, the job writes only that folder (never the database, nor
SQLAlchemy), and the commands bring folders in by version; `sync` rebuilds a lost database and merges
two homes; a locked database cannot touch a running job; a job that ends between status's catch-up and
its reconcile stays completed, and a retry never overwrites a completed folder."""

from __future__ import annotations

import hashlib
import os
import json
import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

from conftest import open_attempts

from seedrun.job import run_job as jobmod
from seedrun.store import folders
from seedrun.store.catchup import catch_up
from seedrun.store.engine import session_scope
from seedrun.store.folders import read_record, version_of
from seedrun.store.records import load_records
from seedrun.store.schema import Run
from seedrun.store.states import transition
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
                            provenance={}) for h, config in zip(hashes, configs))
    return hashes


def submit(url: str, hashes: list[str]) -> dict[str, QuickJob]:
    return {h: QuickJob(h, a.run_dir, None, a.number) for h, a in open_attempts(url, hashes).items()}


def _rows(url: str) -> dict[str, tuple]:
    return {r.hash: (r.state, r.epoch, dict(r.metrics), r.finished_at) for r in load_records(url)}


def _metric_rows(url: str) -> list[tuple]:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        return sorted(db.execute("select r.hash, m.name, m.value, m.epoch from metrics m join runs r on r.id = m.run_id"))


def _digest(home: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(home.glob("seedrun.db*"))}


def test_the_job_writes_only_its_folder_status_brings_it_in_and_sync_rebuilds_a_lost_database(tmp_path, monkeypatch):
    url, home = _home(tmp_path, "home", monkeypatch)
    hashes = _record_runs(url, home, [_config(seed) for seed in (0, 1, 2)])
    jobs = submit(url, hashes)
    untouched = _digest(home)
    for h in hashes:
        assert jobs[h]() == {"knn_top1": 50.0 + hashes.index(h), "knn_top5": 90.0}
        record = read_record(str(home / "runs" / h[:16]))
        assert record["state"] == "completed" and record["epoch"] == 2 and record["results"]["knn_top5"] == 90.0
        # submitted (1, 0) -> running (1, 1) -> epochs (1, 2), (1, 3) -> accounted and completed (1, 4)
        assert version_of(record) == (1, 4)
    assert _digest(home) == untouched  # not one byte of the database (or its WAL) changed
    assert {state for state, *_ in _rows(url).values()} == {"submitted"}
    assert catch_up(url).updated == 3  # what `status` and `table` do first
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


def test_a_catch_up_between_an_epochs_metrics_line_and_its_record_adds_each_metric_once(tmp_path, monkeypatch):
    # A job appends an epoch's metrics line, then writes the record that counts it: status (or the local
    # launcher) may read the folder in between, as the PostgreSQL outage test once caught in CI.
    url, home = _home(tmp_path, "home", monkeypatch)
    (run_hash,) = _record_runs(url, home, [_config(0)])
    job = submit(url, [run_hash])[run_hash]
    job.epochs = 3
    caught_between = []

    def append_then_catch_up(run_dir, epoch, metrics):
        folders.append_metrics(run_dir, epoch, metrics)
        caught_between.append(catch_up(url, quiet=True).updated)

    monkeypatch.setattr(jobmod, "append_metrics", append_then_catch_up)
    job()
    catch_up(url)
    assert caught_between == [1, 1, 1]  # each read the folder with one line more than its record counted
    losses = [(name, epoch) for h, name, _, epoch in _metric_rows(url) if name == "loss"]
    assert sorted(losses) == [("loss", 1), ("loss", 2), ("loss", 3)]


def _job_without_sqlalchemy(job: QuickJob) -> None:
    import sys

    for name in ("sqlalchemy", "sqlite3", "_sqlite3"):
        sys.modules[name] = None  # an import of either fails: the job must need neither
    job()


def test_a_job_never_imports_sqlalchemy_nor_sqlite(tmp_path, monkeypatch):
    url, home = _home(tmp_path, "home", monkeypatch)
    (run_hash,) = _record_runs(url, home, [_config(0)])
    job = submit(url, [run_hash])[run_hash]
    process = multiprocessing.get_context("spawn").Process(target=_job_without_sqlalchemy, args=(job,))
    process.start()
    process.join(timeout=120)
    assert process.exitcode == 0
    assert read_record(str(home / "runs" / run_hash[:16]))["state"] == "completed"


def test_a_job_started_for_another_attempt_leaves_the_folder_alone(tmp_path, monkeypatch):
    url, home = _home(tmp_path, "home", monkeypatch)
    (run_hash,) = _record_runs(url, home, [_config(0)])
    stale = submit(url, [run_hash])[run_hash]
    current = submit(url, [run_hash])  # a retry opened attempt 2 before attempt 1's job started
    assert current == {} and version_of(read_record(stale.run_dir)) == (1, 0)  # the database holds it: refused
    with session_scope(url) as session:  # attempt 1 failed meanwhile
        transition(session, run_hash, "failed", expect=("submitted",))
    fresh = submit(url, [run_hash])[run_hash]
    assert fresh.attempt == 2
    before = (Path(stale.run_dir) / "run.json").read_bytes()
    assert stale() == {}
    assert (Path(stale.run_dir) / "run.json").read_bytes() == before
    assert fresh()["knn_top1"] == 50.0


def test_sync_merges_two_homes_and_the_newer_version_wins(tmp_path, monkeypatch):
    url_a, home_a = _home(tmp_path, "a", monkeypatch)
    (a0, shared) = _record_runs(url_a, home_a, [_config(0), _config(5)])
    for job in submit(url_a, [a0, shared]).values():
        job()
    url_b, home_b = _home(tmp_path, "b", monkeypatch)
    (b0, shared_b) = _record_runs(url_b, home_b, [_config(1), _config(5)])
    assert shared_b == shared
    submit(url_b, [b0])[b0]()
    submit(url_b, [shared])  # b submitted it too; it never ran there: attempt 1, submitted
    target = f"sqlite:///{tmp_path / 'merged.db'}"
    _, report = sync(target, [str(home_a / "runs"), str(home_b / "runs")])
    rows = _rows(target)
    assert set(rows) == {a0, b0, shared} and rows[shared][0] == "completed" and rows[b0][0] == "completed"
    assert "3 added" in report[-1]
    _, again = sync(target, [str(home_a / "runs"), str(home_b / "runs")])
    assert "0 added, 0 updated" in again[-1]


def test_a_database_locked_for_the_whole_run_cannot_touch_it(tmp_path, monkeypatch):
    url, home = _home(tmp_path, "home", monkeypatch)
    monkeypatch.setenv("SEEDRUN_DB_BUSY_S", "0.3")
    (run_hash,) = _record_runs(url, home, [_config(0)])
    job = submit(url, [run_hash])[run_hash]
    job.epochs, job.epoch_s = 3, 0.5
    locked, release = threading.Event(), threading.Event()

    def hold_lock():
        db = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(60)
        db.execute("ROLLBACK")
        db.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    assert locked.wait(10)
    started = time.monotonic()
    try:
        assert job()["knn_top1"] == 50.0  # the run completed, the lock notwithstanding
        assert time.monotonic() - started < 3 * 0.5 + 3
        assert catch_up(url).updated == 0  # status meanwhile: the folder waits, nothing fails
    finally:
        release.set()
        holder.join()
    catch_up(url)
    state, epoch, metrics, finished = _rows(url)[run_hash]
    assert (state, epoch, metrics, finished is not None) == ("completed", 3, {"loss": 1 / 3, "knn_top1": 50.0,
                                                                              "knn_top5": 90.0}, True)
    assert len(_metric_rows(url)) == 3 + 2  # every epoch's loss and both results


def test_a_run_that_completes_between_catch_up_and_reconcile_stays_completed(tmp_path, monkeypatch):
    from seedrun.launchers.reconcile import reconcile

    url, home = _home(tmp_path, "home", monkeypatch)
    (run_hash,) = _record_runs(url, home, [_config(0)])
    job = submit(url, [run_hash])[run_hash]
    job.epochs = 1
    job.during = lambda: catch_up(url)  # status's catch-up saw it running...
    job()  # ...then the job completed, in its folder, and its process is gone:
    gone = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
    gone.start()
    gone.join()
    with session_scope(url) as session:
        session.execute(Run.__table__.update().where(Run.hash == run_hash)
                        .values(job_id=f"local:{gone.pid}", provenance={"host": "login"}))
    assert _rows(url)[run_hash][0] == "running"
    reconcile(url)  # status's reconcile finds the job gone: it reads the folder again before calling it lost
    assert _rows(url)[run_hash][0] == "completed"


def test_a_retry_never_overwrites_a_completed_folder(tmp_path, monkeypatch):
    url, home = _home(tmp_path, "home", monkeypatch)
    (run_hash,) = _record_runs(url, home, [_config(0)])
    job = submit(url, [run_hash])[run_hash]
    job()
    with session_scope(url) as session:  # an older release's status called it lost before its folder came in
        transition(session, run_hash, "lost", expect=("submitted",))
    folder = Path(job.run_dir)
    before = {name: (folder / name).read_bytes() for name in ("run.json", "config.json", "metrics.jsonl")}
    assert submit(url, [run_hash]) == {}  # nothing opened...
    assert {name: (folder / name).read_bytes() for name in before} == before  # ...nothing written
    from seedrun.launchers.local import _claim

    assert _claim(url, run_hash) == "completed"  # the local launcher brings the folder in instead
    assert {name: (folder / name).read_bytes() for name in before} == before
    catch_up(url, [run_hash])
    assert _rows(url)[run_hash][0] == "completed"


def _cancelled_after_submission(tmp_path, monkeypatch) -> tuple[str, str, QuickJob]:
    url, home = _home(tmp_path, "home", monkeypatch)
    (run_hash,) = _record_runs(url, home, [_config(0)])
    job = submit(url, [run_hash])[run_hash]
    with session_scope(url) as session:  # `seedrun cancel` after the submission
        transition(session, run_hash, "cancelled", expect=("submitted",))
    return url, run_hash, job


def test_a_cancel_ends_its_attempt_and_a_retry_opens_the_next(tmp_path, monkeypatch):
    from seedrun.store.folders import write_record

    url, run_hash, job = _cancelled_after_submission(tmp_path, monkeypatch)
    record = read_record(job.run_dir)  # its job started anyway (scancel came too late) and wrote an epoch
    write_record(job.run_dir, {**record, "state": "running", "epoch": 1, "version": [1, 2]})
    catch_up(url, [run_hash])
    assert _rows(url)[run_hash][0] == "cancelled"  # its records do not bring the run back in flight
    retried = submit(url, [run_hash])[run_hash]
    assert retried.attempt == 2 and read_record(retried.run_dir)["state"] == "submitted"
    assert retried()["knn_top1"] == 50.0
    catch_up(url)
    assert _rows(url)[run_hash][0] == "completed"


def test_a_result_recorded_after_a_cancel_stands(tmp_path, monkeypatch):
    url, run_hash, job = _cancelled_after_submission(tmp_path, monkeypatch)
    job()  # finished before it could be stopped: its model and results are there
    catch_up(url, [run_hash])
    assert _rows(url)[run_hash][0] == "completed"


def test_folder_records_of_old_releases_and_bad_folders_are_reported_not_fatal(tmp_path, monkeypatch):
    url, home = _home(tmp_path, "home", monkeypatch)
    old = home / "runs" / "0123456789abcdef"
    old.mkdir(parents=True)
    (old / "config.json").write_text(json.dumps(_config(0)))
    _, report = sync(url, [str(home / "runs")])
    assert any("no run.json" in line for line in report) and "0 added" in report[-1]


def test_the_commands_use_sqlite_rollback_journal_on_a_network_filesystem(tmp_path, monkeypatch, capsys):
    """WAL needs shared memory that NFS does not share between hosts: on a file the check reports as
    remote, the commands use the rollback journal with a lock file, and say once why."""
    from seedrun.cli import main
    from seedrun.store import sqlite_files

    monkeypatch.setattr(sqlite_files, "on_network_filesystem", lambda path: (True, "nfs4"))
    url, home = _home(tmp_path, "nfs", monkeypatch)
    monkeypatch.setenv("SEEDRUN_DB", url)
    (run_hash,) = _record_runs(url, home, [_config(0)])
    submit(url, [run_hash])[run_hash]()
    assert main(["status"]) == 0 and main(["status"]) == 0
    err = capsys.readouterr().err
    assert err.count("rollback journal") == 1 and "PostgreSQL" in err
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert (home / "seedrun.db.lock").exists() and not (home / "seedrun.db-wal").exists()
    assert _rows(url)[run_hash][0] == "completed"

    local_url, local_home = _home(tmp_path, "local", monkeypatch)
    monkeypatch.setattr(sqlite_files, "on_network_filesystem", lambda path: (False, "ext4"))
    _record_runs(local_url, local_home, [_config(1)])
    with sqlite3.connect(local_url.removeprefix("sqlite:///")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_status_brings_newer_folders_in_without_loading_sqlalchemy(tmp_path, monkeypatch):
    """On SQLite, the catch-up `status` and `table` do first writes through the standard library's sqlite3
    and the same state machine (seedrun.store.states.transition over a DB-API cursor): bringing 100
    folders in costs no SQLAlchemy import, which alone is several times `python -c pass`."""
    import datetime as dt
    import subprocess
    import sys

    from sqlalchemy import select

    url, home = _home(tmp_path, "home", monkeypatch)
    (run_hash, waiting) = _record_runs(url, home, [_config(0), _config(1)])
    jobs = submit(url, [run_hash, waiting])
    jobs[run_hash]()
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
    assert [row[1:] for row in _metric_rows(url)] == sorted([("loss", 1.0, 1), ("loss", 0.5, 2),
                                                             ("knn_top1", 50.0, 2), ("knn_top5", 90.0, 2)])
    with session_scope(url) as session:  # stored as SQLAlchemy stores them: the ORM reads them back
        run = session.scalars(select(Run).where(Run.hash == run_hash)).one()
        assert isinstance(run.finished_at, dt.datetime) and isinstance(run.started_at, dt.datetime)
        assert isinstance(run.provenance, dict) and run.summary["knn_top1"] == 50.0
        assert (run.attempt, run.seq) == (1, 4)


def test_an_attempt_superseded_by_a_retry_stops_and_never_overwrites_the_newer_attempt(tmp_path, monkeypatch):
    """A retry opened attempt 2 while attempt 1's job was still running (its scancel not yet effective): the
    old job's next write would have put attempt 1 back in the folder, and attempt 2's job would then have
    found another attempt and left. It stops instead, and gives its lease back."""
    url, home = _home(tmp_path, "home", monkeypatch)
    (run_hash,) = _record_runs(url, home, [_config(0)])
    old = submit(url, [run_hash])[run_hash]
    with session_scope(url) as session:
        transition(session, run_hash, "cancelled", expect=("submitted",))
    old.epochs = 3
    old.during = lambda: submit(url, [run_hash])  # `seedrun retry` meanwhile: attempt 2 in the folder
    assert old() == {}
    record = read_record(old.run_dir)
    assert version_of(record) == (2, 0) and record["state"] == "submitted"
    assert "a newer attempt of the run was opened" in (Path(old.run_dir) / "log.txt").read_text()
    assert not (Path(old.run_dir) / "lease.json").exists()
    assert QuickJob(run_hash, old.run_dir, None, 2)()["knn_top1"] == 50.0  # attempt 2 trains at once
