"""A killed local run resumes at once: SIGKILL the job mid-epoch (a crash, an OOM kill), run
`seedrun sweep --retry-failed` straight away, twice in a row: each retry takes the dead job's lease over
without waiting for it to go stale, resumes from the checkpoint, and the run ends bit-identical to one
that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CLI, ROOT, TINY_BASE, write_sweep

pytestmark = pytest.mark.slow

SWEEP = "name: killed\nbase:\n" + "".join(f"  - {override}\n" for override in TINY_BASE + [
    "distill.epochs=2", "distill.checkpoint_every_steps=3"]) + "grid:\n  distill.tau_teacher: [0.01]\n"


def _student_dir(home: Path) -> Path:
    for record in (home / "runs").glob("*/run.json"):
        if json.loads(record.read_text()).get("stage") == "distill":
            return record.parent
    return home / "runs" / "none"


def _sweep(cli: CLI, path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "seedrun", "sweep", str(path), *args], cwd=ROOT, env=cli.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_at_a_checkpoint_after(cli: CLI, sweep: subprocess.Popen, after: float) -> int:
    """SIGKILL the student's job as soon as it writes a checkpoint newer than `after` (mid-epoch: every
    3 steps of 10); returns the killed pid."""
    student = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and sweep.poll() is None:
        student = student if student is not None and student.exists() else _student_dir(cli.home)
        checkpoint, lease = student / "checkpoint.pt", student / "lease.json"
        try:
            if checkpoint.stat().st_mtime > after and lease.exists():
                pid = json.loads(lease.read_text())["pid"]
                os.kill(pid, signal.SIGKILL)
                return pid
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.005)
    pytest.fail(f"no checkpoint to kill at: {sweep.communicate()[0]}")


def _weights(run_dir: Path) -> dict:
    import torch

    return torch.load(run_dir / "model.pt", map_location="cpu", weights_only=False)


def _same(a, b) -> bool:
    import torch

    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def test_a_run_killed_twice_mid_epoch_resumes_at_once_and_ends_bit_identical(tmp_path):
    path = write_sweep(tmp_path / "killed.yaml", SWEEP)
    whole = CLI(tmp_path / "whole")
    whole("sweep", str(path))

    cli = CLI(tmp_path / "killed")
    cli.env["SEEDRUN_LEASE_STALE_S"] = "3600"  # a takeover that waited for staleness would hang the test
    sweep = _sweep(cli, path)
    last = 0.0
    for retry in (1, 2):
        _kill_at_a_checkpoint_after(cli, sweep, last)
        last = (_student_dir(cli.home) / "checkpoint.pt").stat().st_mtime
        out = sweep.communicate(timeout=300)[0]
        assert sweep.returncode == 1 and "failed 1" in out, out
        assert json.loads((_student_dir(cli.home) / "run.json").read_text())["state"] == "running"  # killed
        started = time.monotonic()
        sweep = _sweep(cli, path, "--retry-failed")
    out = sweep.communicate(timeout=300)[0]
    assert sweep.returncode == 0 and "completed 1  failed 0" in out, out
    assert time.monotonic() - started < 240

    student = _student_dir(cli.home)
    log = (student / "log.txt").read_text()
    assert log.count("taking over the run from") == 2 and log.count("is gone") == 2, log
    assert log.count("resum") >= 2, log
    record = json.loads((student / "run.json").read_text())
    assert record["state"] == "completed" and record["version"][0] == 3  # three attempts
    reference = _student_dir(whole.home)
    assert student.name == reference.name
    assert _same(_weights(student), _weights(reference))
    assert record["results"] == json.loads((reference / "run.json").read_text())["results"]
    runs = {run["hash"]: run for run in json.loads(cli("status", "--json").stdout)["runs"]}
    assert {run["state"] for run in runs.values()} == {"completed"}
