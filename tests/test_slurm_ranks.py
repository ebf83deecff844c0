"""Two tasks per run on the real one-node Slurm test cluster (`tasks_per_node: 2`, gloo on CPU): the teacher
pre-trains on rank 0 alone, the student distils on both ranks, and each run is recorded once, by rank 0.
About 90 s."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import sys
from pathlib import Path

import cloudpickle
import pytest

from conftest import TINY_BASE, job_hooks, write_sweep
from seedrun.job.run_job import RunJob
from test_slurm_sweep import provenance, run_dir, settled, status, sweep_text, teacher_file, wait_for

__all__ = ["teacher_file"]  # the fixture, shared with test_slurm_sweep

pytestmark = pytest.mark.slurm

# RankOneFailedFirst below is unpickled by the job in a fresh interpreter where tests/ is not importable.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


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

    # CI's machine once finished all 8 epochs between the test's look and its signal (scancel: "Invalid
    # job id"): paced steps keep the run going for seconds past any look, on any machine.
    job_hooks(cli, tmp_path, STEP_PACE_S="0.2")
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


@pytest.mark.parametrize("fault, reason, says", [("raise", "exception", "rank 1 raised ValueError: injected on this rank"),
                                                  ("kill", "killed", "rank 1 was killed")])
def test_a_rank_that_fails_at_step_5_fails_the_run_with_its_class_within_60_s(slurm_cluster, cli, tmp_path, teacher_file,
                                                                               fault, reason, says):
    """srun's --kill-on-bad-exit ends the step when rank 1 dies, often before rank 0 can record anything:
    then `seedrun status` finds the job FAILED in Slurm and takes the class from the failing rank's record
    in the run folder (or, with no record, from the signal that ended the step)."""
    import time

    marker = tmp_path / "fault"
    job_hooks(cli, tmp_path, FAULT=fault, FAULT_RANK="1", FAULT_MARKER=str(marker))
    teacher, _ = teacher_file
    base = [o for o in TINY_BASE if not o.startswith(("teacher.pretrain", "distill.epochs"))]
    base += [f"teacher.checkpoint={teacher}", "distill.epochs=20"]
    path = write_sweep(tmp_path / "fail.yaml", sweep_text("fail", base, {"tasks_per_node": 2, "max_failures": 0}))
    cli("sweep", str(path))
    wait_for(lambda: marker.exists(), bool, 180, every_s=0.5)
    assert marker.exists(), "rank 1 never reached step 5"
    report = wait_for(lambda: status(cli), settled, 60, every_s=1)
    recorded = time.time()
    (run,) = report["runs"]
    assert run["state"] == "failed", run
    assert recorded - marker.stat().st_mtime < 60
    with sqlite3.connect(cli.db) as db:
        failure_reason, error = db.execute("select failure_reason, error from runs").fetchone()
    assert failure_reason == reason and says in error, (failure_reason, error)


class RankOneFailedFirst(RunJob):
    """What the job leaves when srun ends rank 0 before it can record, and a step that exits non-zero
    (Slurm: FAILED): rank 1's failure record in the run folder; or, rank 1 of another node killed, only its
    process record, beside rank 0's broken collective."""

    def _train(self, stage, config, run_dir, hooks, teacher_dir):
        from seedrun.job.ranks import write_failure

        if os.environ.get("RANK_1") == "killed":
            (Path(run_dir) / "process.rank1.json").write_text(json.dumps(
                {"rank": 1, "host": "node-b", "pid": 4242, "pid_start": "1"}))
            write_failure(Path(run_dir), 0, RuntimeError("[gloo] Connection closed by peer"))
        else:
            write_failure(Path(run_dir), 1, MemoryError("CUDA out of memory (injected on rank 1)"))
        os._exit(1)


@pytest.mark.parametrize("rank_1, reason, says", [
    ("raised", "out_of_memory", "rank 1 raised MemoryError: CUDA out of memory (injected on rank 1)"),
    ("killed", "killed", "rank 1 was killed: process 4242 on node-b left no failure record")])
def test_a_failed_job_whose_rank_0_recorded_nothing_takes_the_failing_ranks_class(slurm_cluster, home, monkeypatch,
                                                                                  rank_1, reason, says):
    from rich.console import Console

    from seedrun.launchers.reconcile import reconcile
    from seedrun.launchers.slurm import submit_slurm
    from seedrun.store.plan import read_plan, record
    from seedrun.store.records import load_records
    from seedrun.sweeps.spec import RunSpec
    from seedrun.sweeps.sweep_file import Sweep

    monkeypatch.setenv("RANK_1", rank_1)  # sbatch exports it to the job
    db_url = f"sqlite:///{home / 'seedrun.db'}"
    launcher = {"name": "slurm", "partition": "debug", "cpus_per_task": 1, "timeout_min": 10, "max_failures": 0}
    sweep = Sweep(name="rankfail", path="rankfail", ablation=None, runs=[RunSpec("pretrain", {"launcher": launcher})],
                  axes=[], launcher=launcher)
    record(read_plan(sweep, db_url), db_url)
    plan = read_plan(sweep, db_url)
    out = io.StringIO()
    assert submit_slurm(plan, plan.to_run(), db_url, None, Console(file=out, width=200), job_factory=RankOneFailedFirst)

    def the_run():
        reconcile(db_url)
        return load_records(db_url, sweep="rankfail")[0]

    run = wait_for(the_run, lambda r: r.state not in ("submitted", "running"), 120)
    assert (run.state, run.failure_reason) == ("failed", reason), (run.state, run.failure_reason, run.error)
    assert says in run.error
    assert "Slurm: FAILED" in run.error  # and what Slurm said
