"""Two ranks per run through the CLI and the local launcher (submitit LocalExecutor, tasks_per_node=2,
gloo on CPU): rank 0 records each run once, rank 1 trains beside it and logs to its own file; an
exception on rank 1 fails the run with its class in bounded time; a USR2 at a step requeues the whole
job, which resumes and ends bit-identical to the uninterrupted 2-rank run.

Faults are injected into the real job processes by a sitecustomize.py on PYTHONPATH (the task's
SUBMITIT_LOCAL_GLOBALID says which rank it is), so nothing in seedrun knows about them.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
import torch

from conftest import CLI
from seedrun.job.ranks import on_all_ranks

SWEEP = """name: ranks
ablation: temperature
base:
  data: tiny
  teacher.width: 8
  teacher.pretrain.epochs: 1
  teacher.pretrain.batch_size: 32
  teacher.pretrain.queue_size: 128
  student.width: 8
  distill.epochs: 2
  distill.batch_size: 32
  distill.queue_size: 128
  distill.warmup_epochs: 0
  threads: 1
grid:
  distill.tau_teacher: [TAU]
launcher:
  name: local
  procs: 2
"""

# Loaded by every Python process of the sweep; acts only in the job's task of the rank it is told.
SITECUSTOMIZE = '''
import os
if os.environ.get("SUBMITIT_LOCAL_GLOBALID") == os.environ.get("FAULT_RANK") and os.environ.get("FAULT"):
    import json
    import signal
    from pathlib import Path
    import seedrun.training.loop as loop
    marker = Path(os.environ["FAULT_MARKER"])
    after_step = loop.Loop.after_step
    if os.environ["FAULT"] == "kill-remote":  # this rank's process record says another host: rank 0 cannot see its pid
        import socket
        socket.gethostname = lambda: "node-b"

    def faulty(self, step, state):
        distilling = json.loads((self.run_dir / "run.json").read_text())["stage"] == "distill"
        if step == 5 and distilling and not marker.exists() and os.environ["FAULT"] in ("raise", "usr2", "kill", "kill-remote"):
            marker.write_text(str(os.getpid()))
            if os.environ["FAULT"] == "raise":
                raise ValueError("injected on this rank")
            if os.environ["FAULT"] in ("kill", "kill-remote"):  # as the OOM killer would: no exception, no record
                os.kill(os.getpid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGUSR2)  # as Slurm or a preemption would: the job stops at a step
        return after_step(self, step, state)
    loop.Loop.after_step = faulty

    import seedrun.data.loader as loader
    view = loader.MemoryBatch.view

    def unreadable(self, k, device=None):  # reading step 5's batch fails on this rank alone
        if self.step == 5 and os.environ["FAULT"] == "data" and not marker.exists():
            marker.write_text(str(os.getpid()))
            from seedrun.data.formats import DataError
            raise DataError("101 unreadable images, more than data.max_bad_images=100 (injected on this rank)")
        return view(self, k, device)
    loader.MemoryBatch.view = unreadable

    import time
    import seedrun.training.checkpoints as checkpoints
    save = checkpoints.save_checkpoint

    def slow(state, run_dir):  # a checkpoint written to a slow filesystem: longer than a step's timeout
        if os.environ["FAULT"] == "slowsave" and not marker.exists():
            marker.write_text(str(os.getpid()))
            time.sleep(25)
        if os.environ["FAULT"] == "failsave" and not marker.exists():
            marker.write_text(str(os.getpid()))
            raise OSError(28, "No space left on device (injected)")
        return save(state, run_dir)
    checkpoints.save_checkpoint = slow
'''


def _sweep(home: Path, tmp: Path, tau: str, fault: str = "", rank: int = 1, timeout_s: str = "60") -> tuple[CLI, float]:
    cli = CLI(home)
    site = tmp / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    cli.env.update(PYTHONPATH=str(site), FAULT=fault, FAULT_RANK=str(rank), FAULT_MARKER=str(tmp / f"fault-{tau}"),
                   SEEDRUN_DIST_TIMEOUT_S=timeout_s,
                   # a shell that followed a DDP tutorial: the jobs must rendezvous where their launcher says
                   MASTER_ADDR="203.0.113.1", MASTER_PORT="1")
    path = tmp / f"s{tau}.yaml"
    path.write_text(SWEEP.replace("TAU", tau))
    started = time.monotonic()
    result = cli("sweep", str(path), check=False, timeout=300)
    return result, time.monotonic() - started


def _rows(home: Path) -> list[tuple]:
    with sqlite3.connect(home / "seedrun.db") as c:
        return c.execute("select hash, stage, state, attempts, failure_reason, error, run_dir, provenance "
                         "from runs order by stage desc, hash").fetchall()


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One uninterrupted 2-rank sweep: a teacher pre-trained on 2 ranks, one distillation on 2 ranks."""
    tmp = tmp_path_factory.mktemp("straight")
    result, seconds = _sweep(tmp / "home", tmp, "0.01")
    assert result.returncode == 0, result.stdout + result.stderr
    return tmp / "home", result, seconds


def test_a_two_rank_sweep_completes_and_rank_0_records_each_run_once(straight):
    home, result, _ = straight
    assert "completed 2" in result.stdout
    rows = _rows(home)
    assert [(stage, state, attempts) for _, stage, state, attempts, *_ in rows] == [
        ("pretrain", "completed", 1), ("distill", "completed", 1)]
    # the shell's MASTER_ADDR/MASTER_PORT (unreachable) were ignored, with one line in each rank's output
    outputs = "".join(path.read_text() for path in (home / "submitit").rglob("*_log.out"))
    assert outputs.count("ignoring MASTER_ADDR=203.0.113.1 MASTER_PORT=1 inherited from the submitting shell") == 4
    for _, stage, _, _, _, _, run_dir, prov in rows:
        run_dir = Path(run_dir)
        p = json.loads(prov)
        assert p["world"] == 2 and p["nodes"] == 1 and p["layout"] == "2x1 cpu"  # `seedrun status` shows it
        # CPU ranks: no GPU used, none charged, whatever the machine holds
        assert p["gpus_used"] == 0 and p["gpu_hours"] == 0 and p["wall_hours"] > 0
        assert p["training_ranks"] == (2 if on_all_ranks(stage) else 1)
        rank1 = (run_dir / "log.rank1.txt").read_text()
        assert "[rank 1]" not in (run_dir / "log.txt").read_text()  # rank 0's log is rank 0's
        assert not list(run_dir.glob("failure.rank*.json"))
        metrics = (run_dir / "metrics.jsonl").read_text().splitlines()
        assert len(metrics) == (1 if stage == "pretrain" else 2)  # one line an epoch: rank 1 recorded none
        if stage == "pretrain":  # MoCo-v2 on both ranks (seedrun.training.pretrain)
            assert "(pretrain) rank 1 of 2" in rank1 and "epoch 1/1" in rank1
        else:
            assert "rank 1 of 2" in rank1 and "epoch 2/2" in rank1
            with sqlite3.connect(home / "seedrun.db") as c:
                names = [n for (n,) in c.execute("select name from metrics")]
            assert names.count("loss") == 2 + 1  # the teacher's epoch and the student's two, once each


def test_an_exception_on_rank_1_fails_the_run_with_its_class_in_bounded_time(straight, tmp_path):
    home, _, _ = straight
    result, seconds = _sweep(home, tmp_path, "0.1", fault="raise")  # the teacher is done: only the student runs
    assert "failed 1" in result.stdout, result.stdout + result.stderr
    failed = [row for row in _rows(home) if row[2] == "failed"]
    assert len(failed) == 1
    _, stage, _, attempts, reason, error, run_dir, _ = failed[0]
    assert (stage, attempts, reason) == ("distill", 1, "exception")
    assert "rank 1 raised ValueError: injected on this rank" in error
    assert seconds < 120  # rank 0's collective fails when rank 1 exits; never the process group's timeout
    assert "ValueError" in (Path(run_dir) / "log.rank1.txt").read_text()


def test_usr2_at_a_step_requeues_both_ranks_and_resume_is_bit_identical(straight, tmp_path):
    home, _, _ = straight
    other = tmp_path / "home"
    result, _ = _sweep(other, tmp_path, "0.01", fault="usr2", rank=0)
    assert "completed 2" in result.stdout, result.stdout + result.stderr
    assert (tmp_path / "fault-0.01").exists()  # the signal did come, at step 5
    row = [r for r in _rows(other) if r[1] == "distill"][0]
    prov = json.loads(row[7])
    assert row[3] == 2 and prov["preemptions"] == 1  # one requeue of the whole job
    log = (Path(row[6]) / "log.txt").read_text()
    # the signal came after step 5's all-reduce: the ranks agree on it in step 6's, and stop after step 6
    assert "requeueing after a preemption" in log and "resumed from step 6" in log
    assert "resumed from step 6" in (Path(row[6]) / "log.rank1.txt").read_text()
    straight_row = [r for r in _rows(home) if r[1] == "distill" and r[2] == "completed"][0]
    a, b = (torch.load(Path(r[6]) / "checkpoint.pt", weights_only=True) for r in (straight_row, row))
    assert a["step"] == b["step"] == 20
    for name, value in a["student"].items():
        assert torch.equal(value, b["student"][name]), name
    assert torch.equal(a["queue"]["embeddings"], b["queue"]["embeddings"])


def _failed_distillation(home: Path, before: set) -> tuple:
    """The one run that failed since `before` (the hashes failed then: the tests share the teacher's home)."""
    failed = [row for row in _rows(home) if row[2] == "failed" and row[0] not in before]
    assert len(failed) == 1
    return failed[0]


def _failed(home: Path) -> set:
    return {row[0] for row in _rows(home) if row[2] == "failed"}


def test_a_data_error_on_rank_1_is_told_at_the_steps_all_reduce_and_recorded_with_its_class(straight, tmp_path):
    """Rank 1 alone fails reading step 5's batch (its bad-image count is its own): it joins the step's
    all-reduce saying it failed, so rank 0 stops there at once (with NCCL it would otherwise wait in its
    next collective until the timeout), and records rank 1's class."""
    home, _, _ = straight
    before = _failed(home)
    result, _ = _sweep(home, tmp_path, "0.2", fault="data")
    recorded = time.time()
    assert "failed 1" in result.stdout, result.stdout + result.stderr
    _, stage, _, attempts, reason, error, run_dir, _ = _failed_distillation(home, before)
    assert (stage, attempts, reason) == ("distill", 1, "data_error")
    assert "rank 1 raised DataError: 101 unreadable images" in error
    log = (Path(run_dir) / "log.txt").read_text()
    assert "PeerFailed: another rank failed before the all-reduce of step 6" in log  # told, not a broken connection
    assert recorded - (tmp_path / "fault-0.2").stat().st_mtime < 60


@pytest.mark.parametrize("fault, tau, says", [("kill", "0.3", "on"),
                                              ("kill-remote", "0.6", "on node-b left no failure record")])
def test_rank_1_killed_at_step_5_fails_the_run_as_killed_within_60_s(straight, tmp_path, fault, tau, says):
    """SIGKILL leaves no exception and no failure record: rank 0's collective breaks, and rank 0 finds rank
    1's process (process.rank1.json) gone without a record. Rank 0 cannot look up the process of a rank on
    another node (kill-remote: rank 1's record names another host): a rank that raises writes its failure
    record before it exits, so one still silent after FAILURE_WAIT_S was killed (or lost its node)."""
    home, _, _ = straight
    before = _failed(home)
    result, _ = _sweep(home, tmp_path, tau, fault=fault)
    recorded = time.time()
    assert "failed 1" in result.stdout, result.stdout + result.stderr
    _, stage, _, attempts, reason, error, run_dir, _ = _failed_distillation(home, before)
    assert (stage, attempts, reason) == ("distill", 1, "killed")
    marker = tmp_path / f"fault-{tau}"
    assert f"rank 1 was killed: process {int(marker.read_text())} {says}" in error
    assert recorded - marker.stat().st_mtime < 60


def test_rank_0_writing_a_checkpoint_longer_than_a_steps_timeout_is_waited_for(straight, tmp_path):
    """Per-step collectives time out after SEEDRUN_DIST_TIMEOUT_S (10 s here); rank 0's long phases (a
    checkpoint written for 25 s) are waited for on the store with a timeout of their own."""
    home, _, _ = straight
    result, _ = _sweep(home, tmp_path, "0.4", fault="slowsave", rank=0, timeout_s="10")
    assert (tmp_path / "fault-0.4").exists()  # the slow write did happen
    assert "completed 1" in result.stdout, result.stdout + result.stderr


def test_a_checkpoint_write_failing_on_rank_0_ends_every_rank_at_once(straight, tmp_path):
    """Rank 0 alone writes checkpoints while the others wait on the store: its failure reaches them there at
    once (with NCCL they would have waited in a barrier until the timeout), and rank 0 records its own."""
    home, _, _ = straight
    before = _failed(home)
    result, _ = _sweep(home, tmp_path, "0.5", fault="failsave", rank=0, timeout_s="600")
    recorded = time.time()
    assert "failed 1" in result.stdout, result.stdout + result.stderr
    _, stage, _, attempts, reason, error, run_dir, _ = _failed_distillation(home, before)
    assert (stage, attempts, reason) == ("distill", 1, "exception") and "No space left on device" in error
    rank1 = (Path(run_dir) / "log.rank1.txt").read_text()
    assert "PeerFailed: rank 0 failed in writing the checkpoint: OSError" in rank1
    assert recorded - (tmp_path / "fault-0.5").stat().st_mtime < 60  # not the 600 s a step may wait
