"""The vertical slice through the CLI: a sweep on tiny generated images trains a teacher and two
students for real, records them, and `status` and `table` report what was recorded."""

from __future__ import annotations

import csv
import io
import json
import sqlite3

from conftest import TINY_BASE, write_sweep


def test_sweep_status_table_end_to_end(cli, tmp_path):
    path = write_sweep(tmp_path / "tiny.yaml", "name: tiny-temperature\nablation: temperature\nbase:\n"
                       + "".join(f"  - {override}\n" for override in TINY_BASE)
                       + "grid:\n  distill.tau_teacher: [0.1, 0.01]\n")
    plan = cli("sweep", str(path), "--dry-run")
    assert "new 3" in plan.stdout and "dry run: nothing recorded" in plan.stdout
    assert not cli.db.exists()

    result = cli("sweep", str(path))
    assert "completed 3  failed 0  blocked 0" in result.stdout

    status = json.loads(cli("status", "--json").stdout)
    assert status["counts"]["completed"] == 3
    runs = status["runs"]
    assert sorted(run["stage"] for run in runs) == ["distill", "distill", "pretrain"]
    for run in runs:
        assert run["state"] == "completed" and run["epoch"] == 1
        # real training on 10 classes: better than chance, and a valid percentage
        assert 10.0 < run["metrics"]["knn_top1"] <= 100.0, run
        assert run["metrics"]["knn_top1"] <= run["metrics"]["knn_top5"]
        assert "loss" in run["metrics"]
    by_tau = {run["axes"]["distill.tau_teacher"]: run for run in runs if run["stage"] == "distill"}
    assert set(by_tau) == {0.1, 0.01}

    # every run owns a directory named by its hash, holding config, log, checkpoint and model
    with sqlite3.connect(cli.db) as db:
        rows = db.execute("select hash, run_dir, attempts, provenance from runs").fetchall()
    for run_hash, run_dir, attempts, provenance in rows:
        assert run_dir.endswith(run_hash[:16]) and attempts == 1
        files = {p.name for p in (cli.home / "runs" / run_hash[:16]).iterdir()}
        assert {"config.json", "log.txt", "checkpoint.pt", "model.pt", "metrics.jsonl"} <= files
        assert json.loads(provenance)["torch"]

    # the students load the teacher that was trained once
    teacher = next(run for run in runs if run["stage"] == "pretrain")
    with sqlite3.connect(cli.db) as db:
        deps = {row[0] for row in db.execute("select depends_on from runs where stage = 'distill'")}
    assert deps == {teacher["hash"]}

    human = cli("status").stdout
    assert "completed 3" in human and "distill.tau_teacher=0.01" in human

    table = cli("table", "--ablation", "temperature", "--format", "csv", "--paper").stdout
    rows = {row[0]: row for row in csv.reader(io.StringIO(table))}
    header = rows["τ_T"]
    top1 = header.index("k-NN top-1")
    for tau in ("0.1", "0.01"):
        assert float(rows[tau][top1]) == round(by_tau[float(tau)]["metrics"]["knn_top1"], 1)
    assert rows["0.3"][top1] == "—"  # no run: shown as missing, not as a number
    paper = header.index("linear top-1 paper")
    assert rows["0.01"][paper] == "57.9" and rows["0.001"][paper] == "57.6"

    again = cli("sweep", str(path))
    assert "nothing to run" in again.stdout and "new 0  done 3" in again.stdout
    with sqlite3.connect(cli.db) as db:
        assert db.execute("select sum(attempts) from runs").fetchone()[0] == 3


def test_commands_that_do_not_train_never_import_torch(cli):
    probe = ("import sys, runpy; sys.argv = ['seedrun'] + sys.argv[1:]\n"
             "from seedrun.cli import main\n"
             "try:\n    code = main(sys.argv[1:])\nexcept SystemExit as exc:\n    code = exc.code\n"
             "assert 'torch' not in sys.modules, 'torch was imported'\n"
             "raise SystemExit(code)\n")
    import subprocess
    import sys

    for args in (["--help"], ["status"], ["table", "--ablation", "temperature"], ["table", "--list"], ["list"]):
        result = subprocess.run([sys.executable, "-c", probe, *args], env=cli.env, capture_output=True, text=True)
        assert result.returncode == 0, (args, result.stderr)


def test_a_failed_teacher_blocks_its_students_on_the_local_executor(cli, tmp_path):
    path = write_sweep(tmp_path / "nan.yaml", "name: nan-teacher\nbase:\n"
                       + "".join(f"  - {override}\n" for override in TINY_BASE)
                       + "  - teacher.pretrain.lr=1e30\n"  # diverges at once: the loss turns NaN
                       + "grid:\n  distill.tau_teacher: [0.1, 0.01]\n")
    result = cli("sweep", str(path), check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "completed 0  failed 1  blocked 2" in result.stdout
    runs = json.loads(cli("status", "--json").stdout)["runs"]
    teacher = next(run for run in runs if run["stage"] == "pretrain")
    assert teacher["state"] == "failed" and teacher["failure_reason"] == "nan_loss"
    students = [run for run in runs if run["stage"] == "distill"]
    assert [run["state"] for run in students] == ["blocked", "blocked"]
    assert not any((cli.home / "runs" / run["hash"][:16] / "checkpoint.pt").exists() for run in students)
