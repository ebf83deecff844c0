"""Schema migrations (seedrun.store.migrations, Alembic): real database files written by each release
(tests/fixtures/db/, made by make_fixture.py) open, read the same tables before and after the upgrade,
and upgrade on the first write with one line saying so, or with `seedrun db upgrade`."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from seedrun.cli import main
from seedrun.commands.read import table_groups
from seedrun.store import engine as store
from seedrun.store.migrations import HEAD
from seedrun.store.records import load_records
from seedrun.tables import build_table, render

FIXTURES = Path(__file__).parent / "fixtures" / "db"
RELEASES = sorted(FIXTURES.glob("seedrun-*.db"))


def _tables(url: str) -> dict[str, str]:
    out = {name: render(build_table(name, table_groups(name, url, None), paper=True), "csv")
           for name in ("temperature", "main", "teacher")}
    out["records"] = json.dumps([(r.hash, r.state, r.epoch, r.metrics, str(r.finished_at), r.sweep, r.axes)
                                 for r in load_records(url)], sort_keys=True)
    return out


def _version(path: Path):
    with sqlite3.connect(path) as connection:
        try:
            return connection.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        except sqlite3.OperationalError:
            return None


@pytest.fixture
def copies(tmp_path):
    store._engines.clear()
    yield {release.name: Path(shutil.copy(release, tmp_path / release.name)) for release in RELEASES}
    store._engines.clear()


def test_there_is_a_fixture_for_this_release_and_one_from_before_versions():
    assert {"seedrun-before-versions.db", f"seedrun-{HEAD}.db"} <= {release.name for release in RELEASES}


def test_every_release_file_reads_the_same_tables_before_and_after_upgrading(copies, capsys):
    expected = None
    for name, path in copies.items():
        url = f"sqlite:///{path}"
        before = _tables(url)
        expected = expected or before
        assert before == expected, f"{name} reads differently from the other releases' files"
        store.engine_for(url)  # the first write upgrades
        err = capsys.readouterr().err
        if name == f"seedrun-{HEAD}.db":
            assert "upgraded" not in err
        else:
            assert err.count("seedrun: upgraded the run database") == 1 and f"to {HEAD}" in err
        assert _version(path) == HEAD
        assert _tables(url) == expected, f"{name} reads differently after the upgrade"


def test_db_upgrade_on_request_and_again(copies, capsys):
    path = copies["seedrun-before-versions.db"]
    assert main(["db", "upgrade", "--db", f"sqlite:///{path}"]) == 0
    assert capsys.readouterr().out.strip() == f"schema {HEAD} (was before versions)"
    store._engines.clear()
    assert main(["db", "upgrade", "--db", f"sqlite:///{path}"]) == 0
    assert capsys.readouterr().out.strip() == f"schema {HEAD} (already)"
    with sqlite3.connect(path) as connection:
        columns = {row[1] for row in connection.execute("PRAGMA table_info(runs)")}
        assert {"updated_at", "experiment"} <= columns
        assert connection.execute("SELECT COUNT(*) FROM runs WHERE experiment IS NULL").fetchone()[0] == 0


def test_runs_layout_is_filled_from_provenance_on_upgrade_and_follows_every_write(copies):
    """0003: runs.layout (what status shows beside a multi-process run's job) is backfilled, and the
    triggers keep it equal to provenance.layout whether the ORM, SQLAlchemy Core or plain sqlite3 writes."""
    from sqlalchemy import update

    from seedrun.store.schema import Run

    path = copies["seedrun-0002.db"]
    with sqlite3.connect(path) as connection:  # a run of that release that ran on 2 ranks
        connection.execute("""UPDATE runs SET provenance = '{"layout": "2x1 cpu", "world": 2}' WHERE id = 2""")
    url = f"sqlite:///{path}"
    store.engine_for(url)  # upgrades

    def layouts() -> dict[int, str]:
        with sqlite3.connect(path) as connection:
            return dict(connection.execute("SELECT id, layout FROM runs WHERE layout IS NOT NULL").fetchall())

    assert layouts() == {2: "2x1 cpu"}
    with store.session_scope(url) as session:  # the ORM
        session.get(Run, 3).provenance = {"layout": "8x4 gpu", "world": 32}
    with store.session_scope(url) as session:  # SQLAlchemy Core
        session.execute(update(Run).where(Run.id == 2).values(provenance={"world": 1}))
    with sqlite3.connect(path) as connection:  # plain sqlite3, as catch-up writes
        connection.execute("""UPDATE runs SET provenance = '{"layout": "4x1 gpu"}' WHERE id = 4""")
    assert layouts() == {3: "8x4 gpu", 4: "4x1 gpu"}
    with store.session_scope(url) as session:  # a new run
        session.add(Run(hash="n" * 64, stage="distill", state="pending", attempts=0, epoch=0, run_dir="/runs/n",
                        config={}, provenance={"layout": "2x2 gpu"}, summary={}))
    assert "2x2 gpu" in layouts().values()
