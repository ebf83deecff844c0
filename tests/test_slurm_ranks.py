"""Two tasks per run on the real one-node Slurm test cluster (`tasks_per_node: 2`, gloo on CPU): the teacher
pre-trains on rank 0 alone, the student distils on both ranks, and each run is recorded once, by rank 0.
About 40 s."""

from __future__ import annotations

import json
import sqlite3

import pytest

from conftest import TINY_BASE, write_sweep
from test_slurm_sweep import run_dir, settled, status, sweep_text, wait_for

pytestmark = pytest.mark.slurm


def test_a_two_task_run_completes_and_is_recorded_once_by_rank_0(slurm_cluster, cli, tmp_path):
    base = [o for o in TINY_BASE if not o.startswith("distill.epochs")] + ["distill.epochs=2"]
    path = write_sweep(tmp_path / "two.yaml", sweep_text("two", base, {"tasks_per_node": 2}))
    assert "submitted 2 runs" in cli("sweep", str(path)).stdout
    report = wait_for(lambda: status(cli), settled, 240, every_s=2)
    assert [run["state"] for run in report["runs"]] == ["completed"] * 2, report
    with sqlite3.connect(cli.db) as db:
        rows = db.execute("select hash, stage, attempts, provenance from runs").fetchall()
    assert len(rows) == 2
    for run_hash, stage, attempts, prov in rows:
        assert attempts == 1 and json.loads(prov)["world"] == 2
        folder = run_dir(cli, run_hash)
        assert len((folder / "metrics.jsonl").read_text().splitlines()) == (1 if stage == "pretrain" else 2)
        rank1 = (folder / "log.rank1.txt").read_text()
        assert ("rank 1 of 2" in rank1 and "epoch 2/2" in rank1) if stage == "distill" else "rank 0 alone" in rank1
