"""Bad input through the CLI: one line naming file, key and what was expected; exit 2; nothing recorded."""

from __future__ import annotations

import pytest

from conftest import TINY_SWEEP_BASE, write_sweep

GOOD = "name: bad\n" + TINY_SWEEP_BASE

CASES = {
    "invalid_yaml": (GOOD + "grid:\n  distill.tau_teacher: [0.1, 0.01\n", ["line "], "invalid YAML"),
    "unknown_recipe": (GOOD + "grid:\n  student: [resnet18, resnet9000]\n", ["grid.student"], "known: efficientnet_b0, efficientnet_b1, mobilenetv3_large, resnet18"),
    "unknown_key": (GOOD + "grid:\n  distill.tau_teachr: [0.1]\n", ["grid.distill.tau_teachr"], "unknown config key"),
    "zero_temperature": (GOOD + "grid:\n  distill.tau_teacher: [0.1, 0.0]\n", ["distill.tau_teacher"], "expected a temperature > 0"),
    "negative_student_temperature": (GOOD + "  distill.tau_student: -0.2\n", ["distill.tau_student"], "expected a temperature > 0"),
    "queue_not_divisible": (GOOD.replace("queue_size: 128\n  teacher", "queue_size: 100\n  teacher"), ["distill.queue_size"],
                            "expected a multiple of distill.batch_size=32, got 100"),
    "missing_dataset": ("name: bad\nbase: [data=imagenet, distill.queue_size=65536]\n", ["data"], "data set 'imagenet' not found"),
    "unknown_top_level_key": (GOOD + "gird:\n  distill.lr: [0.1]\n", ["gird"], "unknown key"),
    "unknown_launcher_setting": (GOOD + "launcher:\n  name: local\n  partitio: gpu\n", ["launcher.partitio"], "unknown setting"),
    "zip_lengths_differ": (GOOD + "zip:\n  distill.lr: [0.1, 0.2]\n  distill.epochs: [1]\n", ["zip"], "one length"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_sweep_file_is_one_line_exit_2_and_records_nothing(case, cli, tmp_path):
    text, keys, expected = CASES[case]
    path = write_sweep(tmp_path / f"{case}.yaml", text)
    result = cli("sweep", str(path), check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0]
    for key in keys:
        assert key in lines[0]
    assert expected in lines[0]
    assert not cli.db.exists(), "a rejected sweep must not create the database"
    assert not (cli.home / "runs").exists()


def test_missing_sweep_file(cli, tmp_path):
    result = cli("sweep", str(tmp_path / "nope.yaml"), check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nope.yaml'}: no such sweep file"


def test_bad_command_line_override(cli, tmp_path):
    path = write_sweep(tmp_path / "s.yaml", GOOD)
    result = cli("sweep", str(path), "distill.nonsense=3", check=False)
    assert result.returncode == 2
    assert "command line 'distill.nonsense=3'" in result.stderr and "unknown config key" in result.stderr


def test_rejected_sweep_leaves_an_existing_database_untouched(cli, tmp_path):
    good = write_sweep(tmp_path / "good.yaml", GOOD + "grid:\n  distill.tau_teacher: [0.1]\n")
    cli("sweep", str(good), "--dry-run")
    bad = write_sweep(tmp_path / "bad.yaml", GOOD + "grid:\n  distill.tau_teacher: [-1]\n")
    assert cli("sweep", str(bad), check=False).returncode == 2
    assert not cli.db.exists()


def test_unknown_table_is_exit_2(cli):
    result = cli("table", "--ablation", "temprature", check=False)
    assert result.returncode == 2
    assert "no table 'temprature'; known tables: main, teacher, distillation, temperature" in result.stderr


@pytest.mark.parametrize("url, says", [
    ("bogus://x", "Can't load plugin: sqlalchemy.dialects:bogus"),
    ("postgresql+psycopg2://me:secret@127.0.0.1:1/runs", "Connection refused"),
])
def test_a_database_that_cannot_be_opened_is_one_line_exit_2(cli, tmp_path, url, says):
    sweep = write_sweep(tmp_path / "good.yaml", GOOD + "grid:\n  distill.tau_teacher: [0.1]\n")
    for args in (["status"], ["status", "--json"], ["table", "--ablation", "lr"], ["sweep", str(sweep)],
                 ["--db", url, "status"]):
        result = cli(*args, *(["--db", url] if "--db" not in args else []), check=False)
        assert result.returncode == 2, (args, result.stderr)
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("error: --db: ") and says in line and "secret" not in line, line
    assert not cli.db.exists()
