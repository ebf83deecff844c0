"""64 concurrent array tasks on the real one-node Slurm test cluster, recorded in SQLite: not one run
or metric lost, not one byte of the database written by a task.

Each task is a RunJob whose training only waits until every task of the array has started, then
records several epochs of metrics and its result through the real recording hooks, all at the same
moment. Jobs write their run folders only; `seedrun status` brings every record in.

Needs root on Linux (the slurm_cluster fixture). Run with the project venv's python. About a minute on
2 cores.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from conftest import CLI
from seedrun.job.run_job import RunJob

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# BarrierJob is unpickled by array tasks in a fresh interpreter where tests/ is not importable.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

TASKS = 64
EPOCHS = 5


class BarrierJob(RunJob):
    """Waits until every task of the array has started, then records EPOCHS epochs (two metrics each)
    and its result as fast as it can, at the same moment as all the others."""

    def _train(self, stage, config, run_dir, hooks, teacher_dir):
        import time
        from pathlib import Path

        barrier = Path(config["barrier"])
        (barrier / self.run_hash).touch()
        deadline = time.monotonic() + 150
        while len(list(barrier.iterdir())) < config["tasks"] and time.monotonic() < deadline:
            time.sleep(0.05)
        for epoch in range(1, config["epochs"] + 1):
            hooks.epoch_end(epoch, {"loss": 1.0 / epoch, "lr": 0.1 * config["i"] + epoch})
        return {"knn_top1": float(config["i"]), "knn_top5": 100.0}


def _digest(home: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(home.glob("seedrun.db*"))}


def test_64_concurrent_array_tasks_lose_no_run_or_metric_in_sqlite(slurm_cluster, home, tmp_path, monkeypatch):
    from rich.console import Console

    from seedrun.launchers.slurm import submit_slurm
    from seedrun.store.folders import read_record
    from seedrun.store.plan import read_plan, record
    from seedrun.sweeps.spec import RunSpec
    from seedrun.sweeps.sweep_file import Sweep

    monkeypatch.setenv("SEEDRUN_HOSTNAME", "login")
    db_url = f"sqlite:///{home / 'seedrun.db'}"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    launcher = {"name": "slurm", "partition": "debug", "cpus_per_task": 1, "timeout_min": 10,
                "array_parallelism": TASKS}
    runs = [RunSpec("pretrain", {"i": i, "tasks": TASKS, "epochs": EPOCHS, "barrier": str(barrier),
                                 "launcher": launcher}) for i in range(TASKS)]
    sweep = Sweep(name="sixty-four", path="sixty-four", ablation=None, runs=runs, axes=[], launcher=launcher)
    record(read_plan(sweep, db_url), db_url)
    plan = read_plan(sweep, db_url)
    out = io.StringIO()
    masters = submit_slurm(plan, plan.to_run(), db_url, None, Console(file=out, width=200), job_factory=BarrierJob)
    assert len(masters) == 1, out.getvalue()
    untouched = _digest(home)
    folders = [home / "runs" / run.hash[:16] for run in runs]

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        states = [(read_record(str(folder)) or {}).get("state") for folder in folders]
        if all(state in ("completed", "failed", "cancelled", "blocked", "lost") for state in states):
            break
        time.sleep(0.5)
    assert states == ["completed"] * TASKS, [(s, f.name) for s, f in zip(states, folders) if s != "completed"]

    assert _digest(home) == untouched  # not one task wrote the file (nor its WAL)
    cli = CLI(home)
    cli.env.update(SEEDRUN_HOSTNAME="login", SEEDRUN_DB=db_url)
    report = json.loads(cli("status", "--json", "sixty-four").stdout)  # brings in what only folders hold
    assert report["counts"].get("completed") == TASKS, report["counts"]
    assert sorted(run["metrics"]["knn_top1"] for run in report["runs"]) == [float(i) for i in range(TASKS)]

    with sqlite3.connect(home / "seedrun.db") as db:
        rows = db.execute("select r.hash, m.name, m.value, m.epoch from metrics m join runs r on r.id = m.run_id"
                          ).fetchall()
        assert db.execute("select count(*) from runs where state = 'completed' and epoch = ?",
                          (EPOCHS,)).fetchone()[0] == TASKS
    assert len(rows) == TASKS * (EPOCHS * 2 + 2)  # every epoch's two metrics and both results, once each
    by_run: dict[str, set] = {}
    for run_hash, name, value, epoch in rows:
        by_run.setdefault(run_hash, set()).add((name, epoch))
    expected = {(name, epoch) for epoch in range(1, EPOCHS + 1) for name in ("loss", "lr")}
    assert all(got >= expected and len(got) == EPOCHS * 2 + 2 for got in by_run.values()) and len(by_run) == TASKS

    logs = "".join(p.read_text() for p in (home / "submitit").rglob("*_log.*"))  # the tasks' stderr and stdout
    logs += "".join((folder / "log.txt").read_text() for folder in folders if (folder / "log.txt").exists())
    assert "database is locked" not in logs and "Traceback" not in logs
