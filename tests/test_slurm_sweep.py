"""`seedrun sweep` with the Slurm launcher against the real one-node test cluster (tests/cluster/).

Through the CLI as a user runs it: arrays complete and are recorded; a preempted run (submitit's
`_interrupt()`: SIGTERM then USR2) and a requeued run (`scontrol requeue`: SIGTERM only) resume and end
bit-identical to uninterrupted runs; a scancel'ed run shows as cancelled within 30 s; a second
submission submits nothing; a failing teacher is classified and its student blocked; and 32 array
tasks that write their results at the same moment all land in SQLite.

Needs root on Linux (the slurm_cluster fixture starts the cluster). Run with the project venv's python:
jobs run `sys.executable`. About 3 to 4 minutes on 2 cores.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import cloudpickle
import pytest

from conftest import CLI, TINY_BASE, job_hooks, write_sweep
from seedrun.job.run_job import RunJob

pytestmark = pytest.mark.slurm

# FastJob below is unpickled by array tasks in a fresh interpreter where tests/ is not importable.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

NASTY = "x'; touch {canary}; echo \"$(touch {canary})\" `touch {canary}` && rm -rf / #"


def sweep_text(name: str, base: list[str], launcher: dict[str, Any], grid: str = "", seeds: str = "") -> str:
    block = {"name": "slurm", "partition": "debug", "cpus_per_task": 1, "timeout_min": 30, **launcher}
    return (f"name: {name}\nbase:\n" + "".join(f"  - {json.dumps(o)}\n" for o in base) + grid + seeds
            + "launcher: " + json.dumps(block) + "\n")


def status(cli: CLI) -> dict[str, Any]:
    return json.loads(cli("status", "--json").stdout)


def wait_for(poll: Callable[[], Any], ok: Callable[[Any], bool], timeout_s: float, every_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = poll()
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(every_s)


def settled(report: dict[str, Any]) -> bool:
    return all(run["state"] not in ("pending", "submitted", "running") for run in report["runs"])


def provenance(cli: CLI) -> dict[str, dict[str, Any]]:
    """Each run's attempts and provenance once `seedrun status` has brought the run folders in."""
    cli("status", "--json")
    with sqlite3.connect(cli.db) as db:
        return {h: {"attempts": a, **json.loads(p)} for h, a, p in db.execute("select hash, attempts, provenance from runs")}


def run_dir(cli: CLI, run_hash: str) -> Path:
    return cli.home / "runs" / run_hash[:16]


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> tuple[str, str]:
    """A teacher checkpoint file (random weights): distillation without a pre-training stage."""
    import torch

    from seedrun.models.model_file import save_model
    from seedrun.models.registry import create_network

    torch.manual_seed(0)
    backbone, head, _ = create_network("resnet18", 8, True, 3, 128)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    digest = save_model(path, backbone, head, arch="resnet18", width=8, small_images=True, in_chans=3, method="mocov2")
    return str(path), digest


def test_array_completes_records_every_run_and_is_not_submitted_twice(slurm_cluster, cli, tmp_path):
    canary = tmp_path / "PWNED"
    nasty = NASTY.format(canary=canary)
    path = write_sweep(tmp_path / "array.yaml", sweep_text(
        "array4", TINY_BASE, {"additional_parameters": {"comment": nasty}},
        grid="grid:\n  distill.tau_teacher: [0.1, 0.01]\n"))  # an array of two tasks
    started = time.monotonic()
    first = cli("sweep", str(path))
    assert time.monotonic() - started < 30
    assert "submitted 3 runs as 2 Slurm jobs" in first.stdout, first.stdout
    again = cli("sweep", str(path))  # everything in flight: nothing new
    assert "nothing to submit" in again.stdout and "Slurm job" not in again.stdout

    report = status(cli)
    teacher = next(run for run in report["runs"] if run["stage"] == "pretrain")
    students = [run for run in report["runs"] if run["stage"] == "distill"]
    (array,) = {run["job_id"].split("_")[0] for run in students}
    assert sorted(run["job_id"] for run in students) == [f"{array}_{i}" for i in range(2)]
    shown = subprocess.run(["scontrol", "show", "job", teacher["job_id"]], capture_output=True, text=True).stdout
    assert f"Comment={nasty}" in shown  # the launcher value reached Slurm as data, verbatim

    report = wait_for(lambda: status(cli), settled, 240, every_s=1)
    assert [run["state"] for run in report["runs"]] == ["completed"] * 3, report
    assert all(10.0 < run["metrics"]["knn_top1"] <= 100.0 and run["epoch"] == 1 for run in report["runs"])
    assert not canary.exists()

    prov = provenance(cli)
    model_sha = hashlib.sha256((run_dir(cli, teacher["hash"]) / "model.pt").read_bytes()).hexdigest()
    for run in students:
        p = prov[run["hash"]]
        assert p["slurm_array_job_id"] == run["job_id"].split("_")[0] and p["slurm_array_task_id"] == run["job_id"].split("_")[1]
        assert p["slurm_job_id"] and p["teacher_sha256"] == model_sha
        assert p["wall_hours"] > 0 and p["gpu_hours"] == 0 and p["attempts"] == 1
        assert Path(p["log_out"]).exists()
    assert "nothing to submit" in cli("sweep", str(path)).stdout  # all done: still nothing


def test_preempted_and_requeued_runs_resume_bit_identical(slurm_cluster, cli, tmp_path, teacher_file):
    """seed 0 is preempted (`job._interrupt()`: SIGTERM, USR2 -> checkpoint at the step, submitit requeues),
    seed 1 requeued (`scontrol requeue`: SIGTERM, then killed and rerun); the same sweep runs
    uninterrupted in a second SEEDRUN_HOME, and the weights must match to the bit."""
    from submitit.slurm.slurm import SlurmJob

    teacher, digest = teacher_file
    base = [o for o in TINY_BASE if not o.startswith(("teacher.pretrain", "distill.epochs"))]
    base += [f"teacher.checkpoint={teacher}", "distill.epochs=8", "distill.checkpoint_every_steps=3"]
    path = write_sweep(tmp_path / "resume.yaml", sweep_text("resume", base, {}, seeds="seeds: [0, 1]\n"))
    reference = CLI(tmp_path / "reference-home")
    job_hooks(cli, tmp_path, STEP_PACE_S="0.1")  # the runs outlast the test's look, however fast the machine
    cli("sweep", str(path))
    reference("sweep", str(path))

    def progress():
        return {run["axes"]["seed"]: run for run in status(cli)["runs"]}

    runs = wait_for(progress, lambda r: all(run["state"] == "running" and run["epoch"] >= 1 for run in r.values()), 120)
    assert all(run["state"] == "running" and run["epoch"] >= 1 for run in runs.values()), runs
    SlurmJob(folder=tmp_path, job_id=runs[0]["job_id"])._interrupt()
    subprocess.run(["scontrol", "requeue", runs[1]["job_id"]], check=True)

    for home in (cli, reference):
        report = wait_for(lambda: status(home), settled, 240, every_s=1)
        assert [run["state"] for run in report["runs"]] == ["completed", "completed"], report
    prov = provenance(cli)
    for seed, run in runs.items():
        p = prov[run["hash"]]
        assert p["attempts"] == 2 and p["preemptions"] == 1 and p["timeouts"] == 0, p
        assert p["teacher_sha256"] == digest
        log = (run_dir(cli, run["hash"]) / "log.txt").read_text()
        assert "resumed from step" in log
        assert ("requeueing after a preemption" if seed == 0 else "stopped on SIGTERM") in log
        import torch

        mine = torch.load(run_dir(cli, run["hash"]) / "checkpoint.pt", weights_only=True)
        theirs = torch.load(run_dir(reference, run["hash"]) / "checkpoint.pt", weights_only=True)
        assert mine["step"] == theirs["step"] == 80
        for key, value in theirs["student"].items():
            assert torch.equal(mine["student"][key], value), (seed, key)
        assert torch.equal(mine["queue"]["embeddings"], theirs["queue"]["embeddings"])
    assert provenance(reference)[runs[0]["hash"]]["attempts"] == 1


def test_cancelled_runs_show_as_cancelled_within_30s(slurm_cluster, cli, tmp_path, teacher_file):
    from seedrun.launchers.control import cancel

    teacher, _ = teacher_file
    base = [o for o in TINY_BASE if not o.startswith(("teacher.pretrain", "distill.epochs"))]
    base += [f"teacher.checkpoint={teacher}", "distill.epochs=500"]
    path = write_sweep(tmp_path / "cancel.yaml", sweep_text("cancel", base, {}, seeds="seeds: [0, 1]\n"))
    cli("sweep", str(path))
    runs = wait_for(lambda: status(cli)["runs"], lambda r: all(run["state"] == "running" for run in r), 90)
    assert all(run["state"] == "running" for run in runs), runs
    by_seed = {run["axes"]["seed"]: run for run in runs}

    subprocess.run(["scancel", by_seed[0]["job_id"]], check=True)  # behind seedrun's back
    t0 = time.monotonic()
    def first():
        return next(r for r in status(cli)["runs"] if r["hash"] == by_seed[0]["hash"])

    run = wait_for(first, lambda r: r["state"] == "cancelled", 30)
    assert time.monotonic() - t0 < 30
    assert run["state"] == "cancelled" and run["failure_reason"] == "cancelled", run

    assert cancel(f"sqlite:///{cli.db}", by_seed[1]["hash"][:12]) == 0  # `seedrun cancel RUN`
    from seedrun.launchers import cluster as slurm
    job_id = by_seed[1]["job_id"]
    states = wait_for(lambda: slurm.query_states([job_id]), lambda s: s[job_id].state is slurm.State.CANCELLED, 30)
    assert states[job_id].state is slurm.State.CANCELLED
    assert [r["state"] for r in status(cli)["runs"]] == ["cancelled", "cancelled"]


def test_a_cancelled_run_retried_trains_to_completion(slurm_cluster, cli, tmp_path, teacher_file):
    """The retry opens a new attempt in the run's folder before it submits: the job finds that attempt,
    not the cancel, and trains (with SQLite the folder used to carry the cancelled state to the job)."""
    teacher, _ = teacher_file
    base = [o for o in TINY_BASE if not o.startswith("teacher.pretrain")] + [f"teacher.checkpoint={teacher}"]
    path = write_sweep(tmp_path / "again.yaml", sweep_text("again", base, {}))
    cli("sweep", str(path))
    (run,) = status(cli)["runs"]
    assert cli("cancel", "again").returncode == 0
    report = wait_for(lambda: status(cli), settled, 60)
    assert [r["state"] for r in report["runs"]] == ["cancelled"], report["runs"]
    retried = cli("retry", "--failed")
    assert "retrying 1 runs (slurm)" in retried.stdout, retried.stdout
    report = wait_for(lambda: status(cli), settled, 180)
    (done,) = report["runs"]
    assert done["state"] == "completed" and done["metrics"]["knn_top1"] > 0, done
    record = json.loads((run_dir(cli, run["hash"]) / "run.json").read_text())
    assert record["state"] == "completed" and record["version"][0] == 2  # the retry's attempt trained


def test_a_failing_teacher_is_classified_and_its_student_blocked(slurm_cluster, cli, tmp_path):
    base = TINY_BASE + ["teacher.pretrain.lr=1e30", "teacher.pretrain.warmup_epochs=0"]  # NaN at the first step
    path = write_sweep(tmp_path / "nan.yaml", sweep_text("nan", base, {}))
    cli("sweep", str(path))
    report = wait_for(lambda: status(cli), settled, 120, every_s=1)
    runs = {run["stage"]: run for run in report["runs"]}
    assert (runs["pretrain"]["state"], runs["pretrain"]["failure_reason"]) == ("failed", "nan_loss"), runs
    assert "loss is nan" in runs["pretrain"]["error"]
    # its student waited on afterok: status found it could never start, cancelled and blocked it
    assert (runs["distill"]["state"], runs["distill"]["failure_reason"]) == ("blocked", "blocked"), runs
    assert runs["pretrain"]["hash"][:12] in runs["distill"]["error"]


def test_timeouts_that_make_progress_requeue_without_spending_the_budget(slurm_cluster, cli, tmp_path, teacher_file):
    """A 1-minute limit with USR2 20 s before it: every signal is a timeout (submitit's rule under 10
    minutes). Each attempt trains steps and checkpoints at the signal, so with max_timeouts=0 the run is
    still requeued every time and resumes (issue 13: a timeout spends the budget only without progress,
    tests/test_budgets.py); it is cancelled after two such requeues. The 40 s before the signal leave a slow
    machine time to start a job and train its first steps (with 15 s a CI machine once did not, and the run
    rightly failed its budget)."""
    from seedrun.launchers.control import cancel

    teacher, _ = teacher_file
    base = [o for o in TINY_BASE if not o.startswith(("teacher.pretrain", "distill.epochs"))]
    base += [f"teacher.checkpoint={teacher}", "distill.epochs=500", "distill.checkpoint_every_steps=3"]
    path = write_sweep(tmp_path / "timeout.yaml", sweep_text(
        "timeout", base, {"timeout_min": 1, "signal_delay_s": 20, "max_timeouts": 0}))
    cli("sweep", str(path))
    prov = wait_for(lambda: next(iter(provenance(cli).values())), lambda p: p.get("progress_timeouts", 0) >= 2, 300,
                    every_s=1)
    (run,) = status(cli)["runs"]
    log = (run_dir(cli, run["hash"]) / "log.txt").read_text()
    assert run["state"] in ("submitted", "running"), (run, prov, log[-3000:])  # requeued, not failed for its timeouts
    assert prov["progress_timeouts"] >= 2 and prov.get("timeouts", 0) == 0 and prov["attempts"] >= 2, prov
    assert sum("budget not spent" in e["detail"] for e in prov["events"]) >= 2, prov["events"]
    assert "requeueing after a timeout that made progress" in log and "resumed from step" in log
    assert cancel(f"sqlite:///{cli.db}", run["hash"][:12]) == 0


class FastJob(RunJob):
    """A RunJob whose training only waits until every task of the array has started, then records three
    epochs and its result at the same moment as all the others (the database writes of real runs)."""

    def _train(self, stage, config, run_dir, hooks, teacher_dir):
        import time
        from pathlib import Path

        barrier = Path(config["barrier"])
        (barrier / self.run_hash).touch()
        deadline = time.monotonic() + 120
        while len(list(barrier.iterdir())) < config["tasks"] and time.monotonic() < deadline:
            time.sleep(0.05)
        for epoch in (1, 2, 3):
            hooks.epoch_end(epoch, {"loss": 1.0 / epoch, "epoch_seconds": 0.0})
        return {"knn_top1": float(config["i"]), "knn_top5": 100.0}


def test_32_tasks_finishing_together_all_record_their_results(slurm_cluster, home, tmp_path):
    from rich.console import Console

    from seedrun.store.plan import read_plan, record
    from seedrun.sweeps.spec import RunSpec
    from seedrun.launchers.reconcile import reconcile
    from seedrun.store.records import load_records
    from seedrun.launchers.slurm import submit_slurm
    from seedrun.sweeps.sweep_file import Sweep

    db_url = f"sqlite:///{home / 'seedrun.db'}"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    launcher = {"name": "slurm", "partition": "debug", "cpus_per_task": 1, "timeout_min": 10, "array_parallelism": 64}
    runs = [RunSpec("pretrain", {"i": i, "tasks": 32, "barrier": str(barrier), "launcher": launcher}) for i in range(32)]
    sweep = Sweep(name="together", path="together", ablation=None, runs=runs, axes=[], launcher=launcher)
    record(read_plan(sweep, db_url), db_url)
    plan = read_plan(sweep, db_url)
    out = io.StringIO()
    masters = submit_slurm(plan, plan.to_run(), db_url, None, Console(file=out, width=200), job_factory=FastJob)
    assert len(masters) == 1, out.getvalue()

    def records():
        reconcile(db_url)
        return load_records(db_url, sweep="together")

    got = wait_for(records, lambda rs: all(r.state not in ("submitted", "running") for r in rs), 180, every_s=1)
    assert [r.state for r in got] == ["completed"] * 32, [(r.state, r.error) for r in got]
    assert sorted(r.metrics["knn_top1"] for r in got) == [float(i) for i in range(32)]
    with sqlite3.connect(home / "seedrun.db") as db:
        assert db.execute("select count(*) from metrics").fetchone()[0] == 32 * (3 * 2 + 2)
    logs = "".join(p.read_text() for p in (home / "submitit").rglob("*_log.err"))
    assert "database is locked" not in logs and "Traceback" not in logs
