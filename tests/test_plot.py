"""`seedrun plot`: a sweep's recorded curves (one per run, labelled by its setting and seed) drawn to a PNG
without torch, from the run folders or, where they are gone, from the database."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from seedrun.views.curves import load_curves
from conftest import TINY_SWEEP_BASE, write_sweep
import test_postgres

# test_postgres's fixtures, used here by name
postgres_server, postgres_url = test_postgres.postgres_server, test_postgres.postgres_url

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def swept(cli, tmp_path):
    sweep = write_sweep(tmp_path / "curves.yaml", "name: curves\nablation: temperature\n" + TINY_SWEEP_BASE + """  teacher.width: 8
  teacher.pretrain.epochs: 2
  student.width: 8
  distill.epochs: 2
  distill.warmup_epochs: 0
  threads: 1
grid:
  distill.tau_teacher: [0.1, 0.01]
launcher:
  name: local
""")
    cli("sweep", str(sweep))
    return cli


def test_plot_draws_one_curve_per_run_without_torch_and_says_what_is_wrong(swept, tmp_path):
    out = tmp_path / "curves.png"
    probe = ("import sys\nfrom seedrun.cli import main\ncode = main(sys.argv[1:])\n"
             "assert 'torch' not in sys.modules, 'torch was imported'\nraise SystemExit(code)\n")
    result = subprocess.run([sys.executable, "-c", probe, "plot", "--sweep", "curves", "--out", str(out)],
                            env=swept.env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "3 runs" in result.stdout
    assert out.read_bytes()[:8] == PNG

    curves = {curve.label: curve for curve in load_curves(f"sqlite:///{swept.db}", "curves", "loss")}
    assert set(curves) == {"tau_teacher=0.1, seed 0", "tau_teacher=0.01, seed 0", "teacher mocov2 resnet18 width 8"}
    assert all([epoch for epoch, _ in curve.points] == [1, 2] for curve in curves.values())
    assert curves["teacher mocov2 resnet18 width 8"].stage == "pretrain"
    speeds = load_curves(f"sqlite:///{swept.db}", "curves", "images_per_s")
    assert len(speeds) == 3 and all(value > 0 for curve in speeds for _, value in curve.points)

    # what is wrong, in one line, and no image
    result = swept("plot", "--sweep", "nosuch", "--out", str(tmp_path / "x.png"), check=False)
    assert result.returncode == 2 and "no sweep named 'nosuch'" in result.stderr and "curves" in result.stderr
    result = swept("plot", "--sweep", "curves", "--metric", "nosuch", "--out", str(tmp_path / "x.png"), check=False)
    assert result.returncode == 2 and "recorded: " in result.stderr and "images_per_s" in result.stderr
    result = swept("plot", "--sweep", "curves", "--out", str(tmp_path / "no" / "such" / "x.png"), check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and "--out" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_plot_reads_the_database_where_the_folders_are_gone(swept, tmp_path):
    db = f"sqlite:///{swept.db}"
    before = {curve.label: curve.points for curve in load_curves(db, "curves", "loss")}
    swept("status")  # brings the database up to date from the folders
    shutil.rmtree(swept.home / "runs")
    after = {curve.label: curve.points for curve in load_curves(db, "curves", "loss")}
    assert after == before and len(after) == 3



def test_plot_reads_a_postgresql_database(cli, tmp_path, postgres_url):
    cli.env["SEEDRUN_DB"] = postgres_url
    sweep = write_sweep(tmp_path / "pg.yaml", "name: pgcurves\n" + TINY_SWEEP_BASE + """  teacher.width: 8
  teacher.pretrain.epochs: 2
  student.width: 8
  distill.epochs: 2
  threads: 1
launcher:
  name: local
""")
    cli("sweep", str(sweep))
    result = cli("plot", "--sweep", "pgcurves", "--out", str(tmp_path / "pg.png"))
    assert "2 runs" in result.stdout and (tmp_path / "pg.png").read_bytes()[:8] == PNG
    before = {curve.label: curve.points for curve in load_curves(postgres_url, "pgcurves", "loss")}
    assert len(before) == 2 and all([epoch for epoch, _ in points] == [1, 2] for points in before.values())
    shutil.rmtree(cli.home / "runs")  # the points come from the database's metric rows now
    assert {curve.label: curve.points for curve in load_curves(postgres_url, "pgcurves", "loss")} == before
