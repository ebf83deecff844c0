"""Two tasks per run on the real one-node Slurm test cluster (`tasks_per_node: 2`, gloo on CPU): the teacher
pre-trains on rank 0 alone, the student distils on both ranks, and each run is recorded once, by rank 0.
About 40 s."""

from __future__ import annotations

import json
import sqlite3

import pytest

from conftest import TINY_BASE, write_sweep
from test_slurm_sweep import provenance, run_dir, settled, status, sweep_text, teacher_file, wait_for

__all__ = ["teacher_file"]  # the fixture, shared with test_slurm_sweep

pytestmark = pytest.mark.slurm


def test_a_two_task_run_completes_and_is_recorded_once_by_rank_0(slurm_cluster, cli, tmp_path):
    base = [o for o in TINY_BASE if not o.startswith("distill.epochs")] + ["distill.epochs=2"]
    path = write_sweep(tmp_path / "two.yaml", sweep_text("two", base, {"tasks_per_node": 2}))
    assert "submitted 2 runs" in cli("sweep", str(path)).stdout
    report = wait_for(lambda: status(cli), settled, 240, every_s=1)
    assert [run["state"] for run in report["runs"]] == ["completed"] * 2, report
    with sqlite3.connect(cli.db) as db:
        rows = db.execute("select hash, stage, attempts, provenance from runs").fetchall()
    assert len(rows) == 2
    for run_hash, stage, attempts, prov in rows:
        assert attempts == 1 and json.loads(prov)["world"] == 2
        folder = run_dir(cli, run_hash)
        assert len((folder / "metrics.jsonl").read_text().splitlines()) == (1 if stage == "pretrain" else 2)
        rank1 = (folder / "log.rank1.txt").read_text()
        assert "rank 1 of 2" in rank1 and "rank 0 alone" not in rank1  # both stages train on every rank
        assert "epoch 2/2" in rank1 if stage == "distill" else "epoch 1/1" in rank1


def test_a_two_task_run_survives_scontrol_requeue_and_usr2_once_each(slurm_cluster, cli, tmp_path, teacher_file):
    """The whole job stops together and is requeued once for each: `scontrol requeue` (SIGTERM to both
    tasks, Slurm kills and reruns the job) and submitit's `_interrupt()` (SIGTERM then USR2: rank 0
    checkpoints at a step boundary and requeues); the run resumes both times and is recorded once."""
    import subprocess

    from submitit.slurm.slurm import SlurmJob

    teacher, _ = teacher_file
    base = [o for o in TINY_BASE if not o.startswith(("teacher.pretrain", "distill.epochs"))]
    base += [f"teacher.checkpoint={teacher}", "distill.epochs=8", "distill.checkpoint_every_steps=3"]
    path = write_sweep(tmp_path / "survive.yaml", sweep_text("survive", base, {"tasks_per_node": 2}))
    cli("sweep", str(path))

    def the_run():
        return status(cli)["runs"][0]

    first = wait_for(the_run, lambda r: r["state"] == "running" and r["epoch"] >= 1, 120)
    assert first["state"] == "running", first
    subprocess.run(["scontrol", "requeue", first["job_id"]], check=True)
    # rerun (attempt 2 counts the killed one as a preemption), then training again past where it was
    again = wait_for(lambda: (provenance(cli)[first["hash"]], the_run()),
                     lambda pr: pr[0]["attempts"] >= 2 and pr[1]["state"] == "running" and pr[1]["epoch"] > first["epoch"],
                     180, every_s=1)
    assert again[0]["attempts"] == 2 and again[0]["preemptions"] == 1, again
    SlurmJob(folder=tmp_path, job_id=first["job_id"])._interrupt()

    report = wait_for(lambda: status(cli), settled, 240, every_s=1)
    (run,) = report["runs"]
    assert run["state"] == "completed", run
    prov = provenance(cli)[run["hash"]]
    assert prov["attempts"] == 3 and prov["preemptions"] == 2 and prov.get("timeouts", 0) == 0, prov
    assert prov["world"] == 2 and prov["layout"] == "2x1 cpu" and prov["gpu_hours"] == 0
    folder = run_dir(cli, run["hash"])
    epochs = [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 9))  # each epoch recorded once, by rank 0, across three attempts
    log = (folder / "log.txt").read_text()
    assert "stopped on SIGTERM" in log and "requeueing after a preemption" in log
    assert log.count("resumed from step") == 2
    assert (folder / "log.rank1.txt").read_text().count("rank 1 of 2") == 3  # rank 1 took part in each attempt
    with sqlite3.connect(cli.db) as db:
        assert db.execute("select count(*) from runs").fetchone()[0] == 1
