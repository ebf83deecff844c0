"""seedrun.views.status on a real SQLite file: what the human table and --json say, and that the JSON made
by SQLite equals the JSON made from records (the path other databases take)."""

from __future__ import annotations

import datetime as dt
import io
import json
import sqlite3
from contextlib import redirect_stdout

import pytest

from seedrun.store import engine as store
from seedrun.store.schema import Run, Sweep, SweepRun
from seedrun.views.status import _runs_as_json, show_status


def _config(stage: str, tau: float = 0.01, epochs: int = 200) -> dict:
    if stage == "pretrain":
        return {"stage": stage, "pretrain": {"method": "mocov2", "arch": "resnet50", "epochs": epochs, "role": "teacher"},
                "data": {"name": "fashion_mnist"}}
    return {"stage": stage, "distill": {"strategy": "seed", "tau_teacher": tau, "epochs": epochs},
            "student": {"arch": "resnet18"}, "data": {"name": "fashion_mnist"}}


@pytest.fixture()
def database(tmp_path):
    """Two sweeps sharing a teacher; one student failed, one ran 3 of 20 epochs with a NaN-free summary."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    runs = [
        ("t" * 64, "pretrain", "completed", 800, _config("pretrain", epochs=800), {"knn_top1": 72.9}, None),
        ("a" * 64, "distill", "completed", 20, _config("distill", 0.01, 20), {"knn_top1": 70.68, "loss": 1.5}, None),
        ("b" * 64, "distill", "failed", 3, _config("distill", 1e-05, 20), {"loss": 2.0}, "out_of_memory"),
    ]
    with store.session_scope(url) as session:
        rows = {}
        for digest, stage, state, epoch, config, summary, reason in runs:
            rows[digest] = Run(hash=digest, stage=stage, state=state, epoch=epoch, run_dir=f"/runs/{digest}",
                               config=config, summary=summary, failure_reason=reason, job_id="local:1",
                               # a run of 8 processes on each of 2 nodes (seedrun.job.provenance.layout)
                               provenance={"layout": "8x2 gpu", "world": 16} if digest == "a" * 64 else
                               {"world": 1},
                               error="killed" if reason else None,
                               finished_at=dt.datetime(2026, 1, 1) if state == "completed" else None)
            session.add(rows[digest])
        first, second = Sweep(name="first", path="first.yaml", axes=[]), Sweep(name="second", path="second.yaml", axes=[])
        session.add_all([first, second])
        session.flush()
        session.add_all([
            SweepRun(sweep_id=first.id, run_id=rows["t" * 64].id, position=0, axes={}),
            SweepRun(sweep_id=first.id, run_id=rows["a" * 64].id, position=1, axes={"distill.tau_teacher": 0.01, "seed": 0}),
            SweepRun(sweep_id=second.id, run_id=rows["t" * 64].id, position=0, axes={}),
            SweepRun(sweep_id=second.id, run_id=rows["b" * 64].id, position=1,
                     axes={"distill.tau_teacher": 1e-05, "flip": True}),
        ])
    store._engines.clear()
    return url


def _status(url: str, sweep: str | None = None, as_json: bool = False) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        assert show_status(url, sweep, as_json=as_json, check_jobs=False) == 0
    return out.getvalue()


def test_the_table_has_a_row_per_run_under_its_first_sweep(database):
    lines = _status(database).splitlines()
    assert lines[0] == "completed 2  failed 1"
    assert lines[1].split() == ["sweep", "run", "stage", "setting", "state", "epoch", "k-NN", "top-1", "job"]
    assert len(lines) == 5  # the shared teacher once
    teacher, student, failed = lines[2:]
    assert teacher.split() == ["first", "t" * 12, "pretrain", "mocov2", "resnet50", "(teacher)", "completed", "800/800",
                               "72.90", "local:1"]
    assert student.split() == ["first", "a" * 12, "distill", "distill.tau_teacher=0.01", "seed=0", "completed", "20/20",
                               "70.68", "local:1", "[8x2", "gpu]"]  # G x N for a multi-process run
    assert failed.split() == ["second", "b" * 12, "distill", "distill.tau_teacher=1e-05", "flip=True", "failed",
                              "(out_of_memory)", "3/20", "local:1"]
    # aligned: every column starts where its header does
    assert {line.index("local:1") for line in lines[2:]} == {lines[1].index("job")}


def test_json_from_sqlite_equals_json_from_records(database):
    made_by_sqlite = [(state, json.loads(text)) for state, text in _runs_as_json(database, None)]
    made_by_python = [(state, json.loads(text)) for state, text in _runs_as_json(database, None, in_sql=False)]
    assert made_by_sqlite == made_by_python
    status = json.loads(_status(database, as_json=True))
    assert status["counts"]["completed"] == 2 and status["counts"]["failed"] == 1
    failed = status["runs"][2]
    assert failed == {"hash": "b" * 64, "sweep": "second", "stage": "distill", "state": "failed", "epoch": 3,
                      "epochs": 20, "axes": {"distill.tau_teacher": 1e-05, "flip": True}, "metrics": {"loss": 2.0},
                      "job_id": "local:1", "failure_reason": "out_of_memory", "error": "killed"}
    second = json.loads(_status(database, "second", as_json=True))["runs"]
    assert [run["hash"][0] for run in second] == ["t", "b"]


def test_a_database_without_runs_settings_shows_the_same(database):
    table, as_json = _status(database), _status(database, as_json=True)
    path = database.removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        connection.execute("DROP INDEX ix_runs_grouping")
        connection.execute("ALTER TABLE runs DROP COLUMN settings")
    assert _status(database) == table
    assert json.loads(_status(database, as_json=True)) == json.loads(as_json)


def test_an_unknown_sweep_is_bad_input(database):
    from seedrun.errors import InputError

    with pytest.raises(InputError, match="no sweep named 'third'"):
        _status(database, "third")


def test_a_database_from_before_runs_layout_shows_the_same(database):
    """Schema 0002 had no runs.layout: status extracts the layout from each run's provenance there."""
    table = _status(database)
    assert "[8x2 gpu]" in table
    path = database.removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TRIGGER runs_layout_insert")
        connection.execute("DROP TRIGGER runs_layout_update")
        connection.execute("ALTER TABLE runs DROP COLUMN layout")
    assert _status(database) == table


def test_a_student_alone_run_shows_its_random_init_beside_its_k_nn(database):
    """Whether MoCo-v2 alone helped, at a glance: the baseline's k-NN and the same network's untrained."""
    config = {"stage": "pretrain", "pretrain": {"method": "mocov2", "arch": "mobilenetv3_large", "epochs": 8,
                                                "role": "baseline"}, "data": {"name": "fashion_mnist"}}
    with store.session_scope(database) as session:
        run = Run(hash="c" * 64, stage="pretrain", state="completed", epoch=8, run_dir="/runs/c", config=config,
                  summary={"knn_top1": 61.2, "init_knn_top1": 63.0}, provenance={}, job_id="local:2")
        session.add(run)
        session.flush()
        sweep = session.query(Sweep).filter_by(name="first").one()
        session.add(SweepRun(sweep_id=sweep.id, run_id=run.id, position=2, axes={}))
    store._engines.clear()
    line = next(line for line in _status(database).splitlines() if "c" * 12 in line)
    assert "61.20 (init 63.00)" in line and "(baseline)" in line
    path = database.removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:  # the listing made from records, as on PostgreSQL
        connection.execute("DROP INDEX ix_runs_grouping")
        connection.execute("ALTER TABLE runs DROP COLUMN settings")
    assert line in _status(database).splitlines()
