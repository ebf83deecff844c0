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


# Loaded by every Python process of the job (PYTHONPATH travels with sbatch's exported environment).
# STEP_PACE_S: every step takes at least that long, so that a run outlasts the test's look at it and the
# signal it then sends, however fast the machine. FAULT: acts only in the task whose SLURM_PROCID it is
# told, at distillation step 5.
JOB_SITECUSTOMIZE = '''
import os
if os.environ.get("SLURM_PROCID") is not None:  # a task of the job, not the seedrun command (no torch there)
    import seedrun.training.loop as loop
    if os.environ.get("STEP_PACE_S"):
        import time
        unpaced = loop.Loop.after_step

        def paced(self, step, state):
            time.sleep(float(os.environ["STEP_PACE_S"]))
            return unpaced(self, step, state)
        loop.Loop.after_step = paced
    if os.environ.get("FAULT") and os.environ["SLURM_PROCID"] == os.environ.get("FAULT_RANK"):
        import signal
        from pathlib import Path
        marker = Path(os.environ["FAULT_MARKER"])
        after_step = loop.Loop.after_step

        def faulty(self, step, state):
            if step == 5 and not marker.exists():
                marker.write_text(str(os.getpid()))
                if os.environ["FAULT"] == "raise":
                    raise ValueError("injected on this rank")
                os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would: no exception, no record
            return after_step(self, step, state)
        loop.Loop.after_step = faulty
'''


def job_hooks(cli: CLI, tmp_path: Path, **env: str) -> None:
    """Every Python process of the jobs `cli` submits loads JOB_SITECUSTOMIZE, driven by `env`."""
    site = tmp_path / "job-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(JOB_SITECUSTOMIZE)
    cli.env.update(PYTHONPATH=str(site), **env)


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
