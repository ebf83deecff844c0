"""One live attempt per run: Ctrl-C during a submission leaves no job the database does not know; a new
submission starts the budgets afresh; two attempts on one run: exactly one trains (the lease); `status`
judges a local run only on the host that started it."""

from __future__ import annotations

import json
import os
import signal
import sqlite3

from conftest import TINY_SWEEP_BASE, write_sweep
from test_submit_unit import FAKE_SBATCH, StepJob, fake_slurm, one_run, run_row

__all__ = ["fake_slurm"]  # the fixture, shared with test_submit_unit

# sbatch is interrupted while it queues the second array: Ctrl-C reaches seedrun (its parent) mid-call
INTERRUPTING_SBATCH = FAKE_SBATCH.replace('echo "Submitted batch job $n"',
                                          '[ "$n" = 1001 ] && kill -INT $PPID && sleep 0.5\necho "Submitted batch job $n"')


def test_ctrl_c_in_the_middle_of_a_3_array_submission_leaves_no_unrecorded_job(cli, fake_slurm, tmp_path):
    (fake_slurm.parent / "fake-bin" / "sbatch").write_text(INTERRUPTING_SBATCH)
    cli.env.update(PATH=os.environ["PATH"], FAKE_SLURM_DIR=str(fake_slurm), FAKE_MAX_ARRAY_SIZE="2")
    path = write_sweep(tmp_path / "three.yaml", "name: three\n" + TINY_SWEEP_BASE
                       + "grid:\n  distill.tau_teacher: [0.3, 0.1, 0.05, 0.01]\nlauncher: {name: slurm}\n")
    dry = json.loads(cli("sweep", str(path), "--dry-run", "--json").stdout)
    assert [a["tasks"] for a in dry["arrays"]] == [1, 2, 2]  # three arrays, three sbatch calls

    result = cli("sweep", str(path), check=False)
    assert result.returncode == 130, result.stdout + result.stderr
    assert "interrupted" in result.stdout and "Traceback" not in result.stderr
    queued = sorted(p.stem.removeprefix("sbatch_") for p in fake_slurm.glob("sbatch_*.sh"))
    assert queued == ["1000", "1001"]  # the third array was not submitted after Ctrl-C
    with sqlite3.connect(cli.db) as db:
        rows = db.execute("select state, job_id from runs").fetchall()
    cancelled = (fake_slurm / "scancel.calls").read_text().split() if (fake_slurm / "scancel.calls").exists() else []
    recorded = {job_id.partition("_")[0] for _, job_id in rows if job_id}
    assert all(job in recorded or job in cancelled for job in queued)  # recorded or cancelled, never neither
    assert sorted(state for state, _ in rows) == ["pending", "pending", "submitted", "submitted", "submitted"]
    # the next sweep submits only the rest, waiting on nothing it does not know
    again = cli("sweep", str(path))
    assert "submitted 2 runs as 1 Slurm job" in again.stdout


def test_ctrl_c_is_deferred_only_while_arrays_are_submitted():
    import io

    from rich.console import Console

    from seedrun.launchers.slurm import interrupts_deferred

    before = signal.getsignal(signal.SIGINT)
    with interrupts_deferred(Console(file=io.StringIO())) as interrupted:
        os.kill(os.getpid(), signal.SIGINT)
        assert interrupted == [signal.SIGINT]
    assert signal.getsignal(signal.SIGINT) is before


def test_a_new_submission_resets_the_budgets_even_when_its_task_starts_first(home):
    run_hash, db_url = one_run(home, max_preemptions=1)
    with sqlite3.connect(home / "seedrun.db") as db:  # an earlier submission spent its budget and left an attempt open
        db.execute("update runs set state = 'submitted', provenance = ? where hash = ?",
                   (json.dumps({"attempt_open": True, "preemptions": 1, "timeouts": 3, "failures": 2,
                                "submission": {"id": "old"}}), run_hash))
    job = StepJob(run_hash, db_url)
    job.submission = "new"  # started before `seedrun sweep` recorded the new submission
    assert job() == {"knn_top1": 50.0}
    row = run_row(db_url, run_hash)
    prov = row["provenance"]
    assert row["state"] == "completed"
    assert (prov["preemptions"], prov["timeouts"], prov["failures"], prov["submission"]["id"]) == (0, 0, 0, "new")


def test_the_same_submission_keeps_counting(home):
    run_hash, db_url = one_run(home, max_preemptions=1)
    with sqlite3.connect(home / "seedrun.db") as db:
        db.execute("update runs set state = 'submitted', provenance = ? where hash = ?",
                   (json.dumps({"attempt_open": True, "preemptions": 1, "submission": {"id": "same"}}), run_hash))
    job = StepJob(run_hash, db_url)
    job.submission = "same"  # requeued within its submission: the open attempt is a second preemption
    assert job() == {}
    row = run_row(db_url, run_hash)
    assert (row["state"], row["failure_reason"], row["provenance"]["preemptions"]) == ("failed", "preempted", 2)
