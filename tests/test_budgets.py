"""Budgets that respect progress (issue 13 item 5): a time limit that ends an attempt which advanced the
run requeues it without spending max_timeouts; only an attempt that made no progress spends it; the
run's events (`seedrun logs`) say which."""

from __future__ import annotations

import json
import signal
import sqlite3
import time

import pytest

from conftest import attempt_job
from seedrun.job import run_job as jobmod
from seedrun.job.budgets import spends_budget
from seedrun.job.failures import AttemptOver, Stopped
from seedrun.store.engine import session_scope
from seedrun.store.schema import Run


def test_the_decision():
    assert not spends_budget("timeouts", progressed=True)
    assert spends_budget("timeouts", progressed=False)
    assert spends_budget("preemptions", progressed=True) and spends_budget("preemptions", progressed=False)


class TimedOutHandler:
    """Where submitit's USR2 handler stands: it says the job reached its time limit, and requeues (exits)."""

    def __init__(self):
        self.calls = 0

    def has_timed_out(self) -> bool:
        return True

    def checkpoint_and_try_requeue(self, signum, frame):
        self.calls += 1
        raise SystemExit(-1)


class StepsJob(jobmod.RunJob):
    """Trains with the real training.loop.Loop (its stop check, its atomic checkpoint) a state without a
    network; the time limit's USR2 comes after `steps` steps, or, with steps=0, while the attempt is stuck
    before its first step (the grace alarm then hands over with no checkpoint written)."""

    steps = 3

    def _train(self, stage, config, run_dir, hooks, teacher_dir):
        import torch

        from seedrun.training.checkpoints import load_checkpoint
        from seedrun.training.loop import Interrupted, Loop

        loop = Loop(run_dir, hooks, steps_per_epoch=1000, epochs=1, warmup_epochs=0, base_lr=0.1,
                    checkpoint_every_steps=0)
        step = (load_checkpoint(run_dir) or {"step": 0})["step"]
        usr2 = jobmod.submitit.JobEnvironment._usr_sig()
        if self.steps == 0:
            signal.raise_signal(usr2)
            time.sleep(30)  # stuck: the alarm (grace 5 s) requeues from here
            pytest.fail("the grace alarm did not hand over")
        try:
            for i in range(self.steps):
                step += 1
                if i == self.steps - 1:
                    signal.raise_signal(usr2)  # the time limit's notice, during the attempt's last step
                loop.after_step(step, lambda: {"step": step, "weights": torch.zeros(2)})
        except Interrupted as exc:
            raise Stopped(str(exc)) from None
        pytest.fail("the stop was not honoured")


def _attempt(first: "StepsJob", steps, handler, ends=SystemExit):
    job = StepsJob(first.run_hash, first.run_dir, None, first.attempt)  # the same attempt, requeued
    job.steps = steps
    usr2 = jobmod.submitit.JobEnvironment._usr_sig()
    previous = signal.getsignal(usr2)
    signal.signal(usr2, handler.checkpoint_and_try_requeue)
    try:
        with pytest.raises(ends):  # SystemExit: submitit requeued; AttemptOver: the run failed instead
            job()
    finally:
        signal.signal(usr2, previous)


def _row(url):
    from seedrun.store.catchup import catch_up

    catch_up(url, quiet=True)  # what `seedrun status` does first
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        db.row_factory = sqlite3.Row
        return dict(db.execute("select * from runs").fetchone())


def test_timeouts_with_progress_requeue_free_and_one_without_spends_the_budget(tmp_path, monkeypatch, capsys):
    from seedrun.views.logs import show_logs

    monkeypatch.setenv("SEEDRUN_HOME", str(tmp_path / "home"))
    url = f"sqlite:///{tmp_path / 'seedrun.db'}"
    with session_scope(url) as session:  # max_timeouts 0: any counted timeout fails the run
        session.add(Run(hash="ab" * 32, stage="distill", run_dir=str(tmp_path / "run"), provenance={}, state="pending",
                        config={"launcher": {"max_timeouts": 0, "signal_delay_s": 15}}, job_id="9_1"))
    handler = TimedOutHandler()
    first = attempt_job(StepsJob, url, "ab" * 32)
    for attempt in (1, 2):  # each advanced the run by 3 steps and wrote its checkpoint at the stop
        _attempt(first, 3, handler)
        row, prov = _row(url), json.loads(_row(url)["provenance"])
        assert (row["state"], row["attempts"]) == ("submitted", attempt), row["error"]
        assert prov["timeouts"] == 0 and prov["progress_timeouts"] == attempt
    assert handler.calls == 2
    _attempt(first, 0, handler, ends=AttemptOver)  # stuck before a step: no progress, the budget is spent
    row, prov = _row(url), json.loads(_row(url)["provenance"])
    assert (row["state"], row["failure_reason"]) == ("failed", "timeout")
    assert "timeout budget spent: 1 timeouts > max_timeouts=0" in row["error"]
    assert prov["timeouts"] == 1 and prov["progress_timeouts"] == 2 and handler.calls == 2  # not requeued

    capsys.readouterr()
    show_logs(url, "abab")
    out = capsys.readouterr().out
    assert out.count("made progress (3 steps, checkpoint written): budget not spent") == 2
    assert "made no progress: counted against max_timeouts" in out
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "requeueing after a timeout that made progress (3 steps): not counted (timeouts: 0 of 0)" in log


# ---- what an attempt costs: GPU hours of the GPUs the run used -------------------------------------

def test_gpu_hours_count_the_gpus_the_run_used_not_those_held(monkeypatch):
    from seedrun.job.provenance import add_hours, gpus_used, layout

    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "8")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    both_nodes = layout(16, 16, "auto")  # gpus_per_node 8, nodes 2: a process per GPU
    assert both_nodes == {"world": 16, "nodes": 2, "ranks_per_node": 8, "training_ranks": 16, "gpus_used": 16,
                          "gpus_held": 16, "layout": "8x2 gpu"}
    one_rank = layout(16, 1, "auto")  # a stage rank 0 trains alone: 1 of the 16 GPUs held
    assert one_rank["gpus_used"] == 1 and one_rank["gpus_held"] == 16
    assert layout(16, 16, "cpu")["gpus_used"] == 0 and layout(16, 16, "cpu")["layout"] == "8x2 cpu"
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "1")
    assert "layout" not in layout(1, 1, "auto")  # one process: status shows no layout

    prov = dict(one_rank)
    add_hours(prov, 3600)  # the count the attempt recorded at its start
    assert prov["wall_hours"] == 1 and prov["gpu_hours"] == 1
    add_hours(prov, 1800, gpus_used=16)
    assert prov["wall_hours"] == 1.5 and prov["gpu_hours"] == 9
    import torch  # loaded; CUDA never initialised by this process: nothing was used

    assert gpus_used(16, 16) == (16 if torch.cuda.is_initialized() else 0)
