"""Requests that fit (issue 25, item 1), without a cluster: a launcher block per stage, checked like every other
key; each array's request compared with the partition's nodes as sinfo reports them; GPUs through
additional_parameters refused; and the check skipped, with one line, where no sinfo can be reached."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from conftest import TINY_SWEEP_BASE, write_sweep
from seedrun.errors import InputError
from seedrun.launchers import requests
from seedrun.launchers.requests import Request, fit, gpu_count, limit_minutes, parse_sinfo
from test_submit_unit import fake_slurm, sbatch_calls

__all__ = ["fake_slurm"]  # the fixture, shared with test_submit_unit

# `sinfo -h -a -e -o '%P|%c|%m|%G|%l|%D|%N'` as Slurm prints it: a GPU partition of two node kinds and a CPU one
SINFO = """gpu*|96|515000|gpu:a100:8(S:0-1)|2-00:00:00|4|g[01-04]
gpu*|64|257000|gpu:4|2-00:00:00|2|g[05-06]
cpu|128|500000|(null)|infinite|10|c[01-10]
"""
FAKE_SINFO = "#!/bin/bash\nprintf '%s' \"$FAKE_SINFO_OUT\"\n"
GPU_NODE = {"name": "slurm", "partition": None, "nodes": 1, "gpus_per_node": 8, "tasks_per_node": 0, "cpus_per_task": 10,
            "mem_gb": 320, "timeout_min": 1440}


def _refusal(launcher: dict) -> tuple[str, str]:
    with pytest.raises(requests._Refusal) as caught:
        fit(Request.of(launcher), parse_sinfo(SINFO))
    return caught.value.key, caught.value.text


def test_sinfo_is_read_as_nodes_with_their_gpus_memory_and_time_limit():
    kinds = parse_sinfo(SINFO)
    assert [(k.partition, k.default, k.cpus, k.mem_mb, k.gpus, k.limit_min, k.count) for k in kinds] == [
        ("gpu", True, 96, 515000, 8, 2880, 4), ("gpu", True, 64, 257000, 4, 2880, 2),
        ("cpu", False, 128, 500000, 0, None, 10)]
    assert gpu_count("gpu:2,mps:100") == 2 and gpu_count("(null)") == 0 and gpu_count("gpu:a100:4(S:0)") == 4
    assert limit_minutes("30:00") == 30 and limit_minutes("1:00:00") == 60 and limit_minutes("UNLIMITED") is None


def test_a_request_that_fits_says_where():
    assert fit(Request.of(GPU_NODE), parse_sinfo(SINFO)) == "fits partition gpu (default): 4 nodes with 8 GPUs, 96 CPUs, 503 GB, 2880 min limit"
    assert fit(Request.of({**GPU_NODE, "gpus_per_node": 0, "partition": "cpu,gpu"}), parse_sinfo(SINFO)).startswith("fits partition cpu")


@pytest.mark.parametrize("change, key, words", [
    ({"cpus_per_task": 80}, "launcher.cpus_per_task", "8 tasks x 80 CPUs = 640 CPUs a node asked; partition gpu (default)'s nodes have 64/96 CPUs"),
    ({"gpus_per_node": 16, "tasks_per_node": 1}, "launcher.gpus_per_node", "16 GPUs a node asked; partition gpu (default)'s nodes have 4/8 GPUs"),
    ({"mem_gb": 600}, "launcher.mem_gb", "600 GB a node asked; partition gpu (default)'s nodes have 251 GB/503 GB"),
    ({"timeout_min": 4000}, "launcher.timeout_min", "4000 minutes asked"),
    ({"nodes": 5}, "launcher.nodes", "partition gpu (default) has 4 such nodes"),
    ({"partition": "a100"}, "launcher.partition", "partition a100 asked; the cluster has gpu, cpu"),
    ({"partition": "cpu,gpu", "gpus_per_node": 4, "tasks_per_node": 1, "cpus_per_task": 100}, "launcher.gpus_per_node",
     "no node of partition cpu,gpu has it all at once"),  # GPUs on some nodes, the CPUs on others
])
def test_a_request_no_node_can_satisfy_names_the_key_what_was_asked_and_what_the_nodes_have(change, key, words):
    found_key, text = _refusal({**GPU_NODE, **change})
    assert found_key == key and words in text, text


def _stage_sweep(tmp_path, launcher: str) -> str:
    return str(write_sweep(tmp_path / "stages.yaml", "name: stages\n" + TINY_SWEEP_BASE.replace(
        "  data: tiny\n", "  data: tiny\n  eval.after: [linear]\n") + "grid:\n  distill.tau_teacher: [0.1, 0.01]\n" + launcher))


def test_each_stage_has_its_own_launcher_and_evaluation_defaults_to_one_gpu(tmp_path):
    from seedrun.sweeps.sweep_file import expand

    path = _stage_sweep(tmp_path, "launcher:\n  name: slurm\n  gpus_per_node: 4\n  mem_gb: 100\n  timeout_min: 90\n"
                                  "  pretrain: {gpus_per_node: 2}\n  eval: {timeout_min: 30}\n")
    sweep = expand(path, dry_run=True)
    asked = {(run.stage, run.config["launcher"]["gpus_per_node"], run.config["launcher"]["mem_gb"],
              run.config["launcher"]["timeout_min"]) for run in sweep.runs}
    assert asked == {("pretrain", 2, 100, 90), ("distill", 4, 100, 90), ("eval", 1, 25.0, 30)}
    assert sweep.stage_blocks == {"pretrain": {"gpus_per_node": 2}, "eval": {"timeout_min": 30}}
    # the command line comes last: launcher.KEY for every stage (over the stage blocks too, never ignored),
    # launcher.STAGE.KEY for that stage alone
    again = expand(path, ["launcher.timeout_min=45"], dry_run=True)
    assert {(run.stage, run.config["launcher"]["timeout_min"]) for run in again.runs} == {
        ("pretrain", 45), ("distill", 45), ("eval", 45)}
    again = expand(path, ["launcher.eval.timeout_min=20", "launcher.distill.cpus_per_task=6"], dry_run=True)
    assert {(run.stage, run.config["launcher"]["timeout_min"], run.config["launcher"]["cpus_per_task"])
            for run in again.runs} == {("pretrain", 90, 4), ("distill", 90, 6), ("eval", 20, 4)}
    assert again.stage_blocks == {"pretrain": {"gpus_per_node": 2}, "eval": {"timeout_min": 20},
                                  "distill": {"cpus_per_task": 6}}
    single = expand(_stage_sweep(tmp_path, "launcher: {name: slurm, gpus_per_node: 4}\n"), dry_run=True)
    # one block, as before: every stage asks it, but evaluation asks one GPU of it; hashes do not depend on it
    assert {(run.stage, run.config["launcher"]["gpus_per_node"]) for run in single.runs} == {
        ("pretrain", 4), ("distill", 4), ("eval", 1)}
    assert [run.hash for run in single.runs] == [run.hash for run in sweep.runs]


@pytest.mark.parametrize("block, key", [
    ("  eval: [gpus_per_node]\n", "launcher.eval"),
    ("  distill: {gpus: 8}\n", "launcher.distill.gpus"),
    ("  eval: {cpus_per_task: ten}\n", "launcher.eval.cpus_per_task"),
    ("  pretrain: {name: local}\n", "launcher.pretrain.name"),
    ("  eval: {additional_parameters: {gres: 'gpu:1'}}\n", "launcher.eval.additional_parameters.gres"),
    ("  additional_parameters: {gpus-per-node: 8}\n", "launcher.additional_parameters.gpus-per-node"),
    ("  additional_parameters: {gres: 'gpu:a100:8'}\n", "launcher.additional_parameters.gres"),
    ("  additional_parameters: {ntasks-per-node: 8}\n", "launcher.additional_parameters.ntasks-per-node"),
])
def test_stage_blocks_and_gpus_in_additional_parameters_are_checked(block, key, cli, fake_slurm, tmp_path):
    line = _refused(cli, fake_slurm, _stage_sweep(tmp_path, "launcher:\n  name: slurm\n" + block), key)
    if "additional_parameters.g" in key:
        assert "launcher.gpus_per_node" in line


def _refused(cli, fake_slurm, path: str, key: str, *overrides: str) -> str:
    """`seedrun sweep path overrides` is bad input: one line naming the file and `key`, exit 2, no sbatch, no
    database. Returns the line."""
    cli.env.update(PATH=os.environ["PATH"], FAKE_SLURM_DIR=str(fake_slurm))
    result = cli("sweep", path, *overrides, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: {key}"), result.stderr
    assert sbatch_calls(fake_slurm) == [] and not cli.db.exists()
    return lines[0]


@pytest.mark.parametrize("override, key", [
    ("launcher.distill.gpus=8", "launcher.distill.gpus: unknown setting"),
    ("launcher.eval.cpus_per_task=ten", "launcher.eval.cpus_per_task: expected an integer"),
    ("launcher.eval.timeout_min=[1", "command line 'launcher.eval.timeout_min=[1': expected KEY=VALUE with a YAML value"),
    ("launcher.pretrain.name=local", "launcher.pretrain.name: expected no name"),
])
def test_stage_settings_on_the_command_line_are_checked_as_the_files(override, key, cli, fake_slurm, tmp_path):
    _refused(cli, fake_slurm, _stage_sweep(tmp_path, "launcher:\n  name: slurm\n"), key, override)


def test_a_stage_block_under_the_local_launcher_is_refused(tmp_path):
    from seedrun.sweeps.sweep_file import expand

    with pytest.raises(InputError, match="launcher.eval: expected no stage block under the local launcher"):
        expand(_stage_sweep(tmp_path, "launcher:\n  name: local\n  eval: {procs: 1}\n"), dry_run=True)


def _with_sinfo(fake_slurm, cli, output: str) -> None:
    sinfo = fake_slurm.parent / "fake-bin" / "sinfo"  # beside the fake sbatch: the cluster it submits to
    sinfo.write_text(FAKE_SINFO)
    sinfo.chmod(0o755)
    cli.env.update(PATH=os.environ["PATH"], FAKE_SLURM_DIR=str(fake_slurm), FAKE_SINFO_OUT=output)


def test_a_request_that_fits_no_node_submits_nothing_and_records_nothing_as_submitted(cli, fake_slurm, tmp_path):
    _with_sinfo(fake_slurm, cli, "debug*|8|16000|(null)|1:00:00|2|c[1-2]\n")
    path = _stage_sweep(tmp_path, "launcher:\n  name: slurm\n  timeout_min: 30\n  distill: {cpus_per_task: 6, tasks_per_node: 2}\n")
    for args in (("--dry-run",), ()):
        result = cli("sweep", path, *args, check=False)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.strip() == (f"error: {path}: launcher.distill.cpus_per_task: 2 tasks x 6 CPUs = 12 CPUs a "
                                         "node asked; partition debug (default)'s nodes have 8 CPUs (distill stage)")
    assert sbatch_calls(fake_slurm) == []
    with sqlite3.connect(cli.db) as db:
        assert db.execute("select count(*) from runs where state != 'pending' or job_id is not null").fetchone()[0] == 0
    assert not list((cli.home / "runs").glob("*/run.json"))  # no attempt opened in any run folder
    # the same sweep within the nodes is submitted, and says where it fits
    write_sweep(tmp_path / "stages.yaml", open(path).read().replace("cpus_per_task: 6", "cpus_per_task: 4"))
    result = cli("sweep", path)
    assert "request distill: fits partition debug (default): 2 nodes with 0 GPUs, 8 CPUs, 16 GB, 60 min limit" in result.stdout
    assert len(sbatch_calls(fake_slurm)) == 3  # teacher, students, evaluations


def test_without_sinfo_the_check_is_skipped_with_one_line(cli, fake_slurm, tmp_path):
    cli.env.update(PATH=os.environ["PATH"], FAKE_SLURM_DIR=str(fake_slurm))  # a fake sbatch, no sinfo beside it
    path = _stage_sweep(tmp_path, "launcher: {name: slurm, gpus_per_node: 64, tasks_per_node: 1}\n")
    dry = cli("sweep", path, "--dry-run")
    assert dry.stdout.count("requests not checked against the cluster: no sinfo beside an sbatch on PATH") == 1
    plan = json.loads(cli("sweep", path, "--dry-run", "--json").stdout)
    assert plan["requests_checked"] is False and "no sinfo" in plan["requests_not_checked"]
    assert "requests not checked" in cli("sweep", path).stdout and len(sbatch_calls(fake_slurm)) == 3


def test_the_paper_sweeps_ask_per_task_what_one_gpu_needs_and_fit_an_8_gpu_node(cli, fake_slurm):
    _with_sinfo(fake_slurm, cli, "gpu*|96|515000|gpu:8|2-00:00:00|4|g[01-04]\n")
    for name in ("temperature", "distillation", "lr", "main", "queue", "teacher", "wd"):
        out = cli("sweep", f"sweeps/{name}.yaml", "--dry-run").stdout
        assert "pretrain teacher pre-training" in out and "distill  distillation: 1 node x 8 tasks: per task 10 CPUs, " \
            "1 GPU; per node 8 GPUs, 80 CPUs, 320 GB" in out, out
        assert "eval     evaluation" in out and "per node 1 GPU, 10 CPUs, 40 GB" in out
        assert "request distill: fits partition gpu (default)" in out
    _with_sinfo(fake_slurm, cli, "gpu*|64|515000|gpu:8|2-00:00:00|4|g[01-04]\n")  # the 64-CPU nodes
    result = cli("sweep", "sweeps/temperature.yaml", "--dry-run", check=False)
    assert result.returncode == 2 and "launcher.distill.cpus_per_task: 8 tasks x 10 CPUs = 80 CPUs" in result.stderr


def test_the_checked_dry_run_imports_neither_torch_nor_sqlalchemy(cli, fake_slurm):
    import subprocess
    import sys

    _with_sinfo(fake_slurm, cli, "gpu*|96|515000|gpu:8|2-00:00:00|4|g[01-04]\n")
    code = ("import sys; from seedrun.cli import main; code = main(['sweep', 'sweeps/temperature.yaml', '--dry-run']); "
            "print('imported', sorted(m for m in ('torch', 'sqlalchemy') if m in sys.modules), code)")
    out = subprocess.run([sys.executable, "-c", code], cwd=cli.cwd, env=cli.env, capture_output=True, text=True, check=True)
    assert "request distill: fits partition gpu" in out.stdout and out.stdout.strip().endswith("imported [] 0")
