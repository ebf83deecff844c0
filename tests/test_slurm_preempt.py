"""A real preemption on the test cluster (PreemptMode=CANCEL, tests/cluster/start-slurm.sh): the job ends
PREEMPTED, and `seedrun status` puts its run back in the queue within its budget or fails it by budget;
never "running" forever.

Two runs train in partition "preemptible" (max_preemptions 0 and 1); a job of partition "urgent" that
wants every CPU of the node preempts both. Needs root on Linux (the slurm_cluster fixture).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import TINY_BASE, write_sweep
from test_slurm_sweep import provenance, status, sweep_text, teacher_file, wait_for

pytestmark = pytest.mark.slurm
__all__ = ["teacher_file"]  # the fixture, shared with test_slurm_sweep


def test_a_preempted_run_is_requeued_within_its_budget_or_fails_by_it(slurm_cluster, cli, tmp_path, teacher_file):
    from seedrun.launchers import cluster

    teacher, _ = teacher_file
    base = [o for o in TINY_BASE if not o.startswith(("teacher.pretrain", "distill.epochs"))]
    base += [f"teacher.checkpoint={teacher}", "distill.epochs=500", "distill.checkpoint_every_steps=3"]
    path = write_sweep(tmp_path / "preempt.yaml", sweep_text(
        "preempt", base, {"partition": "preemptible"},
        grid="zip:\n  seed: [0, 1]\n  launcher.max_preemptions: [0, 1]\n"))
    cli("sweep", str(path))
    urgent = None
    try:
        runs = wait_for(lambda: status(cli)["runs"], lambda r: all(run["state"] == "running" and run["epoch"] >= 1
                                                                 for run in r), 120)
        assert all(run["state"] == "running" for run in runs), runs
        by_seed = {run["axes"]["seed"]: run for run in runs}
        cpus = subprocess.run(["sinfo", "-h", "-n", "localhost", "-o", "%c"], capture_output=True, text=True,
                              check=True).stdout.split()[0]
        urgent = subprocess.run(["sbatch", "--parsable", "-p", "urgent", "-c", cpus, "-o", "/dev/null",
                                 "--wrap", "sleep 5"], capture_output=True, text=True, check=True).stdout.strip()
        jobs = [run["job_id"] for run in runs]
        ended = wait_for(lambda: cluster.query_states(jobs), lambda s: all(s[j].state is cluster.State.PREEMPTED
                                                                            for j in jobs), 180, every_s=1)
        assert all(ended[j].state is cluster.State.PREEMPTED for j in jobs), ended  # Slurm's own end, for real

        after = {run["axes"]["seed"]: run for run in status(cli)["runs"]}  # status reconciles
        spent, kept = after[0], after[1]
        assert (spent["state"], spent["failure_reason"]) == ("failed", "preempted"), spent
        assert "preemption budget spent: 1 preemptions > max_preemptions=0" in spent["error"]
        assert kept["state"] == "submitted" and kept["job_id"] == by_seed[1]["job_id"], kept  # requeued, same job
        # the requeued job runs again, resumes and counts its preemption (1 of 1)
        again = wait_for(lambda: provenance(cli)[kept["hash"]], lambda p: p["attempts"] >= 2 and p.get("attempt_open"),
                         120, every_s=1)
        assert again["attempts"] == 2 and again["preemptions"] == 1, json.dumps(again)[:500]
        assert next(r for r in status(cli)["runs"] if r["hash"] == kept["hash"])["state"] == "running"
    finally:
        ids = [run["job_id"] for run in status(cli)["runs"] if run["job_id"]] + ([urgent] if urgent else [])
        subprocess.run(["scancel", *ids], capture_output=True)
