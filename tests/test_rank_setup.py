"""How a job's processes find each other and share the machine (issue 25 items 2, 5 and 6): the rendezvous
comes from the job alone (MASTER_ADDR/MASTER_PORT inherited from the submitting shell are ignored, with one
line), each local rank is bound to its own share of the CPUs and sizes torch's threads and the loader's
workers from it, and a run on `device: cpu` uses gloo even on a machine with GPUs. The two-process test
runs real processes with the environment submitit's LocalExecutor gives a job's tasks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from conftest import ROOT

PROBE = r"""
import json, os
import torch
torch.cuda.is_available = lambda: True  # a GPU node, as far as choosing the backend can tell
from seedrun.job import ranks
where = ranks.place()
group = ranks.Group(where)
start = group.announce(({"device": "cpu"}, "/nowhere", "distill", None) if where.is_main else None)
import torch.distributed as dist
from seedrun.data.stream import default_workers
from seedrun.training.loop import setup_torch
setup_torch(start[0])
total = torch.tensor([where.rank + 1.0])
dist.all_reduce(total)
report = {"rank": where.rank, "backend": dist.get_backend(), "total": total.item(),
          "cpus": sorted(os.sched_getaffinity(0)), "threads": torch.get_num_threads(),
          "workers": default_workers(), "master": [os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]]}
group.alone()  # as rank 0 does when it evaluates by itself
print(json.dumps({**report, "alone": sorted(os.sched_getaffinity(0))}))
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_local_ranks_meet_at_the_jobs_rendezvous_on_their_own_cpus_with_gloo(tmp_path):
    port = _free_port()
    env = {**os.environ, "SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "4242", "SUBMITIT_LOCAL_NTASKS": "2",
           "SUBMITIT_LOCAL_JOB_NUM_NODES": "1", "SUBMITIT_LOCAL_NODEID": "0", "SEEDRUN_MASTER_PORT": str(port),
           # what a user's shell exports after a DDP tutorial: an address no rank can reach, a privileged port
           "MASTER_ADDR": "203.0.113.1", "MASTER_PORT": "1", "SEEDRUN_DIST_PHASE_TIMEOUT_S": "60"}
    env.pop("SLURM_CPUS_PER_TASK", None)
    env.pop("SLURM_JOB_ID", None)
    (tmp_path / "probe.py").write_text(PROBE)
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "probe.py")], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env={**env, "SUBMITIT_LOCAL_GLOBALID": str(r), "SUBMITIT_LOCAL_LOCALID": str(r)})
             for r in (0, 1)]
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=120)[0])
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            raise AssertionError("the ranks never met: " + "\n".join(p.communicate()[0] for p in procs))
    assert [proc.returncode for proc in procs] == [0, 0], "\n".join(outputs)
    reports = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    for out, report in zip(outputs, reports):
        assert report["master"] == ["127.0.0.1", str(port)]  # the job's rendezvous, not the shell's
        assert out.count("ignoring MASTER_ADDR=203.0.113.1 MASTER_PORT=1 inherited") == 1  # said once
        assert report["backend"] == "gloo" and report["total"] == 3.0  # device: cpu, GPUs or not
    # each rank has its own half of the CPUs this test may use, and counts its threads and workers from it
    cpus = sorted(os.sched_getaffinity(0))
    share = max(1, len(cpus) // 2)
    assert [len(r["cpus"]) for r in reports] == [share, share]
    if len(cpus) >= 2:
        assert not set(reports[0]["cpus"]) & set(reports[1]["cpus"])
    assert [r["threads"] for r in reports] == [share, share]
    assert [r["workers"] for r in reports] == [share - 1, share - 1]
    assert [r["alone"] for r in reports] == [cpus, cpus]  # a rank going on alone gets the job's CPUs back


def test_a_slurm_job_meets_at_its_first_node_on_a_port_derived_from_the_job(monkeypatch):
    from seedrun.job import ranks

    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "1237", "SLURM_ARRAY_JOB_ID": "1234",
             "SLURM_ARRAY_TASK_ID": "3", "SLURM_NTASKS": "16", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1",
             "SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]",
             "MASTER_ADDR": "login1", "MASTER_PORT": "29500"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    where = ranks.place()
    assert (where.rank, where.local_rank, where.world, where.tasks_here) == (9, 1, 16, 8)
    assert where.master == "gpu07" and where.job_id == "1234_3"
    assert where.port == ranks.master_port("1234_3") and ranks.PORTS[0] <= where.port < ranks.PORTS[1]
    # another array task of the same array, or another job, rendezvous elsewhere; a requeue (same id) alike
    assert ranks.master_port("1234_4") != where.port and ranks.master_port("1235_3") != where.port
    assert ranks.master_port("1234_3") == where.port
    assert ranks.bind_cpus(where) is None  # Slurm bound the task: its cpus_per_task size it


def test_cpu_shares_are_disjoint_and_never_empty():
    from seedrun.job.ranks import cpu_share

    cpus = list(range(64))
    shares = [cpu_share(cpus, r, 8) for r in range(8)]
    assert all(len(s) == 8 for s in shares) and sorted(sum(shares, [])) == cpus
    assert [cpu_share([0, 1], r, 4) for r in range(4)] == [[0], [1], [0], [1]]  # more ranks than CPUs: shared
    assert cpu_share(cpus, 0, 1) == cpus
