"""Two nodes on the real Slurm test cluster (tests/cluster/start-slurm.sh runs two slurmd on this host, nodes
`localhost` and `seedrun-n2`, both in partition debug): a `nodes: 2` distillation (gloo on the CPU, one task a
node) trains on both nodes, is recorded once by rank 0, and survives `scontrol requeue`; and requests are checked
against the nodes as the real sinfo reports them. Needs root on Linux (the slurm_cluster fixture). About a minute."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess

import pytest

from conftest import TINY_BASE, job_hooks, write_sweep
from test_slurm_sweep import provenance, run_dir, settled, status, sweep_text, teacher_file, wait_for

__all__ = ["teacher_file"]  # the fixture, shared with test_slurm_sweep

pytestmark = pytest.mark.slurm


@pytest.fixture
def nodes(slurm_cluster) -> set[str]:
    return set(slurm_cluster.nodes)


def _nodes_of(job_id: str) -> set[str]:
    """The nodes Slurm gave the job, expanded by Slurm itself from its node list."""
    from seedrun.launchers.cluster import query_states

    nodelist = query_states([job_id])[job_id].nodelist
    names = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return set(names.stdout.split())


def test_the_test_cluster_has_two_nodes_whose_names_resolve(nodes):
    import socket

    listed = subprocess.run(["sinfo", "-h", "-N", "-p", "debug", "-o", "%N"], capture_output=True, text=True, check=True)
    assert set(listed.stdout.split()) == nodes
    for name in nodes:  # MASTER_ADDR is the first node of a job's node list: every name must resolve
        assert socket.gethostbyname(name).startswith("127.")


def test_a_two_node_run_trains_on_both_nodes_is_recorded_once_and_survives_scontrol_requeue(
        nodes, cli, tmp_path, teacher_file):
    teacher, _ = teacher_file
    base = [o for o in TINY_BASE if not o.startswith(("teacher.pretrain", "distill.epochs"))]
    base += [f"teacher.checkpoint={teacher}", "distill.epochs=6", "distill.checkpoint_every_steps=3"]
    job_hooks(cli, tmp_path, STEP_PACE_S="0.2")  # the run outlasts the test's look, however fast the machine
    path = write_sweep(tmp_path / "nodes.yaml", sweep_text("nodes", base, {"nodes": 2, "tasks_per_node": 1}))
    out = cli("sweep", str(path)).stdout
    assert "submitted 1 runs" in out and "request distill: fits partition debug: 2 nodes" in out, out

    def the_run():
        return status(cli)["runs"][0]

    first = wait_for(the_run, lambda r: r["state"] == "running" and r["epoch"] >= 1, 180)
    assert first["state"] == "running", first
    assert _nodes_of(first["job_id"]) == nodes  # one task on each node
    subprocess.run(["scontrol", "requeue", first["job_id"]], check=True)
    report = wait_for(lambda: status(cli), settled, 300, every_s=1)
    (run,) = report["runs"]
    assert run["state"] == "completed", run
    prov = provenance(cli)[run["hash"]]
    assert prov["attempts"] == 2 and prov["preemptions"] == 1, prov
    assert prov["world"] == 2 and prov["nodes"] == 2 and prov["ranks_per_node"] == 1, prov
    folder = run_dir(cli, run["hash"])
    epochs = [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 7))  # each epoch recorded once, by rank 0, across both attempts
    assert (folder / "log.txt").read_text().count("resumed from step") == 1
    assert (folder / "log.rank1.txt").read_text().count("rank 1 of 2") == 2  # rank 1 trained in both attempts
    # submitit's own log of each task names the node it ran on (SLURM_NODEID): rank 1 on the second node
    logs = {p.name: p.read_text() for p in (cli.home / "submitit").rglob("*_log.out")}
    seen = {(int(m.group(2)), int(m.group(1))) for text in logs.values()
            for m in re.finditer(r"node=(\d+)\(2\), global_rank=(\d+)\(2\)", text)}
    assert seen == {(0, 0), (1, 1)}, logs.keys()
    assert _nodes_of(first["job_id"]) == nodes  # the requeued attempt had both nodes too
    with sqlite3.connect(cli.db) as db:
        assert db.execute("select count(*) from runs").fetchone()[0] == 1


def test_requests_are_checked_against_the_nodes_sinfo_reports(slurm_cluster, cli, tmp_path):
    """The paper sweep fits the test cluster's 8-GPU-shaped nodes; four nodes of partition debug (it has two) and
    nine GPUs a node do not, each one line naming the key, with nothing recorded: no row, no folder."""
    fits = cli("sweep", "sweeps/temperature.yaml", "--dry-run")
    assert "request distill: fits partition debug (default): 2 nodes with 8 GPUs, 128 CPUs" in fits.stdout
    for launcher, key, words in (({"nodes": 4, "tasks_per_node": 1}, "launcher.nodes", "partition debug has 2 such nodes"),
                                 ({"gpus_per_node": 9, "tasks_per_node": 1}, "launcher.gpus_per_node", "9 GPUs a node asked")):
        path = write_sweep(tmp_path / "big.yaml", sweep_text("big", TINY_BASE, launcher))
        for args in (("--dry-run",), ()):
            result = cli("sweep", str(path), *args, check=False)
            assert result.returncode == 2, result.stdout + result.stderr
            assert result.stderr.startswith(f"error: {path}: {key}: ") and words in result.stderr, result.stderr
            assert "submitted" not in result.stdout
    # the real submission was refused before it recorded anything: no row, no run folder, no job
    assert not cli.db.exists() or sqlite3.connect(cli.db).execute("select count(*) from runs").fetchone()[0] == 0
    assert not (cli.home / "runs").exists() or not any((cli.home / "runs").iterdir())


def _rank_1_dies(marker: str) -> None:
    """Rank 1 is SIGKILLed at once; rank 0 would wait 10 minutes, as a rank waits in a collective for a dead peer."""
    import os
    import signal
    import time
    from pathlib import Path

    import submitit

    if submitit.JobEnvironment().global_rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(600)
    Path(marker).write_text("rank 0 outlived its peer")


def test_kill_on_bad_exit_ends_the_step_when_one_task_dies(slurm_cluster, tmp_path):
    """seedrun's srun options (SRUN_ARGS, in every array's sbatch script: tests/golden/sbatch) end the whole step
    when a task dies; the same job without them keeps its surviving task running."""
    import sys

    import cloudpickle

    from seedrun.launchers.cluster import State, cancel, query_states
    from seedrun.launchers.slurm import SRUN_ARGS

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    jobs = {}
    for name, srun_args in (("killed", list(SRUN_ARGS)), ("control", [])):
        executor = slurm_cluster.executor(tmp_path / name, nodes=2, tasks_per_node=1, cpus_per_task=1,
                                          slurm_srun_args=srun_args)
        jobs[name] = executor.submit(_rank_1_dies, str(tmp_path / f"{name}.done")).job_id
    try:
        ended = wait_for(lambda: query_states([jobs["killed"]])[jobs["killed"]], lambda s: s.terminal, 180, every_s=1)
        assert ended.state is State.FAILED, ended  # the step ended with the dead task, the job with it
        control = wait_for(lambda: query_states([jobs["control"]])[jobs["control"]],
                           lambda s: s.state is not State.PENDING, 60, every_s=1)
        assert control.state is State.RUNNING, control  # without the option rank 0 would sit there for 10 minutes
        assert not (tmp_path / "killed.done").exists()
    finally:
        cancel(list(jobs.values()))
