"""Curves across a real requeue on the test cluster (`scontrol requeue`: SIGTERM, the job checkpoints at a
step and Slurm runs it again): the TensorBoard curve of the run goes on from its checkpoint with no repeated
step, and, where wandb is installed, the offline W&B run of both attempts is one id."""

from __future__ import annotations

import importlib.util
import subprocess

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY_BASE, job_hooks, write_sweep
from test_slurm_sweep import run_dir, settled, status, sweep_text, teacher_file, wait_for

pytestmark = pytest.mark.slurm
__all__ = ["teacher_file"]  # the fixture, shared with test_slurm_sweep

WANDB = importlib.util.find_spec("wandb") is not None


def test_curves_and_the_wandb_run_continue_across_a_requeue(slurm_cluster, cli, tmp_path, teacher_file):
    teacher, _ = teacher_file
    base = [o for o in TINY_BASE if not o.startswith(("teacher.pretrain", "distill.epochs"))]
    base += [f"teacher.checkpoint={teacher}", "distill.epochs=8", "distill.checkpoint_every_steps=3"]
    job_hooks(cli, tmp_path, STEP_PACE_S="0.1")  # the run outlasts the test's look, however fast the machine
    cli.env.update(SEEDRUN_LOGGERS="tensorboard,wandb" if WANDB else "tensorboard", WANDB_MODE="offline",
                   WANDB_SILENT="true")
    cli("sweep", str(write_sweep(tmp_path / "requeue.yaml", sweep_text("requeue", base, {}))))
    (run,) = wait_for(lambda: status(cli)["runs"], lambda r: r[0]["state"] == "running" and r[0]["epoch"] >= 1, 120)
    assert run["state"] == "running", run
    subprocess.run(["scontrol", "requeue", run["job_id"]], check=True)
    report = wait_for(lambda: status(cli), settled, 240, every_s=1)
    assert report["runs"][0]["state"] == "completed", report

    folder = run_dir(cli, run["hash"])
    assert "resumed from step" in (folder / "log.txt").read_text()  # the requeue really resumed
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2  # one event file per attempt
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    steps = [event.step for event in accumulator.Scalars("train/loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 80  # 8 epochs of 10 steps, none twice
    assert [event.step for event in accumulator.Scalars("epoch/loss")] == list(range(10, 81, 10))
    if WANDB:
        run_id = (folder / "wandb_id.txt").read_text().strip()
        offline = [path.name for path in (folder / "wandb").glob("offline-run-*")]
        assert len(offline) == 2 and all(name.endswith(f"-{run_id}") for name in offline), offline
