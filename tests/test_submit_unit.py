"""Slurm submission, the job's stop/budget logic, reconciliation and triage, without a cluster.

Slurm's commands are replaced by small scripts on PATH (fake sbatch, srun, scontrol, scancel) that
record what they were given, so the sbatch files submitit writes can be checked against golden files
(tests/golden/sbatch/; after a deliberate change rewrite them with
    SEEDRUN_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_submit_unit.py).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from conftest import attempt_job, edit_record, write_sweep
from seedrun.job import run_job as jobmod
from seedrun.job.failures import AttemptOver, Stopped, classify_failure
from seedrun.store.plan import Plan, read_plan, record
from seedrun.sweeps.spec import RunSpec
from seedrun.launchers.slurm import ArrayPlan, dependency, executor_parameters, plan_arrays, slug, submit_slurm
from seedrun.sweeps.sweep_file import Sweep

GOLDEN = Path(__file__).parent / "golden" / "sbatch"
UPDATE_GOLDEN = os.environ.get("SEEDRUN_UPDATE_GOLDEN") == "1"
SLURM_LAUNCHER = {"name": "slurm", "partition": None, "account": None, "qos": None, "constraint": None, "nodes": 1,
                  "gpus_per_node": 0, "cpus_per_task": 4, "mem_gb": None, "timeout_min": 60, "array_parallelism": 256,
                  "signal_delay_s": 120, "max_preemptions": -1, "max_timeouts": 3, "max_failures": 0,
                  "additional_parameters": {}}

FAKE_SBATCH = r"""#!/bin/bash
# fake sbatch: keeps the script and the arguments, answers as Slurm does
d="$FAKE_SLURM_DIR"
n=$(cat "$d/next_id" 2>/dev/null || echo 1000)
echo $((n + 1)) > "$d/next_id"
printf '%s\n' "$*" >> "$d/sbatch.calls"
cp "${@: -1}" "$d/sbatch_$n.sh"
echo "Submitted batch job $n"
"""
FAKE_SRUN = r"""#!/bin/bash
# fake srun: records its arguments, one per line, and runs nothing
printf '%s\n' "$@" > "$FAKE_SLURM_DIR/srun.args"
"""
FAKE_SCONTROL = r"""#!/bin/bash
if [ "$1 $2" = "show config" ]; then echo "MaxArraySize            = ${FAKE_MAX_ARRAY_SIZE:-1001}"; exit 0; fi
printf '%s\n' "$*" >> "$FAKE_SLURM_DIR/scontrol.calls"
"""
FAKE_SCANCEL = r"""#!/bin/bash
printf '%s\n' "$*" >> "$FAKE_SLURM_DIR/scancel.calls"
"""
FAKE_UNREACHABLE = r"""#!/bin/bash
echo "$(basename "$0"): error: fake Slurm has no controller" >&2
exit 1
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """Fake Slurm commands first on PATH; returns the folder where they record their calls."""
    bin_dir, record_dir = tmp_path / "fake-bin", tmp_path / "fake-slurm"
    bin_dir.mkdir()
    record_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("scancel", FAKE_SCANCEL),
                       ("sacct", FAKE_UNREACHABLE), ("squeue", FAKE_UNREACHABLE)):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(record_dir))
    return record_dir


def sbatch_calls(record_dir: Path) -> list[str]:
    path = record_dir / "sbatch.calls"
    return path.read_text().splitlines() if path.exists() else []


def specs(n: int, stage: str = "distill", depends_on=None, launcher=None) -> list[RunSpec]:
    launcher = launcher or SLURM_LAUNCHER
    return [RunSpec(stage, {"i": i, "stage_tag": stage, "launcher": launcher}, axes={"i": i}, depends_on=depends_on)
            for i in range(n)]


def synthetic_plan(name: str, runs: list[RunSpec], db_url: str) -> Plan:
    sweep = Sweep(name=name, path=f"{name}.yaml", ablation=None, runs=runs, axes=["i"], launcher={"name": "slurm"})
    plan = read_plan(sweep, db_url)
    record(plan, db_url)
    return read_plan(sweep, db_url)


def db_url_for(home: Path) -> str:
    return f"sqlite:///{home / 'seedrun.db'}"


# ---- planning ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, arrays", [(1, 1), (1001, 1), (1002, 2), (2500, 3)])
def test_arrays_are_cut_at_max_array_size(n, arrays):
    planned = plan_arrays(specs(n), 1001)
    assert len(planned) == arrays
    assert [len(a.runs) for a in planned] == [min(1001, n - 1001 * i) for i in range(arrays)]
    assert sum((a.runs for a in planned), []) == sorted(specs(n), key=lambda r: r.depends_on or "")


def test_teachers_get_their_own_array_first_and_students_wait_for_exactly_theirs():
    teachers = [RunSpec("pretrain", {"t": t, "launcher": SLURM_LAUNCHER}) for t in range(3)]
    students = [s for t in (2, 0, 1) for s in specs(2, depends_on=teachers[t].hash)]
    planned = plan_arrays(students + teachers, limit=3)
    assert [a.stage for a in planned] == ["pretrain", "distill", "distill"]
    assert [len(a.runs) for a in planned] == [3, 3, 3]
    # students sorted by teacher: each array waits on as few teachers as possible
    assert [len(a.upstream) for a in planned[1:]] == [2, 2]
    task_ids = {teacher.hash: f"500_{i}" for i, teacher in enumerate(planned[0].runs)}
    deps = [dependency(a, task_ids, {"500": 3}, {}) for a in planned[1:]]
    assert all(dep.startswith("afterok:500_") and dep.count("500_") == 2 for dep in deps)
    one_array = ArrayPlan("distill", students, SLURM_LAUNCHER, sorted(task_ids))
    assert dependency(one_array, task_ids, {"500": 3}, {}) == "afterok:500"  # needs all three: the array
    # a teacher still in flight from an earlier submission is waited for by its job id; none: no dependency
    assert dependency(ArrayPlan("distill", [], {}, ["abc"]), {}, {}, {"abc": "77_3"}) == "afterok:77_3"
    assert dependency(ArrayPlan("distill", [], {}, ["abc"]), {}, {}, {}) is None


def test_launcher_settings_become_submitit_parameters():
    params = executor_parameters({**SLURM_LAUNCHER, "partition": "gpu", "account": "proj", "mem_gb": 64,
                                  "gpus_per_node": 8, "additional_parameters": {"mail-type": "END"}}, "seedrun-x-distill")
    assert params == {
        "name": "seedrun-x-distill", "timeout_min": 60, "nodes": 1, "tasks_per_node": 8, "slurm_array_parallelism": 256,
        "slurm_signal_delay_s": 120, "cpus_per_task": 4, "gpus_per_node": 8, "mem_gb": 64.0, "slurm_partition": "gpu",
        "slurm_account": "proj", "slurm_additional_parameters": {"requeue": True, "mail-type": "END"},
    }
    assert slug("a b/c;$(x)") == "a-b-c-x" and slug("///") == "sweep"


# ---- submission through fake Slurm commands ---------------------------------------------------------

def test_1002_runs_are_two_sbatch_calls_recorded_in_one_go_and_not_submitted_again(home, fake_slurm):
    db_url = db_url_for(home)
    plan = synthetic_plan("big", specs(1002), db_url)
    out = io.StringIO()
    masters = submit_slurm(plan, plan.to_run(), db_url, None, Console(file=out, width=200))
    assert masters == ["1000", "1001"]
    calls = sbatch_calls(fake_slurm)
    assert len(calls) == 2
    assert "--array=0-1000%256" in (fake_slurm / "sbatch_1000.sh").read_text()
    assert "--array" not in (fake_slurm / "sbatch_1001.sh").read_text()  # one run left: a plain job
    with sqlite3.connect(home / "seedrun.db") as db:
        rows = db.execute("select state, job_id, provenance from runs").fetchall()
    assert {state for state, _, _ in rows} == {"submitted"}
    job_ids = sorted(job_id for _, job_id, _ in rows)
    assert len(set(job_ids)) == 1002 and "1001" in job_ids and "1000_0" in job_ids and "1000_1000" in job_ids
    prov = json.loads(rows[0][2])
    assert prov["submission"]["array_job_id"] in ("1000", "1001") and prov["launcher"]["max_timeouts"] == 3
    assert "submitted 1002 runs as 2 Slurm jobs" in out.getvalue()
    again = read_plan(plan.sweep, db_url)
    assert again.to_run() == []
    assert submit_slurm(again, again.to_run(), db_url, None, Console(file=io.StringIO())) == []
    assert len(sbatch_calls(fake_slurm)) == 2


def test_recording_a_submission_keeps_what_status_brought_in_from_fast_jobs(home):
    """A task can start within a second of sbatch and write its folder; a `status` that brings the folder
    in before the submission is recorded moves the run to running: the record keeps that."""
    from seedrun.launchers.slurm import _open_attempts, _record

    db_url = db_url_for(home)
    runs = specs(3)
    synthetic_plan("race", runs, db_url)
    attempts, done = _open_attempts(db_url, [r.hash for r in runs])
    assert done == [] and {a.number for a in attempts.values()} == {1}
    edit_record(attempts[runs[2].hash].run_dir, state="running", job_id="7_2")  # the fast task started
    run_row(db_url, runs[2].hash)  # `seedrun status` meanwhile: brings the folder in
    _record(db_url, {r.hash: f"7_{i}" for i, r in enumerate(runs)}, {}, {r.hash: {} for r in runs}, attempts)
    got = [(run_row(db_url, r.hash)["state"], run_row(db_url, r.hash)["job_id"], run_row(db_url, r.hash)["attempt"])
           for r in runs]
    assert got == [("submitted", "7_0", 1), ("submitted", "7_1", 1), ("running", "7_2", 1)]


def test_students_of_a_failed_teacher_are_blocked_not_submitted(home, fake_slurm):
    db_url = db_url_for(home)
    teacher = RunSpec("pretrain", {"t": 0, "launcher": SLURM_LAUNCHER})
    students = specs(2, depends_on=teacher.hash)
    plan = synthetic_plan("blocked", [teacher] + students, db_url)
    with sqlite3.connect(home / "seedrun.db") as db:
        db.execute("update runs set state = 'failed', failure_reason = 'nan_loss' where hash = ?", (teacher.hash,))
    plan = read_plan(plan.sweep, db_url)
    assert submit_slurm(plan, plan.to_run(), db_url, None, Console(file=io.StringIO())) == []
    assert sbatch_calls(fake_slurm) == []
    with sqlite3.connect(home / "seedrun.db") as db:
        states = dict(db.execute("select hash, state from runs where stage = 'distill'").fetchall())
    assert set(states.values()) == {"blocked"}


def _normalise(text: str, home: Path) -> str:
    text = text.replace(str(home), "$SEEDRUN_HOME")
    text = re.sub(r"\d{8}-\d{6}-[0-9a-f]{8}", "$SUBMISSION", text)
    return text.replace(sys.executable, "$PYTHON")


REPRESENTATIVE = """
launcher:
  name: slurm
  partition: gpu
  account: seed-project
  qos: high
  constraint: a100&ib
  gpus_per_node: 8
  cpus_per_task: 10
  mem_gb: 480
  timeout_min: 1440
  array_parallelism: 2
  signal_delay_s: 300
  additional_parameters: {mail-type: END, exclude: "node[01-03]"}
"""


def test_sbatch_scripts_match_golden_files(cli, fake_slurm, tmp_path):
    cli.env.update(PATH=os.environ["PATH"], FAKE_SLURM_DIR=str(fake_slurm))
    path = write_sweep(tmp_path / "golden.yaml", "name: golden\nbase: [data=tiny, distill.batch_size=32, "
                       "distill.queue_size=128, teacher.pretrain.batch_size=32, teacher.pretrain.queue_size=128]\n"
                       "grid:\n  distill.tau_teacher: [0.1, 0.01, 0.001]\n" + REPRESENTATIVE)
    result = cli("sweep", str(path))
    assert "1000  pretrain 1 task" in result.stdout and "1001  distill  3 tasks (at most 2 at once)  after 1000" in result.stdout
    assert len(sbatch_calls(fake_slurm)) == 2
    for job_id, name in (("1000", "pretrain_job.sh"), ("1001", "distill_array.sh")):
        text = _normalise((fake_slurm / f"sbatch_{job_id}.sh").read_text(), cli.home)
        golden = GOLDEN / name
        if UPDATE_GOLDEN:
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(text)
        assert golden.exists(), f"no golden file {golden}: run with SEEDRUN_UPDATE_GOLDEN=1"
        assert text == golden.read_text(), f"{name} differs from the golden file"
    # the submitted script is also where submitit keeps it, next to the tasks' folders
    (kept,) = (cli.home / "submitit" / "slurm" / "golden").glob("*/1001/1001_submission.sh")
    assert kept.read_text() == (fake_slurm / "sbatch_1001.sh").read_text()


NASTY = "x'; touch {canary}; echo \"$(touch {canary})\" `touch {canary}` | tee {canary} && rm -rf / #"


def test_shell_metacharacters_stay_inert(cli, fake_slurm, tmp_path):
    """Sweep values never reach a shell (they stay in the database); launcher values and the sweep name
    reach sbatch only as quoted #SBATCH values; running the generated script executes none of them."""
    canary = tmp_path / "PWNED"
    nasty = NASTY.format(canary=canary)
    cli.env.update(PATH=os.environ["PATH"], FAKE_SLURM_DIR=str(fake_slurm))
    path = write_sweep(tmp_path / "nasty.yaml", f"name: {json.dumps('evil ' + nasty)}\n"
                       "base: [data=tiny, distill.batch_size=32, distill.queue_size=128, teacher.pretrain.batch_size=32, "
                       "teacher.pretrain.queue_size=128]\n"
                       f"grid:\n  data.name: [{json.dumps(nasty)}]\n"
                       f"launcher:\n  name: slurm\n  additional_parameters: {{comment: {json.dumps(nasty)}}}\n")
    cli("sweep", str(path))
    scripts = sorted(fake_slurm.glob("sbatch_*.sh"))
    assert len(scripts) == 2
    for script in scripts:
        text = script.read_text()
        comment = [line for line in text.splitlines() if line.startswith("#SBATCH --comment=")]
        assert comment and comment[0].startswith("#SBATCH --comment='")  # shell-quoted
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
        for line in text.splitlines():
            if not line.startswith("#"):  # nothing of the values outside the #SBATCH comments
                assert not set(line) & set(";`$|&<>\"'"), line
        # run the script as the node would (srun is the fake: it only records its arguments)
        subprocess.run(["bash", str(script)], env={**os.environ, "SLURM_ARRAY_JOB_ID": "1"}, check=True,
                       capture_output=True)
        args = (fake_slurm / "srun.args").read_text().splitlines()
        assert args[-4:-1] == ["-u", "-m", "submitit.core._submit"]
        assert not set("".join(args)) & set(";`$|&<>\"'"), args
    assert not canary.exists()
    # the value is in the database, as data; each task's pickle holds only hash, database URL, data root
    with sqlite3.connect(cli.db) as db:
        names = {json.loads(config)["data"]["name"] for (config,) in db.execute("select config from runs")}
    assert names == {nasty}
    pickles = list((cli.home / "submitit").rglob("*_submitted.pkl"))
    assert len(pickles) == 2
    for path in pickles:
        assert b"touch" not in path.read_bytes()
        with open(path, "rb") as f:
            delayed = pickle.load(f)
        assert vars(delayed.function).keys() >= {"run_hash", "run_dir", "data_root", "attempt"}


# ---- the job: stop at a step boundary, budgets, failures (in this process, no training) -------------

class StepJob(jobmod.RunJob):
    """Steps that only ask should_stop(); sends itself `signum` at step 3 when asked."""

    signum = None
    fail_with: BaseException | None = None
    saves = True  # False: stops without a checkpoint (an attempt that made no progress)

    def _train(self, stage, config, run_dir, hooks, teacher_dir):
        for step in range(1, 200):
            if step == 3 and self.signum is not None:
                os.kill(os.getpid(), self.signum)
            if self.fail_with is not None:
                raise self.fail_with
            if hooks.should_stop():
                if self.saves:
                    (run_dir / "checkpoint.pt").write_text(f"step {step}")  # what train.Loop does
                raise Stopped(f"stopped at step {step}")
        hooks.epoch_end(1, {"loss": 1.0})
        return {"knn_top1": 50.0}


class FakeSubmititHandler:
    """Stands for submitit's SignalHandler: records the hand-over instead of requeueing."""

    def __init__(self, timed_out: bool):
        self.timed_out, self.calls = timed_out, []

    def has_timed_out(self) -> bool:
        return self.timed_out

    def checkpoint_and_try_requeue(self, signum, frame):
        self.calls.append(signum)
        raise SystemExit(-1)


def one_run(home: Path, **launcher) -> tuple[str, str]:
    db_url = db_url_for(home)
    (spec,) = specs(1, stage="pretrain", launcher={**SLURM_LAUNCHER, **launcher})
    synthetic_plan("job", [spec], db_url)
    return spec.hash, db_url


def run_row(db_url: str, run_hash: str) -> dict:
    """The run's row once its folder is brought in, as `seedrun status` would show it."""
    from seedrun.store.catchup import catch_up

    catch_up(db_url, [run_hash], quiet=True)
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as db:
        db.row_factory = sqlite3.Row
        row = dict(db.execute("select * from runs where hash = ?", (run_hash,)).fetchone())
    row["provenance"] = json.loads(row["provenance"])
    return row


@pytest.fixture
def usr2_handler():
    usr2 = jobmod.submitit.JobEnvironment._usr_sig()
    previous = signal.getsignal(usr2)
    yield lambda handler: signal.signal(usr2, handler)
    signal.signal(usr2, previous)


# A timeout whose attempt made progress (steps and a checkpoint) spends no budget (tests/test_budgets.py)
@pytest.mark.parametrize("timed_out, limit, progress, requeued", [
    (False, -1, True, True), (True, 3, True, True), (True, 0, True, True), (True, 3, False, True), (True, 0, False, False)])
def test_usr2_checkpoints_at_a_step_boundary_then_hands_over_within_budget(home, usr2_handler, timed_out, limit,
                                                                          progress, requeued):
    run_hash, db_url = one_run(home, max_timeouts=limit)
    fake = FakeSubmititHandler(timed_out)
    usr2_handler(fake.checkpoint_and_try_requeue)
    job = attempt_job(StepJob, db_url, run_hash)
    job.signum = jobmod.submitit.JobEnvironment._usr_sig()
    job.saves = progress
    with pytest.raises((SystemExit, AttemptOver)):
        job()
    row = run_row(db_url, run_hash)
    if progress:
        assert (Path(row["run_dir"]) / "checkpoint.pt").read_text() == "step 3"  # saved before handing over
    kind = "timeouts" if timed_out else "preemptions"
    counted = 0 if timed_out and progress else 1
    assert row["provenance"][kind] == counted and row["provenance"]["attempt_open"] is False
    assert row["provenance"].get("progress_timeouts", 0) == 1 - counted
    assert row["provenance"]["events"][-1]["event"] == ("timeout" if timed_out else "preempted")
    if requeued:
        assert fake.calls == [job.signum] and row["state"] == "submitted"
    else:
        assert fake.calls == [] and row["state"] == "failed" and row["failure_reason"] == "timeout"
        assert "timeout budget spent" in row["error"]
    assert signal.getsignal(signal.SIGTERM) != job._on_sigterm  # handlers restored


def test_a_rerun_after_an_unrecorded_end_counts_a_preemption_and_respects_the_budget(home):
    run_hash, db_url = one_run(home, max_preemptions=1)
    job = attempt_job(StepJob, db_url, run_hash)
    edit_record(job.run_dir, provenance={"attempt_open": True})  # Slurm killed and requeued an earlier start
    assert job() == {"knn_top1": 50.0}
    row = run_row(db_url, run_hash)
    assert row["state"] == "completed" and row["provenance"]["preemptions"] == 1 and row["attempts"] == 1
    assert row["provenance"]["wall_hours"] > 0 and row["provenance"]["gpu_hours"] == 0


def test_a_rerun_after_an_unrecorded_end_past_the_budget_fails_the_run(home):
    run_hash, db_url = one_run(home, max_preemptions=1)
    job = attempt_job(StepJob, db_url, run_hash)
    edit_record(job.run_dir, provenance={"attempt_open": True, "preemptions": 1})
    assert job() == {}
    row = run_row(db_url, run_hash)
    assert row["state"] == "failed" and row["failure_reason"] == "preempted" and row["attempts"] == 0


def test_failures_are_classified_and_retried_only_within_budget(home, monkeypatch):
    run_hash, db_url = one_run(home, max_failures=1)
    job = attempt_job(StepJob, db_url, run_hash)
    job.fail_with = FloatingPointError("loss is nan at step 1")
    with pytest.raises(FloatingPointError):
        job()
    row = run_row(db_url, run_hash)
    assert (row["state"], row["failure_reason"]) == ("failed", "nan_loss")  # never retried: it would recur
    # under submitit (here its local environment), another exception is retried once, then fails
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "4242")
    job = attempt_job(StepJob, db_url, run_hash)  # `seedrun retry`: a new attempt, its budgets afresh
    job.fail_with = RuntimeError("flaky file system")
    with pytest.raises(SystemExit):
        job()  # failure 1 of 1: requeued
    row = run_row(db_url, run_hash)
    assert row["state"] == "submitted" and row["provenance"]["failures"] == 1 and row["job_id"] == "local:4242"
    with pytest.raises(RuntimeError):
        job()  # failure 2: budget spent
    row = run_row(db_url, run_hash)
    assert (row["state"], row["failure_reason"]) == ("failed", "exception") and "flaky" in row["error"]
    assert [event["event"] for event in row["provenance"]["events"]] == ["failure", "failure", "failure"]


def test_classify_failure():
    assert classify_failure(RuntimeError("CUDA out of memory. Tried to allocate")) == "out_of_memory"
    assert classify_failure(FloatingPointError("loss is nan at step 3")) == "nan_loss"
    assert classify_failure(ValueError("bad")) == "exception"


# ---- reconciliation and triage ----------------------------------------------------------------------

def test_reconcile_classifies_jobs_that_died_without_recording(home, monkeypatch, fake_slurm):
    from seedrun.launchers import cluster as slurm
    from seedrun.launchers import reconcile
    from seedrun.launchers.cluster import SlurmState, State

    db_url = db_url_for(home)
    teacher = RunSpec("pretrain", {"t": 1, "launcher": SLURM_LAUNCHER})
    runs = specs(8) + [teacher] + specs(1, depends_on=teacher.hash)
    synthetic_plan("reconcile", runs, db_url)
    slurm_states = {
        "9_0": SlurmState("9_0", State.CANCELLED, raw="CANCELLED by 0"),
        "9_1": SlurmState("9_1", State.TIMEOUT, raw="TIMEOUT"),
        "9_2": SlurmState("9_2", State.OUT_OF_MEMORY, raw="OUT_OF_MEMORY"),
        "9_3": SlurmState("9_3", State.NODE_FAIL, raw="NODE_FAIL"),
        "9_4": SlurmState("9_4", State.FAILED, exit_code=1, raw="FAILED"),
        "9_5": SlurmState("9_5", State.COMPLETED, raw="COMPLETED"),
        "9_6": SlurmState("9_6", State.UNKNOWN, source="missing"),
        "9_7": SlurmState("9_7", State.RUNNING, raw="RUNNING"),
        "9_9": SlurmState("9_9", State.PENDING, reason="DependencyNeverSatisfied", source="squeue"),
    }
    with sqlite3.connect(home / "seedrun.db") as db:
        for i, run in enumerate(runs):
            db.execute("update runs set state = 'submitted', job_id = ? where hash = ?", (f"9_{i}", run.hash))
        db.execute("update runs set state = 'failed' where hash = ?", (teacher.hash,))
    asked = []
    monkeypatch.setattr(slurm, "query_states", lambda ids: asked.append(list(ids)) or slurm_states)
    assert reconcile.reconcile(db_url) == 8
    assert len(asked) == 1  # one query for every job in flight
    with sqlite3.connect(home / "seedrun.db") as db:
        got = dict((job_id, (state, reason)) for job_id, state, reason in
                   db.execute("select job_id, state, failure_reason from runs"))
    assert got == {"9_0": ("cancelled", "cancelled"), "9_1": ("failed", "timeout"), "9_2": ("failed", "out_of_memory"),
                   "9_3": ("failed", "node_fail"), "9_4": ("failed", "exception"), "9_5": ("lost", "no_result"),
                   "9_6": ("lost", "vanished"), "9_7": ("submitted", None), "9_8": ("failed", None),
                   "9_9": ("blocked", "blocked")}
    assert (fake_slurm / "scancel.calls").read_text().split() == ["9_9"]  # it would wait forever


def test_logs_cancel_and_retry(home, fake_slurm, capsys):
    from seedrun.launchers import control as manage
    from seedrun.views.logs import show_logs
    from seedrun.errors import InputError

    db_url = db_url_for(home)
    runs = specs(3)
    plan = synthetic_plan("triage", runs, db_url)
    submit_slurm(plan, plan.to_run(), db_url, None, Console(file=io.StringIO()))
    capsys.readouterr()
    # cancel: one scancel for the sweep's jobs, every run marked cancelled
    assert manage.cancel(db_url, "triage") == 0
    assert (fake_slurm / "scancel.calls").read_text().splitlines() == ["1000_0 1000_1 1000_2"]
    assert {run_row(db_url, r.hash)["state"] for r in runs} == {"cancelled"}
    assert "cancelled 3 runs of sweep triage (3 Slurm jobs, one scancel)" in capsys.readouterr().out
    # logs: by hash prefix, with the run's own log
    Path(run_row(db_url, runs[0].hash)["run_dir"]).mkdir(parents=True, exist_ok=True)  # submission writes it
    (Path(run_row(db_url, runs[0].hash)["run_dir"]) / "log.txt").write_text("epoch 1/1 loss 4.2\n")
    assert show_logs(db_url, runs[0].hash[:10]) == 0
    out = capsys.readouterr().out
    assert "cancelled (cancelled)" in out and "epoch 1/1 loss 4.2" in out
    with pytest.raises(InputError, match="no run whose hash starts with"):
        show_logs(db_url, "ffffffffffff")
    # retry by reason: only the matching run is resubmitted (same submission path: one sbatch)
    with sqlite3.connect(home / "seedrun.db") as db:
        db.execute("update runs set state = 'failed', failure_reason = 'out_of_memory' where hash = ?", (runs[1].hash,))
    assert manage.retry(db_url, reason="out_of_memory") == 0
    assert len(sbatch_calls(fake_slurm)) == 2
    assert run_row(db_url, runs[1].hash)["state"] == "submitted" and run_row(db_url, runs[1].hash)["job_id"] == "1001"
    assert run_row(db_url, runs[0].hash)["state"] == "cancelled"
    assert manage.retry(db_url, sweep="triage") == 0  # the two cancelled ones
    assert len(sbatch_calls(fake_slurm)) == 3
    assert {run_row(db_url, r.hash)["state"] for r in runs} == {"submitted"}
