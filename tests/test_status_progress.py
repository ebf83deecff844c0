"""Live progress in `seedrun status`: for each run that trains, its epoch of epochs, the last epoch's
pace and the time left at that pace; `status --watch` redraws until no run is pending or in flight."""

from __future__ import annotations

import subprocess
import sys
import time

from conftest import ROOT, edit_record, open_attempts
from seedrun.views.progress import duration, eta_seconds


def test_time_left_is_the_remaining_epochs_at_the_last_epochs_pace():
    assert eta_seconds(3, 10, 60.0) == 420.0
    assert eta_seconds(0, 10, None) is None and eta_seconds(10, 10, 60.0) is None and eta_seconds(2, None, 5) is None
    assert [duration(s) for s in (None, 42, 420, 7 * 3600 + 120, 3 * 86400 + 5 * 3600)] == ["-", "42s", "7m", "7h02m",
                                                                                         "3d05h"]


def _running_run(cli) -> tuple[str, object]:
    from seedrun.store.engine import session_scope
    from seedrun.store.schema import Run

    url = f"sqlite:///{cli.db}"
    config = {"stage": "distill", "seed": 0, "distill": {"epochs": 10, "strategy": "seed"}, "data": {"name": "tiny"}}
    with session_scope(url) as session:
        session.add(Run(hash="cd" * 32, stage="distill", run_dir=str(cli.home / "runs" / ("cd" * 8)), config=config,
                        provenance={}))
    attempt = open_attempts(url, ["cd" * 32])["cd" * 32]
    edit_record(attempt.run_dir, state="running", epoch=3,
                summary={"loss": 4.2, "images_per_s": 251.4, "epoch_seconds": 60.0})
    return url, attempt


def test_status_shows_each_training_runs_epoch_pace_and_time_left(cli):
    _running_run(cli)
    out = cli("status").stdout
    assert "training" in out
    line = next(line for line in out.splitlines() if line.startswith("  cdcdcdcdcdcd"))
    assert line.split() == ["cdcdcdcdcdcd", "3/10", "251", "images/s", "7m"], line


def test_status_watch_redraws_until_every_run_has_ended(cli):
    _, attempt = _running_run(cli)
    watch = subprocess.Popen([sys.executable, "-m", "seedrun", "status", "--watch", "0.2"], cwd=ROOT, env=cli.env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(2)
    assert watch.poll() is None  # a run is in flight: it goes on redrawing
    edit_record(attempt.run_dir, state="completed", epoch=10, summary={"knn_top1": 61.0})
    out = watch.communicate(timeout=60)[0]
    assert watch.returncode == 0, out
    assert out.count("every 0.2 s") >= 2  # redrawn
    assert out.rstrip().splitlines()[-1].startswith("(every") and "completed 1" in out.split("training")[-1]
    bad = subprocess.run([sys.executable, "-m", "seedrun", "status", "--watch", "0"], cwd=ROOT, env=cli.env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--watch" in bad.stderr


def test_status_totals_the_device_hours_each_sweep_used(cli):
    from seedrun.store.engine import session_scope
    from seedrun.store.schema import Run, Sweep, SweepRun
    from seedrun.views.progress import _used

    url = f"sqlite:///{cli.db}"
    with session_scope(url) as session:
        sweep = Sweep(name="paper", path="paper.yaml", axes=[])
        runs = [Run(hash=f"{i:064x}", stage="distill", run_dir=str(cli.home / f"r{i}"), config={"i": i}, state="completed",
                    provenance=provenance) for i, provenance in enumerate([
                        {"gpus_used": 8, "gpu_hours": 2.5, "wall_hours": 0.3125, "training_ranks": 8},
                        {"gpus_used": 0, "wall_hours": 1.0, "training_ranks": 2}, {}])]
        session.add_all([sweep, *runs])
        session.flush()
        session.add_all(SweepRun(sweep_id=sweep.id, run_id=run.id, position=i) for i, run in enumerate(runs[:2]))
        runs[2].provenance = {"gpus_used": 1, "gpu_hours": 0.5}  # in no sweep; written by an update (the trigger)
    out = cli("status").stdout
    assert "  paper: 2.0 CPU-hours, 2.5 GPU-hours" in out and "  (no sweep): 0.5 GPU-hours" in out, out
    assert _used({"gpus_used": 8, "gpu_hours": 2.5}) == ("gpu", 2.5)  # what PostgreSQL's status sums
    assert _used({"wall_hours": 1.0, "training_ranks": 2}) == ("cpu", 2.0) and _used({}) == ("cpu", None)
