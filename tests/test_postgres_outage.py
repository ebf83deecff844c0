"""A PostgreSQL server that goes away while a run trains: the job never notices (it writes only its run
folder), the local launcher that brings the folder in meets the outage and goes on, and once the server
is back the run's record in the database is complete (final state, every metric row).

A real server, private to this test (initdb + pg_ctl on a free port, as tests/cluster/start-postgres.sh
does for the shared test server, which other tests use and which is left alone), is stopped
(`pg_ctl stop -m fast`: connections cut, new ones refused) while a tiny local sweep really trains, kept
down for several of the launcher's one-second catch-ups, and started again before training ends.
No mocks.

Needs Linux, root (the server runs as the postgres user) and the PostgreSQL binaries (installed by
tests/cluster/start-postgres.sh); skips, saying which, where they are missing.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import ROOT, TINY_BASE, write_sweep

pytestmark = pytest.mark.slow

DOWN_S = 5.0  # several of the local launcher's catch-ups (one a second) meet the outage


def _bin_dir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]) if
                   p.split("/")[-2].isdigit() else 0)
    return found[-1] if found and os.path.exists(os.path.join(found[-1], "pg_ctl")) else None


class PrivateServer:
    """One throwaway PostgreSQL cluster on 127.0.0.1:port, run as the postgres user."""

    def __init__(self, bin_dir: str, root: Path, port: int):
        self.bin_dir, self.root, self.port = bin_dir, root, port
        self.data, self.log = root / "data", root / "server.log"
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"

    def _as_postgres(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["runuser", "-u", "postgres", "--", os.path.join(self.bin_dir, tool), *args],
                              capture_output=True, text=True, timeout=timeout, check=True)

    def init(self) -> None:
        self._as_postgres("initdb", "-D", str(self.data), "--auth=trust", "--username=postgres", "--encoding=UTF8")

    def start(self) -> None:
        self._as_postgres("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start", "-o",
                          f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
                          "-c synchronous_commit=off")

    def stop(self) -> None:
        self._as_postgres("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def accepting(self) -> bool:
        return subprocess.run([os.path.join(self.bin_dir, "pg_isready"), "-q", "-h", "127.0.0.1", "-p",
                               str(self.port)]).returncode == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def private_postgres():
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("a private PostgreSQL server needs Linux and root (it runs as the postgres user)")
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL binaries in /usr/lib/postgresql/*/bin (tests/cluster/start-postgres.sh installs them)")
    pytest.importorskip("psycopg2")
    # Not under tmp_path: pytest's temporary root is private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="seedrun-pg-outage-"))
    shutil.chown(root, "postgres", "postgres")
    server = PrivateServer(bin_dir, root, _free_port())
    try:
        server.init()
        server.start()
        yield server
    finally:
        if server.accepting():
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _distill_folder(home: Path) -> tuple[Path, dict] | tuple[None, None]:
    for path in (home / "runs").glob("*/run.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("stage") == "distill":
            return path.parent, record
    return None, None


def test_a_postgres_server_down_past_the_retry_window_never_fails_a_run(tmp_path, home, private_postgres):
    server = private_postgres
    epochs = 40  # about half a second each on 2 cores: training outlasts the outage even on a loaded machine
    sweep = write_sweep(tmp_path / "outage.yaml", "name: outage\nbase:\n"
                        + "".join(f"  - {override}\n" for override in TINY_BASE + [f"distill.epochs={epochs}"])
                        + "grid:\n  distill.tau_teacher: [0.01]\n")
    env = {**os.environ, "SEEDRUN_HOME": str(home), "SEEDRUN_DB": server.url, "SEEDRUN_DB_BUSY_S": "1",
           "COLUMNS": "200"}
    sweep_out = tmp_path / "sweep.out"
    with open(sweep_out, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "seedrun", "sweep", str(sweep)], cwd=ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        # The distillation run trains: its folder has recorded an epoch (and so has the database).
        deadline = time.monotonic() + 300
        run_dir, record = None, None
        while time.monotonic() < deadline and process.poll() is None:
            run_dir, record = _distill_folder(home)
            if record is not None and record.get("state") == "running" and record.get("epoch", 0) >= 1:
                break
            time.sleep(0.2)
        assert record is not None and record.get("epoch", 0) >= 1, sweep_out.read_text()
        epoch_down = record["epoch"]
        server.stop()
        down_at = time.monotonic()
        assert not server.accepting()
        while time.monotonic() < down_at + DOWN_S:
            time.sleep(0.2)
        during = json.loads((run_dir / "run.json").read_text())
        server.start()
        assert process.poll() is None, "training ended while the server was down: give it more epochs"
        assert during["state"] == "running" and during["epoch"] > epoch_down  # it trained on, recording to its folder
        assert "database" not in (run_dir / "log.txt").read_text()  # the job never knew
        process.wait(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    output = sweep_out.read_text()
    assert process.returncode == 0, output
    assert "completed 2  failed 0  blocked 0" in output, output

    # The database's record is whole: state, epoch, and one metric row per value the folder recorded.
    import psycopg2

    folder = json.loads((run_dir / "run.json").read_text())
    assert (folder["state"], folder["epoch"]) == ("completed", epochs)
    expected = sorted((name, float(value), line["epoch"]) for line in map(json.loads, (run_dir / "metrics.jsonl")
                      .read_text().splitlines()) for name, value in line.items() if name != "epoch"
                      and isinstance(value, (int, float)))
    expected += sorted((name, float(value), epochs) for name, value in folder["results"].items())
    assert len({epoch for _, _, epoch in expected}) == epochs
    with psycopg2.connect(server.url.replace("postgresql+psycopg2", "postgresql")) as db, db.cursor() as cursor:
        cursor.execute("SELECT id, state, epoch, finished_at, error FROM runs WHERE hash = %s", (folder["hash"],))
        run_id, state, epoch, finished_at, error = cursor.fetchone()
        cursor.execute("SELECT name, value, epoch FROM metrics WHERE run_id = %s", (run_id,))
        rows = sorted(cursor.fetchall())
    assert (state, epoch, finished_at is not None, error) == ("completed", epochs, True, None)
    assert rows == sorted(expected)
