"""The local launcher and a database that stops answering writes while a sweep trains: the run that was
training completes from its folder record, runs not yet started wait for the next `seedrun sweep`, and
nothing ends in a traceback."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time

from conftest import ROOT, TINY_BASE, write_sweep


def test_a_database_locked_when_a_local_job_ends_leaves_later_runs_for_the_next_sweep(cli, tmp_path):
    base = "\n".join(f"  - {override}" for override in TINY_BASE + ["teacher.pretrain.epochs=3"])
    path = write_sweep(tmp_path / "outage.yaml", f"name: outage\nbase:\n{base}\n"
                                                 "grid:\n  distill.tau_teacher: [0.01]\nlauncher:\n  name: local\n")
    env = {**cli.env, "SEEDRUN_DB_BUSY_S": "0.3", "SEEDRUN_DB_WAIT_S": "1.0"}
    sweep = subprocess.Popen([sys.executable, "-m", "seedrun", "sweep", str(path)], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def teacher_record():
        for record in (cli.home / "runs").glob("*/run.json"):
            value = json.loads(record.read_text())
            if value.get("stage") == "pretrain":
                return value
        return None

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not ((teacher_record() or {}).get("state") == "running"):
        time.sleep(0.2)
    assert (teacher_record() or {}).get("state") == "running", sweep.communicate()
    locked, release = threading.Event(), threading.Event()

    def hold_lock():  # every write fails past the busy window until the sweep has given up on it
        db = sqlite3.connect(cli.db, isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(300)
        db.execute("ROLLBACK")
        db.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    assert locked.wait(30)
    try:
        out, err = sweep.communicate(timeout=300)
    finally:
        release.set()
        holder.join()
    assert sweep.returncode == 1, out + err
    assert "Traceback" not in out + err
    assert "database unreachable" in out and "not started 1" in out, out
    assert teacher_record()["state"] == "completed"  # trained to the end; its record is in its folder

    report = json.loads(cli("status", "--json").stdout)  # the lock is gone: status brings the folder in
    states = {run["stage"]: run["state"] for run in report["runs"]}
    assert states == {"pretrain": "completed", "distill": "pending"}, report
    again = cli("sweep", str(path))
    assert "completed 1  failed 0  blocked 0" in again.stdout, again.stdout
