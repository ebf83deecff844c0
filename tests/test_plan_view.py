"""`seedrun sweep FILE --dry-run`: the plan, readable at any size, and the arrays a Slurm sweep would submit."""

from __future__ import annotations

import json

import pytest

from conftest import TINY_SWEEP_BASE, write_sweep
from seedrun.cli import main

SLURM = """launcher:
  name: slurm
  partition: gpu
  gpus_per_node: 4
  cpus_per_task: 16
  mem_gb: 120
  timeout_min: 1500
  array_parallelism: 32
"""


@pytest.fixture
def max_array(monkeypatch):
    import seedrun.launchers.cluster as cluster
    from seedrun.launchers import requests

    monkeypatch.setattr(cluster, "max_array_size", lambda: 600)
    # the cluster these plans are checked against: a "gpu" partition of 4-GPU nodes (the real sinfo, where the
    # test cluster runs, has no such partition; tests/test_requests.py checks against it)
    nodes = requests.parse_sinfo("gpu|64|262144|gpu:4|2-00:00:00|6|g[1-6]\ndebug*|8|16000|(null)|1:00:00|2|c[1-2]\n")
    monkeypatch.setattr(requests, "read_nodes", lambda: (tuple(nodes), ""))


def _sweep(tmp_path, taus: int, seeds: int, launcher: str = SLURM):
    values = ", ".join(f"{0.001 + i * 1e-4:.4g}" for i in range(taus))
    return str(write_sweep(tmp_path / "big.yaml", "name: big\n" + TINY_SWEEP_BASE
                           + f"grid:\n  distill.tau_teacher: [{values}]\nseeds: {list(range(seeds))}\n" + launcher))


def test_a_1000_run_slurm_dry_run_shows_its_arrays_in_a_few_lines(home, tmp_path, capsys, max_array):
    path = _sweep(tmp_path, 250, 4)
    assert main(["sweep", path, "--dry-run"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) <= 24, out
    assert "1001 runs (1 pre-training, 1000 distillation), launcher slurm" in out
    assert "new 1001  done 0  running 0  failed 0" in out
    assert "distill.tau_teacher: 250 values: 0.001 0.0011 0.0012 0.0013 … 0.0258 0.0259" in out
    assert "seed: 0 1 2 3" in out
    assert "Slurm: 3 arrays to submit" in out and "MaxArraySize 600" in out
    table = [line.split() for line in lines if line.strip().startswith("#")]
    # nodes x tasks, GPUs a node, CPUs a task and a node (4 tasks x 16), memory a node
    assert table == [
        ["#1", "pretrain", "1", "%1", "-", "gpu", "1x4", "4", "16", "64", "120", "GB", "1-01:00:00"],
        ["#2", "distill", "600", "%32", "#1", "gpu", "1x4", "4", "16", "64", "120", "GB", "1-01:00:00"],
        ["#3", "distill", "400", "%32", "#1", "gpu", "1x4", "4", "16", "64", "120", "GB", "1-01:00:00"],
    ]
    assert "request distill: fits partition gpu: 6 nodes with 4 GPUs, 64 CPUs, 256 GB, 2880 min limit" in out
    # evaluation has no runs here, and would ask one GPU of the node with its share of the memory
    assert "eval     evaluation (no runs in this sweep): 1 node x 1 task: per task 16 CPUs, 1 GPU; per node 1 GPU, " \
           "16 CPUs, 30 GB" in out
    assert "--all lists the 1001 runs" in out
    assert not (home / "seedrun.db").exists()


def test_all_lists_every_run_and_json_gives_the_whole_plan(home, tmp_path, capsys, max_array):
    path = _sweep(tmp_path, 30, 2)
    assert main(["sweep", path, "--dry-run", "--all"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "  new   " in line]
    assert len(rows) == 61
    assert main(["sweep", path, "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["runs_total"] == 61 and len(plan["runs"]) == 61 and plan["states"] == {"new": 61}
    assert [(a["stage"], a["tasks"], a["throttle"], a["after_arrays"]) for a in plan["arrays"]] == [
        ("pretrain", 1, 1, []), ("distill", 60, 32, [1])]
    teacher = plan["arrays"][0]["runs"][0]
    assert all(run["depends_on"] == teacher for run in plan["runs"] if run["stage"] == "distill")
    assert sorted(sum((a["runs"] for a in plan["arrays"]), [])) == sorted(run["hash"] for run in plan["runs"])
    assert plan["arrays"][1]["partition"] == "gpu" and plan["arrays"][1]["mem_gb"] == 120
    assert plan["arrays"][1]["tasks_per_node"] == 4 and plan["requests_checked"] is True
    assert plan["stages"]["distill"].startswith("1 node x 4 tasks: per task 16 CPUs, 1 GPU; per node 4 GPUs, 64 CPUs")
    assert plan["axes"]["seed"] == [0, 1] and len(plan["axes"]["distill.tau_teacher"]) == 30


def test_a_recorded_sweep_plans_only_what_is_left(home, tmp_path, capsys, max_array):
    """Done runs are not in the arrays; a teacher already done is not waited for."""
    import sqlite3

    path = _sweep(tmp_path, 3, 1, launcher="launcher: {name: slurm}\n")
    from seedrun.store.plan import read_plan, record
    from seedrun.sweeps.sweep_file import expand

    sweep = expand(path, dry_run=True)
    url = f"sqlite:///{home / 'seedrun.db'}"
    record(read_plan(sweep, url), url)
    with sqlite3.connect(home / "seedrun.db") as db:
        db.execute("update runs set state = 'completed' where stage = 'pretrain'")
        db.execute("update runs set state = 'completed' where hash = ?", (sweep.stage("distill")[0].hash,))
    assert main(["sweep", path, "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["counts"] == {"new": 2, "done": 2, "running": 0, "failed": 0}
    assert [(a["stage"], a["tasks"], a["after_arrays"]) for a in plan["arrays"]] == [("distill", 2, [])]


def test_a_local_sweep_says_how_it_runs(home, tmp_path, capsys):
    path = _sweep(tmp_path, 2, 1, launcher="")
    assert main(["sweep", path, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "local: 3 of 3 runs to run, one after another on this machine" in out and "array" not in out
    assert out.count("  new   ") == 3  # a small sweep lists its runs
