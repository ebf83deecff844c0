"""Evaluation runs through the CLI: protocols after training, and `seedrun eval` on finished runs."""

from __future__ import annotations

import hashlib
import json
import sqlite3

from conftest import TINY_BASE, write_sweep


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_protocols_after_training_and_reevaluation_without_retraining(cli, tmp_path):
    # the cached linear probe (features once, then 30 fast epochs): the augmented moco probe's own CLI test is
    # tests/test_linear_protocols.py, so this one stays as fast as it was
    overrides = TINY_BASE + ["eval.protocols.linear.recipe=cached",
                             "eval.protocols.linear.epochs=30", "eval.protocols.linear.batch_size=32",
                             "eval.protocols.transfer.epochs=30", "eval.protocols.transfer.batch_size=32"]
    path = write_sweep(tmp_path / "s.yaml", "name: evals\nablation: temperature\nbase:\n"
                       + "".join(f"  - {o}\n" for o in overrides) + "  - eval.after=[linear,transfer]\n")
    result = cli("sweep", str(path))
    assert "completed 4  failed 0" in result.stdout, result.stdout  # teacher, student, 2 evaluations

    runs = {r["stage"] + r["axes"].get("protocol", ""): r for r in json.loads(cli("status", "--json").stdout)["runs"]}
    student = runs["distill"]
    assert runs["evallinear"]["state"] == runs["evaltransfer"]["state"] == "completed"
    # the probe's numbers are recorded on the evaluation run and, under its protocol's names, on the student
    assert 10.0 < student["metrics"]["linear.cached.top1"] <= 100.0 and "linear_top1" not in student["metrics"]
    assert student["metrics"]["linear.cached.top1"] == runs["evallinear"]["metrics"]["linear_top1"]
    assert "linear.moco.top1" not in student["metrics"]
    assert student["metrics"]["transfer.moco.digits_top1"] == runs["evaltransfer"]["metrics"]["transfer_digits_top1"]
    table = cli("table", "--ablation", "temperature", "--format", "markdown", "--protocol", "cached").stdout
    assert f"{student['metrics']['linear.cached.top1']:.1f}" in table and "the cached probe protocol; not the paper's" in table
    assert 10.0 < runs["evaltransfer"]["metrics"]["transfer_digits_top1"] <= 100.0  # 10 digit classes

    model = cli.home / "runs" / student["hash"][:16] / "model.pt"
    before, mtime = _sha(model), model.stat().st_mtime_ns
    out = cli("eval", "evals", "--protocol", "knn").stdout
    assert "evaluation(s) with knn, 2 to run" in out  # the teacher and the student
    after = json.loads(cli("status", "--json").stdout)["runs"]
    knn_runs = [r for r in after if r["axes"].get("protocol") == "knn"]
    assert len(knn_runs) == 2 and all(r["state"] == "completed" for r in knn_runs)
    for r in knn_runs:
        assert {"knn_top1", "knn20_top1", "nn1_top1"} <= set(r["metrics"])
    assert _sha(model) == before and model.stat().st_mtime_ns == mtime  # evaluation never touches the model
    with sqlite3.connect(cli.db) as db:
        attempts = dict(db.execute("select stage, sum(attempts) from runs group by stage").fetchall())
    assert attempts["distill"] == 1 and attempts["pretrain"] == 1  # nothing retrained

    again = cli("eval", "evals", "--protocol", "knn").stdout
    assert "0 to run" in again
