"""One live attempt per run: Ctrl-C during a submission leaves no job the database does not know; a new
submission starts the budgets afresh; two attempts on one run: exactly one trains (the lease); `status`
judges a local run only on the host that started it."""

from __future__ import annotations

import json
import os
import signal
import sqlite3

from pathlib import Path

from conftest import TINY_SWEEP_BASE, attempt_job, edit_record, write_sweep
from seedrun.job.failures import Stopped
from test_submit_unit import FAKE_SBATCH, StepJob, fake_slurm, one_run, run_row

__all__ = ["fake_slurm"]  # the fixture, shared with test_submit_unit

# sbatch is interrupted while it queues the second array: Ctrl-C reaches seedrun (its parent) mid-call
INTERRUPTING_SBATCH = FAKE_SBATCH.replace('echo "Submitted batch job $n"',
                                          '[ "$n" = 1001 ] && kill -INT $PPID && sleep 0.5\necho "Submitted batch job $n"')


def test_ctrl_c_in_the_middle_of_a_3_array_submission_leaves_no_unrecorded_job(cli, fake_slurm, tmp_path):
    (fake_slurm.parent / "fake-bin" / "sbatch").write_text(INTERRUPTING_SBATCH)
    cli.env.update(PATH=os.environ["PATH"], FAKE_SLURM_DIR=str(fake_slurm), FAKE_MAX_ARRAY_SIZE="2")
    path = write_sweep(tmp_path / "three.yaml", "name: three\n" + TINY_SWEEP_BASE
                       + "grid:\n  distill.tau_teacher: [0.3, 0.1, 0.05, 0.01]\nlauncher: {name: slurm}\n")
    dry = json.loads(cli("sweep", str(path), "--dry-run", "--json").stdout)
    assert [a["tasks"] for a in dry["arrays"]] == [1, 2, 2]  # three arrays, three sbatch calls

    result = cli("sweep", str(path), check=False)
    assert result.returncode == 130, result.stdout + result.stderr
    assert "interrupted" in result.stdout and "Traceback" not in result.stderr
    queued = sorted(p.stem.removeprefix("sbatch_") for p in fake_slurm.glob("sbatch_*.sh"))
    assert queued == ["1000", "1001"]  # the third array was not submitted after Ctrl-C
    with sqlite3.connect(cli.db) as db:
        rows = db.execute("select state, job_id from runs").fetchall()
    cancelled = (fake_slurm / "scancel.calls").read_text().split() if (fake_slurm / "scancel.calls").exists() else []
    recorded = {job_id.partition("_")[0] for _, job_id in rows if job_id}
    assert all(job in recorded or job in cancelled for job in queued)  # recorded or cancelled, never neither
    assert sorted(state for state, _ in rows) == ["pending", "pending", "submitted", "submitted", "submitted"]
    # the next sweep submits only the rest, waiting on nothing it does not know
    again = cli("sweep", str(path))
    assert "submitted 2 runs as 1 Slurm job" in again.stdout


def test_ctrl_c_is_deferred_only_while_arrays_are_submitted():
    import io

    from rich.console import Console

    from seedrun.launchers.slurm import interrupts_deferred

    before = signal.getsignal(signal.SIGINT)
    with interrupts_deferred(Console(file=io.StringIO())) as interrupted:
        os.kill(os.getpid(), signal.SIGINT)
        assert interrupted == [signal.SIGINT]
    assert signal.getsignal(signal.SIGINT) is before


def test_a_new_submission_resets_the_budgets(home):
    run_hash, db_url = one_run(home, max_preemptions=1)
    with sqlite3.connect(home / "seedrun.db") as db:  # an earlier submission spent its budget and left an attempt open
        db.execute("update runs set state = 'failed', provenance = ? where hash = ?",
                   (json.dumps({"attempt_open": True, "preemptions": 1, "timeouts": 3, "failures": 2}), run_hash))
    job = attempt_job(StepJob, db_url, run_hash)
    assert job() == {"knn_top1": 50.0}
    row = run_row(db_url, run_hash)
    prov = row["provenance"]
    assert row["state"] == "completed" and row["attempt"] == 1
    assert (prov["preemptions"], prov["timeouts"], prov["failures"]) == (0, 0, 0)


def test_the_same_attempt_keeps_counting(home):
    run_hash, db_url = one_run(home, max_preemptions=1)
    job = attempt_job(StepJob, db_url, run_hash)
    # requeued within its attempt: the open attempt is a second preemption
    edit_record(job.run_dir, state="running", provenance={"attempt_open": True, "preemptions": 1})
    assert job() == {}
    row = run_row(db_url, run_hash)
    assert (row["state"], row["failure_reason"], row["provenance"]["preemptions"]) == ("failed", "preempted", 2)


def _snapshot(folder) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


def _holder(**values) -> dict:
    return {"host": "node-a", "pid": 4242, "pid_start": "1", "job_id": "77_3", **values}


def test_a_second_attempt_finds_the_run_held_and_leaves_it_alone_until_the_lease_is_stale(home, monkeypatch):
    from seedrun.job.attempt_lease import LEASE_FILE, take_lease

    monkeypatch.setenv("SEEDRUN_HOSTNAME", "login")
    monkeypatch.setenv("SEEDRUN_LEASE_WAIT_S", "0")  # leave at once rather than wait for the holder to end
    run_hash, db_url = one_run(home)
    job = attempt_job(StepJob, db_url, run_hash)
    run_dir = Path(job.run_dir)
    monkeypatch.setattr("seedrun.job.attempt_lease._slurm_ended", lambda job_id: False)  # Slurm says 77_3 runs
    token, holder = take_lease(str(run_dir), _holder())  # a live attempt on another node
    assert token and holder is None
    before, row = _snapshot(run_dir), run_row(db_url, run_hash)
    assert job() == {}  # finds it live and leaves
    assert _snapshot(run_dir) == before
    after = run_row(db_url, run_hash)
    assert (after["state"], after["attempts"], after["job_id"]) == (row["state"], row["attempts"], row["job_id"])

    old = os.stat(run_dir / LEASE_FILE).st_mtime - 3600  # its heartbeat stopped an hour ago: taken over
    os.utime(run_dir / LEASE_FILE, (old, old))
    assert job() == {"knn_top1": 50.0}
    assert run_row(db_url, run_hash)["state"] == "completed"
    assert not (run_dir / LEASE_FILE).exists()  # given back when the attempt ended


def test_a_holder_that_is_gone_is_taken_over_at_once(tmp_path, monkeypatch):
    """A killed local job (no such process here, or its pid reused by another process), and a Slurm job
    that Slurm says has ended, give up their lease at once, each with one log line."""
    import subprocess
    import sys

    from seedrun.job.attempt_lease import process_start, read_lease, take_lease

    monkeypatch.setenv("SEEDRUN_HOSTNAME", "node-a")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    said: list[str] = []
    me = _holder(pid=os.getpid(), pid_start=process_start(os.getpid()), job_id=f"local:{os.getpid()}")
    cases = {
        "killed": (_holder(pid=gone.pid, job_id=f"local:{gone.pid}"), f"process {gone.pid} on node-a is gone"),
        "pid reused": (_holder(pid=os.getpid(), pid_start="0", job_id="local:1"), f"process {os.getpid()}"),
        "slurm ended": (_holder(host="node-b", job_id="991_2"), "Slurm job 991_2 has ended"),
    }
    monkeypatch.setattr("seedrun.job.attempt_lease._slurm_ended", lambda job_id: job_id == "991_2")
    for name, (dead, why) in cases.items():
        run_dir = tmp_path / name
        assert take_lease(str(run_dir), dead)[0]
        token, holder = take_lease(str(run_dir), me, log=said.append)
        assert token and holder is None, name
        assert read_lease(str(run_dir))["token"] == token and why in said[-1], (name, said)
    assert len(said) == 3
    alive = tmp_path / "alive"  # this very process, on this host, under another job id: it lives
    assert take_lease(str(alive), {**me, "job_id": "local:other"})[0]
    assert take_lease(str(alive), me, log=said.append) == (None, read_lease(str(alive)) | {"age_s": ANY})
    assert len(said) == 3


def test_an_attempt_waits_for_a_slurm_holder_that_sacct_still_reports_alive(tmp_path, monkeypatch):
    """After `seedrun cancel` and a retry, sacct may report the cancelled job alive for a while after the
    retry's job starts: the retry waits for it (SEEDRUN_LEASE_WAIT_S) instead of leaving the run."""
    import time

    from seedrun.job import attempt_lease
    from seedrun.job.attempt_lease import AttemptLease, take_lease

    assert take_lease(str(tmp_path), _holder(job_id="500_1"))[0]
    ends_at = time.monotonic() + 6
    monkeypatch.setattr(attempt_lease, "_slurm_ended", lambda job_id: time.monotonic() > ends_at)
    said: list[str] = []
    lease = AttemptLease()
    started = time.monotonic()
    assert lease.take(str(tmp_path), _holder(host="node-b", job_id="501_1"), log=said.append) is None
    assert time.monotonic() - started >= 5 and "Slurm job 500_1 has ended" in said[-1]
    lease.release()
    monkeypatch.setenv("SEEDRUN_LEASE_WAIT_S", "0")
    assert take_lease(str(tmp_path), _holder(job_id="502_1"))[0]
    monkeypatch.setattr(attempt_lease, "_slurm_ended", lambda job_id: False)
    assert AttemptLease().take(str(tmp_path), _holder(host="node-b", job_id="503_1"))["job_id"] == "502_1"


class _Any:
    def __eq__(self, other) -> bool:
        return True


ANY = _Any()


def test_a_heartbeat_that_meets_a_read_error_keeps_its_lease(tmp_path, monkeypatch):
    import time

    from seedrun.job import attempt_lease
    from seedrun.job.attempt_lease import AttemptLease, read_lease

    monkeypatch.setenv("SEEDRUN_LEASE_BEAT_S", "0.05")
    monkeypatch.setenv("SEEDRUN_LEASE_STALE_S", "5")
    reads = []
    real = attempt_lease.lease_token

    def flaky(path):
        reads.append(path)
        if len(reads) == 2:
            raise OSError(116, "Stale file handle")  # what NFS says after a server hiccup
        return real(path)

    monkeypatch.setattr(attempt_lease, "lease_token", flaky)
    lease = AttemptLease()
    assert lease.take(str(tmp_path), _holder(host="here", pid=os.getpid())) is None
    time.sleep(0.5)
    assert len(reads) >= 5 and not lease.lost.is_set()
    assert read_lease(str(tmp_path))["token"] == lease.token and read_lease(str(tmp_path))["age_s"] < 0.3
    lease.release()


def test_an_attempt_whose_lease_was_taken_stops_within_one_heartbeat_and_writes_nothing_more(home, monkeypatch):
    import json as json_
    import threading
    import time

    from seedrun.job.attempt_lease import LEASE_FILE
    from seedrun.store.folders import read_record

    monkeypatch.setenv("SEEDRUN_LEASE_BEAT_S", "0.2")
    run_hash, db_url = one_run(home)
    job = attempt_job(StepJob, db_url, run_hash)
    run_dir = Path(job.run_dir)
    ended = []

    class Endless(StepJob):
        def _train(self, stage, config, run_dir, hooks, teacher_dir):
            while True:  # steps that only ask should_stop(), as the loop does
                time.sleep(0.01)
                if hooks.should_stop():
                    raise Stopped("stopped")

    job = Endless(run_hash, job.run_dir, None, job.attempt)
    taken = {}

    def take_over():
        while not (run_dir / LEASE_FILE).exists():
            time.sleep(0.01)
        time.sleep(0.3)
        taken["record"] = (run_dir / "run.json").read_bytes()
        (run_dir / LEASE_FILE).write_text(json_.dumps(_holder(token="theirs")))  # another attempt took over
        taken["at"] = time.monotonic()

    thief = threading.Thread(target=take_over)
    thief.start()
    ended.append(job())
    stopped_after = time.monotonic() - taken["at"]
    thief.join()
    assert ended == [{}] and stopped_after < 0.2 + 0.5
    assert (run_dir / "run.json").read_bytes() == taken["record"]  # not one more write
    assert json_.loads((run_dir / LEASE_FILE).read_text())["token"] == "theirs"  # never released what is theirs
    assert read_record(str(run_dir))["state"] == "running"
    assert "writes nothing more" in (run_dir / "log.txt").read_text()


ATTEMPT = """
import json, sys, time
sys.path.insert(0, {tests!r})
from test_submit_unit import StepJob

class Slow(StepJob):
    def _train(self, stage, config, run_dir, hooks, teacher_dir):
        open({marks!r} + "/trained-" + sys.argv[1], "w").close()
        time.sleep(3)
        return super()._train(stage, config, run_dir, hooks, teacher_dir)

while time.time() < {start}:
    time.sleep(0.005)
print(json.dumps(Slow({run_hash!r}, {run_dir!r}, None, {attempt})()))
"""


def test_two_attempts_started_on_one_run_exactly_one_trains(home, tmp_path):
    import subprocess
    import sys
    import time
    from pathlib import Path

    run_hash, db_url = one_run(home)
    first = attempt_job(StepJob, db_url, run_hash)
    marks = tmp_path / "marks"
    marks.mkdir()
    script = tmp_path / "attempt.py"
    script.write_text(ATTEMPT.format(tests=str(Path(__file__).parent), marks=str(marks), start=time.time() + 4,
                                     run_hash=run_hash, run_dir=first.run_dir, attempt=first.attempt))
    attempts = [subprocess.Popen([sys.executable, str(script), str(i)], stdout=subprocess.PIPE, text=True,
                                 env={**os.environ, "SEEDRUN_HOME": str(home)}) for i in (1, 2)]
    results = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in attempts]
    assert sorted(map(len, results)) == [0, 1], results  # one trained, the other left at once
    assert len(list(marks.iterdir())) == 1
    row = run_row(db_url, run_hash)
    assert row["state"] == "completed" and row["attempts"] == 1


def test_status_judges_a_local_run_only_on_the_host_that_started_it(home, monkeypatch):
    import subprocess
    import sys

    from seedrun.launchers.reconcile import reconcile

    monkeypatch.setenv("SEEDRUN_HOSTNAME", "workstation")
    run_hash, db_url = one_run(home)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with sqlite3.connect(home / "seedrun.db") as db:
        db.execute("update runs set state = 'running', job_id = ?, provenance = ? where hash = ?",
                   (f"local:{gone.pid}", json.dumps({"host": "workstation"}), run_hash))
    monkeypatch.setenv("SEEDRUN_HOSTNAME", "login-node")  # `seedrun status` elsewhere: no such process here
    assert reconcile(db_url) == 0 and run_row(db_url, run_hash)["state"] == "running"
    monkeypatch.setenv("SEEDRUN_HOSTNAME", "workstation")  # on its own host: the process is gone, the run lost
    assert reconcile(db_url) == 1
    assert (run_row(db_url, run_hash)["state"], run_row(db_url, run_hash)["failure_reason"]) == ("lost", "vanished")



def test_a_job_process_freezes_its_objects_on_the_way_out_and_no_other_process_does(monkeypatch, tmp_path):
    """The job's own process (submitit sets SUBMITIT_FOLDER there, then exits once the job returns) freezes
    its objects as the attempt ends, so the interpreter's shutdown does not walk them again (seconds of every
    job with torch loaded); a process that goes on after a RunJob (a test, a notebook) keeps collecting."""
    import gc
    import subprocess
    import sys

    from seedrun.job.run_job import _ending_process

    monkeypatch.delenv("SUBMITIT_FOLDER", raising=False)
    assert gc.get_freeze_count() == 0
    _ending_process()
    assert gc.get_freeze_count() == 0
    # a job process: RunJob.__call__ freezes on its way out, whatever the attempt did (here: no such run)
    code = ("import gc, os, sys\nos.environ['SUBMITIT_FOLDER'] = sys.argv[1]\n"
            "from seedrun.job.run_job import RunJob\n"
            "try:\n    RunJob('ab' * 32, sys.argv[1] + '/none')()\nexcept BaseException:\n    pass\n"
            "assert gc.get_freeze_count() > 1000, gc.get_freeze_count()\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, capture_output=True, text=True,
                   timeout=120, env={**os.environ, "SEEDRUN_HOME": str(tmp_path)})


def test_a_job_imports_torch_with_the_collector_paused_and_restores_it():
    import gc

    import sys

    from seedrun.job.interpreter import collector_paused as _collector_paused, import_stage

    was = gc.isenabled()  # another test of the session may have left it either way
    gc.enable()
    with _collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with _collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # left as it was found
        gc.enable()
        import_stage("distill")  # what a job calls before it trains
        assert gc.isenabled() and "seedrun.training.distill" in sys.modules and "torch._dynamo" in sys.modules
    finally:
        gc.enable() if was else gc.disable()
