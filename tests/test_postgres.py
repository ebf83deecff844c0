"""Runs recorded in a real PostgreSQL server (tests/cluster/start-postgres.sh) instead of SQLite:
`--db URL`/SEEDRUN_DB take any SQLAlchemy URL, and sweep, status and table must work the same there.
The read path's SQLite-only shortcuts (json_extract, GROUP BY over runs.settings, json_object) are
not used on PostgreSQL, so these tests cover the portable path too."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import TINY_BASE, write_sweep
from test_tables import TABLES, _from_database, _write, fixture_records, render, table

START_SCRIPT = Path(__file__).resolve().parent / "cluster" / "start-postgres.sh"


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The server's URL. Skips only where it cannot exist (not Linux, not root); where it should
    start and does not, FAILS with the script's output rather than skipping."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("the test PostgreSQL server needs Linux and root (it runs as the postgres user)")
    result = subprocess.run([str(START_SCRIPT)], capture_output=True, text=True, timeout=900)
    if result.returncode != 0 or "postgres ready: " not in result.stdout:
        pytest.fail(f"start-postgres.sh failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout.strip().split("postgres ready: ", 1)[1]


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database for one test, dropped after it."""
    import psycopg2

    name = f"seedrun_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(postgres_server.replace("postgresql+psycopg2", "postgresql"))
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    yield postgres_server.rsplit("/", 1)[0] + f"/{name}"
    from seedrun.store import engine as store
    for url in [url for url in store._engines if name in url]:
        store._engines.pop(url).dispose()
    admin.cursor().execute(f"DROP DATABASE {name} WITH (FORCE)")
    admin.close()


def test_sweep_status_and_table_record_in_postgres(cli, tmp_path, postgres_url):
    cli.env["SEEDRUN_DB"] = postgres_url
    path = write_sweep(tmp_path / "tiny.yaml", "name: tiny-temperature\nablation: temperature\nbase:\n"
                       + "".join(f"  - {override}\n" for override in TINY_BASE)
                       + "grid:\n  distill.tau_teacher: [0.1, 0.01]\n")
    assert "completed 3  failed 0  blocked 0" in cli("sweep", str(path)).stdout
    assert not cli.db.exists()  # nothing went to the default SQLite file

    status = json.loads(cli("status", "--json").stdout)
    assert status["counts"]["completed"] == 3
    by_tau = {run["axes"]["distill.tau_teacher"]: run for run in status["runs"] if run["stage"] == "distill"}
    assert set(by_tau) == {0.1, 0.01}
    assert all(10.0 < run["metrics"]["knn_top1"] <= 100.0 and run["epochs"] == 1 for run in status["runs"])

    human = cli("status").stdout
    assert "completed 3" in human and "distill.tau_teacher=0.01" in human

    rows = {row[0]: row for row in csv.reader(io.StringIO(
        cli("table", "--ablation", "temperature", "--format", "csv").stdout))}
    top1 = rows["τ_T"].index("k-NN top-1")
    for tau in ("0.1", "0.01"):
        assert float(rows[tau][top1]) == round(by_tau[float(tau)]["metrics"]["knn_top1"], 1)

    again = cli("sweep", str(path))
    assert "nothing to run" in again.stdout and "new 0  done 3" in again.stdout

    import psycopg2

    with psycopg2.connect(postgres_url.replace("postgresql+psycopg2", "postgresql")) as connection:
        cursor = connection.cursor()
        cursor.execute("SELECT stage, settings FROM runs ORDER BY id")
        settings = dict(cursor.fetchall())
        cursor.execute("SELECT count(*) FROM metrics WHERE name = 'knn_top1'")
        assert cursor.fetchone()[0] == 3
    assert settings["pretrain"]["pretrain.method"] == "mocov2"
    assert settings["distill"]["distill.strategy"] == "seed"


RUN_COLUMNS = ("hash", "stage", "state", "attempts", "epoch", "depends_on", "error", "failure_reason", "attempt",
               "seq", "settings", "summary")


#: metrics of the machine's speed at that moment, not of the run: they differ between any two trainings
TIMINGS = ("epoch_seconds", "images_per_s", "data_wait_fraction")


def _recorded(url: str) -> tuple[list, list]:
    """Every run's recorded columns and every metric row (timings aside), as both databases give them."""
    from sqlalchemy import select

    from seedrun.store.engine import write
    from seedrun.store.tables import metrics, runs

    def body(db):
        rows = [tuple(json.dumps({k: v for k, v in value.items() if k not in TIMINGS}, sort_keys=True)
                      if isinstance(value, dict) else value for value in row)
                for row in db.execute(select(*(runs.c[name] for name in RUN_COLUMNS)).order_by(runs.c.hash))]
        values = db.execute(select(runs.c.hash, metrics.c.name, metrics.c.epoch, metrics.c.value)
                            .join(runs, runs.c.id == metrics.c.run_id).where(metrics.c.name.not_in(TIMINGS))).all()
        return rows, sorted(tuple(row) for row in values)

    return write(url, body)


def test_the_same_sweep_recorded_in_sqlite_and_postgres_gives_the_same_rows(cli, tmp_path, postgres_url):
    """One state machine, one record path: the rows do not depend on the backend (the training is the
    same on one machine, so the values are too)."""
    from conftest import CLI

    path = write_sweep(tmp_path / "twice.yaml", "name: twice\nbase:\n"
                       + "".join(f"  - {override}\n" for override in TINY_BASE)
                       + "grid:\n  distill.tau_teacher: [0.1, 0.01]\n")
    sqlite_cli = CLI(tmp_path / "sqlite-home")
    postgres_cli = CLI(tmp_path / "postgres-home")
    postgres_cli.env["SEEDRUN_DB"] = postgres_url
    for each in (sqlite_cli, postgres_cli):
        assert "completed 3  failed 0" in each("sweep", str(path)).stdout
        each("status")
    on_sqlite = _recorded(f"sqlite:///{sqlite_cli.db}")
    on_postgres = _recorded(postgres_url)
    assert len(on_sqlite[0]) == 3 and len(on_sqlite[1]) >= 3 * 3
    assert on_sqlite == on_postgres


def test_every_table_reads_the_same_from_postgres(postgres_url):
    records = fixture_records()
    _write(postgres_url, records)
    for name in TABLES:
        assert render(_from_database(name, postgres_url, paper=True), "csv") == render(
            table(name, records, paper=True), "csv"), name
