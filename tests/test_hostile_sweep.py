"""A hostile sweep file (newline, `;`, `$()`, backticks, quotes in every field) against the Slurm launcher.

Launcher settings are typed: a value that is not of its setting's type, or that holds a control
character, is one line naming the file and the key, exit 2, nothing recorded or submitted. What is
accepted (free-text sbatch values, the sweep's name, the runs' own values) reaches the generated
sbatch script only shell-quoted, or not at all: the script is compared with a golden file
(tests/golden/sbatch/hostile_array.sh; rewrite with SEEDRUN_UPDATE_GOLDEN=1 after a deliberate change).
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import TINY_SWEEP_BASE, write_sweep
from test_submit_unit import GOLDEN, UPDATE_GOLDEN, _normalise, fake_slurm, sbatch_calls

__all__ = ["fake_slurm"]  # the fixture, shared with test_submit_unit

# Everything a shell would act on, relative to the folder the script is run from.
HOSTILE = "x\ny; touch PWNED; $(touch PWNED) `touch PWNED` 'sq' \"dq\" #"
ONE_LINE = HOSTILE.replace("\n", " ")  # the same without the newline

SETTINGS = ["partition", "account", "qos", "constraint", "nodes", "gpus_per_node", "cpus_per_task", "mem_gb",
            "timeout_min", "array_parallelism", "signal_delay_s", "max_preemptions", "max_timeouts", "max_failures"]


def _sweep(tmp_path, launcher: str, name: str = "hostile") -> str:
    return str(write_sweep(tmp_path / "hostile.yaml", f"name: {json.dumps(name)}\n" + TINY_SWEEP_BASE
                           + "grid:\n  distill.tau_teacher: [0.1, 0.01]\nlauncher:\n  name: slurm\n" + launcher))


def _refused(cli, fake_slurm, path: str, key: str, *extra: str) -> str:
    result = cli("sweep", path, *extra, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: {key}"), result.stderr
    assert sbatch_calls(fake_slurm) == [] and not cli.db.exists()
    return lines[0]


@pytest.mark.parametrize("value", [HOSTILE, ONE_LINE], ids=["newline", "one-line"])
@pytest.mark.parametrize("key", SETTINGS)
def test_every_launcher_setting_refuses_hostile_text(key, value, cli, fake_slurm, tmp_path):
    cli.env.update(PATH=os.environ["PATH"], FAKE_SLURM_DIR=str(fake_slurm))
    line = _refused(cli, fake_slurm, _sweep(tmp_path, f"  {key}: {json.dumps(value)}\n"), f"launcher.{key}")
    assert "expected" in line or "control character" in line


@pytest.mark.parametrize("block, key", [
    (f"  additional_parameters: {{comment: {json.dumps(HOSTILE)}}}\n", "launcher.additional_parameters.comment"),
    (f"  additional_parameters: {{{json.dumps(HOSTILE)}: x}}\n", "launcher.additional_parameters["),
    (f"  additional_parameters: {{{json.dumps(ONE_LINE)}: x}}\n", "launcher.additional_parameters["),
    ("  additional_parameters: {dependency: 'afterok:1'}\n", "launcher.additional_parameters.dependency"),
    ("  additional_parameters: [comment]\n", "launcher.additional_parameters"),
    ("  nodes: true\n", "launcher.nodes"),
    ("  timeout_min: '60'\n", "launcher.timeout_min"),
    ("  mem_gb: [1]\n", "launcher.mem_gb"),
])
def test_additional_parameters_and_types_are_checked(block, key, cli, fake_slurm, tmp_path):
    cli.env.update(PATH=os.environ["PATH"], FAKE_SLURM_DIR=str(fake_slurm))
    _refused(cli, fake_slurm, _sweep(tmp_path, block), key)


def test_launcher_values_from_overrides_and_the_name_are_checked_too(cli, fake_slurm, tmp_path):
    cli.env.update(PATH=os.environ["PATH"], FAKE_SLURM_DIR=str(fake_slurm))
    path = _sweep(tmp_path, "")
    _refused(cli, fake_slurm, path, "launcher.partition", "launcher.partition=" + json.dumps(HOSTILE))
    _refused(cli, fake_slurm, _sweep(tmp_path, "", name=HOSTILE), "name")


def test_hostile_sweep_sbatch_script_matches_golden_file(cli, fake_slurm, tmp_path):
    """What a hostile sweep may carry: its name, its runs' values and free-text sbatch values (no newline)."""
    cli.env.update(PATH=os.environ["PATH"], FAKE_SLURM_DIR=str(fake_slurm))
    base = TINY_SWEEP_BASE.replace("  data: tiny\n", "  data: tiny\n  data.name: " + json.dumps(HOSTILE) + "\n")
    path = write_sweep(tmp_path / "hostile.yaml", f"name: {json.dumps(ONE_LINE)}\n" + base
                       + "grid:\n  distill.tau_teacher: [0.1, 0.01]\n"
                       + "launcher:\n  name: slurm\n  partition: gpu,debug\n  constraint: 'a100&(ib|roce)*2'\n"
                       + f"  additional_parameters: {{comment: {json.dumps(ONE_LINE)}, mail-user: {json.dumps(ONE_LINE)},"
                       + " exclusive: true, nice: 10}\n")
    cli("sweep", str(path))
    assert len(sbatch_calls(fake_slurm)) == 2
    text = _normalise((fake_slurm / "sbatch_1001.sh").read_text(), cli.home)
    golden = GOLDEN / "hostile_array.sh"
    if UPDATE_GOLDEN:
        golden.write_text(text)
    assert text == golden.read_text(), "the hostile sweep's sbatch script differs from the golden file"
    for script in sorted(fake_slurm.glob("sbatch_*.sh")):
        lines = script.read_text().splitlines()
        assert all(line.startswith("#") or not set(line) & set(";`$|&<>\"'") for line in lines)
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
        run = tmp_path / "node"
        run.mkdir(exist_ok=True)
        subprocess.run(["bash", str(script)], cwd=run, env={**os.environ, "SLURM_ARRAY_JOB_ID": "1"}, check=True,
                       capture_output=True)
        assert not (run / "PWNED").exists()
    import sqlite3

    with sqlite3.connect(cli.db) as db:  # the run's own values stay in the database, as data
        names = {json.loads(config)["data"]["name"] for (config,) in db.execute("select config from runs")}
    assert names == {HOSTILE}
