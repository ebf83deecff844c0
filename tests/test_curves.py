"""TensorBoard curves in a run's folder: written while training, continued across an interruption and a
resume with no repeated or backwards step, even when an attempt resumes from a checkpoint older than
what an earlier attempt had already logged (TensorBoard's purge_step)."""

from __future__ import annotations

import shutil

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seedrun.sweeps.compose import compose_config
from seedrun.sweeps.spec import pretrain_config
from seedrun.training.checkpoints import CHECKPOINT
from seedrun.training.curves import Curves, open_curves, run_label
from seedrun.training.loop import Hooks, Interrupted
from seedrun.training.pretrain import pretrain
from conftest import TINY_BASE


class StopAfter(Hooks):
    """Asks the loop to stop after `stop_after` steps (None: never); keeps the log's lines and the epochs' metrics."""

    def __init__(self, stop_after=None):
        self.calls, self.stop_after, self.lines, self.metrics = 0, stop_after, [], []

    def log(self, message: str) -> None:
        self.lines.append(message)

    def epoch_end(self, epoch, metrics):
        self.metrics.append(metrics)

    def should_stop(self) -> bool:
        self.calls += 1
        return self.stop_after is not None and self.calls >= self.stop_after


@pytest.fixture(scope="module")
def config():
    # 320 images at batch 32: 10 steps an epoch, 3 epochs
    return pretrain_config(compose_config(TINY_BASE + ["teacher.pretrain.epochs=3"]))


def scalars(run_dir, tag):
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)], accumulator.Tags()["scalars"]


def test_curves_continue_across_resumes_with_no_repeated_step(config, tmp_path, monkeypatch):
    monkeypatch.setenv("SEEDRUN_LOGGERS", "tensorboard")
    monkeypatch.setattr("seedrun.training.curves.LOG_EVERY_STEPS", 4)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(Interrupted):
        pretrain(config, run_dir, StopAfter(13))  # checkpoint at step 13, mid second epoch
    shutil.copy(run_dir / CHECKPOINT, tmp_path / "step13.pt")
    with pytest.raises(Interrupted):
        pretrain(config, run_dir, StopAfter(10))  # resumes at 13, logs up to 23 and checkpoints there
    # the checkpoint at 23 is lost (a restored backup, a crash before it landed): the next attempt resumes
    # at 13, and what the second attempt logged after step 13 must not show twice
    shutil.copy(tmp_path / "step13.pt", run_dir / CHECKPOINT)
    hooks = StopAfter(None)
    results = pretrain(config, run_dir, hooks)

    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 3  # one file per attempt, read as one run
    losses, tags = scalars(run_dir, "train/loss")
    steps = [step for step, _ in losses]
    # every 4 steps and at each epoch's end (10, 20, 30), over the whole run's step count
    assert steps == [4, 8, 10, 12, 16, 20, 24, 28, 30]
    assert all(value > 0 for _, value in losses)
    for tag in ("train/lr", "train/images_per_s", "train/data_wait_fraction", "epoch/loss", "epoch/epoch_seconds",
                "epoch/images_per_s", "eval/knn_top1", "eval/pixels_knn_top1"):
        assert tag in tags, tag
    assert [step for step, _ in scalars(run_dir, "epoch/loss")[0]] == [10, 20, 30]
    assert scalars(run_dir, "eval/knn_top1")[0] == [(30, pytest.approx(results["knn_top1"]))]
    waits = [value for _, value in scalars(run_dir, "train/data_wait_fraction")[0]]
    assert all(0 <= value <= 1 for value in waits)
    # the epoch's record (metrics.jsonl, what `status` and `plot` read) carries the same rates
    assert hooks.metrics and all(m["images_per_s"] > 0 and 0 <= m["data_wait_fraction"] <= 1 for m in hooks.metrics)


def test_only_global_rank_0_writes(config, tmp_path):
    curves = open_curves(config, tmp_path, 0, steps_per_epoch=10, images_per_step=32, is_main=False)
    curves.step(10, 1.0, 0.1)
    curves.epoch(10, {"loss": 1.0})
    curves.close()
    assert list(tmp_path.iterdir()) == []


def test_the_run_label_says_setting_and_seed(config):
    distill = compose_config(TINY_BASE + ["seed=3", "distill.tau_teacher=0.05"])
    label = run_label(distill)
    assert "seed 3" in label and "tau_T 0.05" in label and distill["student"]["arch"] in label
    assert "seed 0" in run_label(config) and "teacher" in run_label(config)
    assert run_label({**distill, "sweep": "demo"}).startswith("demo: ")


def test_a_failing_logger_is_dropped_and_the_run_goes_on():
    class Broken:
        calls = 0

        def scalars(self, step, values):
            Broken.calls += 1
            raise ConnectionResetError(104, "Connection reset by peer")

        def flush(self):
            pass

        def close(self):
            raise ConnectionResetError(104, "Connection reset by peer")

    lines = []
    curves = Curves([Broken()], steps_per_epoch=10, images_per_step=32, log=lines.append)
    for step in range(1, 21):
        curves.step(step, 1.0, 0.1)  # would raise into the training loop if not guarded
    curves.close()
    assert Broken.calls == 1 and len(lines) == 1 and "Broken stopped for this attempt" in lines[0]


def test_a_logger_that_cannot_open_is_left_out(config, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError("api key rejected")

    monkeypatch.setattr("seedrun.training.wandb_run.WandbWriter.open", refuse)
    monkeypatch.setenv("SEEDRUN_LOGGERS", "tensorboard,wandb,mlflow")
    lines = []
    curves = open_curves(config, tmp_path, 0, steps_per_epoch=10, images_per_step=32, is_main=True, log=lines.append)
    assert [type(writer).__name__ for writer in curves.writers] == ["TensorBoardWriter"]
    assert any("wandb curves not written this attempt: PermissionError: api key rejected" in line for line in lines)
    assert any("mlflow ignored" in line for line in lines)
    curves.close()


def test_long_epochs_get_at_most_100_points_each():
    sent = []

    class Recorder:
        def scalars(self, step, values):
            sent.append(step)

        def flush(self):
            pass

        def close(self):
            pass

    curves = Curves([Recorder()], steps_per_epoch=5000, images_per_step=256)
    for step in range(1, 5001):
        curves.step(step, 1.0, 0.1)
    assert len(sent) == 100 and sent[0] == 50 and sent[-1] == 5000
