"""Shared fixtures: an isolated SEEDRUN_HOME and database per test, and the CLI as a user types it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["slurm_fixtures"]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _one_thread():
    # The suite runs on 2 cores; tests that train set their own threads through the config.
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh SEEDRUN_HOME (runs, database) for one test."""
    path = tmp_path / "home"
    monkeypatch.setenv("SEEDRUN_HOME", str(path))
    monkeypatch.delenv("SEEDRUN_DB", raising=False)
    return path


class CLI:
    def __init__(self, home: Path, cwd: Path = ROOT):
        self.home, self.cwd = home, cwd
        self.env = {**os.environ, "SEEDRUN_HOME": str(home), "COLUMNS": "200"}
        self.env.pop("SEEDRUN_DB", None)

    @property
    def db(self) -> Path:
        return self.home / "seedrun.db"

    def __call__(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "seedrun", *args], cwd=self.cwd, env=self.env,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"seedrun {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result


@pytest.fixture
def cli(home) -> CLI:
    return CLI(home)


TINY_BASE = [
    "data=tiny", "teacher.width=8", "student.width=8",
    "teacher.pretrain.epochs=1", "teacher.pretrain.batch_size=32", "teacher.pretrain.queue_size=128",
    "distill.epochs=1", "distill.batch_size=32", "distill.queue_size=128", "distill.warmup_epochs=0",
    "threads=1",
]


# The same tiny set-up as a sweep file's `base:` block (batch and queue sizes that fit 320 images).
TINY_SWEEP_BASE = """base:
  data: tiny
  distill.batch_size: 32
  distill.queue_size: 128
  teacher.pretrain.batch_size: 32
  teacher.pretrain.queue_size: 128
"""


def write_sweep(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def open_attempts(db_url: str, hashes: list[str]) -> dict:
    """What a launcher does before it starts a job: each run moves to `submitted` at a new attempt and its
    folder gets that attempt's record (seedrun.store.attempts); {hash: Attempt} for the runs it took."""
    from seedrun.store.attempts import Attempt, claim
    from seedrun.store.engine import write

    def body(db):
        claimed = {run_hash: claim(db, run_hash) for run_hash in hashes}
        return {run_hash: attempt for run_hash, attempt in claimed.items() if isinstance(attempt, Attempt)}

    return write(db_url, body)


def attempt_job(job_class, db_url: str, run_hash: str, data_root=None):
    """A job of `job_class` for a new attempt of the run, as a launcher submits it."""
    attempt = open_attempts(db_url, [run_hash])[run_hash]
    return job_class(run_hash, attempt.run_dir, data_root, attempt.number)


def edit_record(run_dir, **values) -> dict:
    """Change a run's folder record as its job would (the next version of the same attempt)."""
    from seedrun.job.recording import save_record
    from seedrun.store.folders import read_record

    record = read_record(str(run_dir))
    record.update(values)
    save_record(str(run_dir), record)
    return record
