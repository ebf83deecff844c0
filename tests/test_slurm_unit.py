"""Unit tests of seedrun.launchers.cluster: no cluster needed (Slurm commands are faked).

The sacct/squeue texts below were captured from the test cluster
(tests/cluster/start-slurm.sh, slurm-wlm 22.05 on Debian 12).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

import pytest

from seedrun.launchers import cluster as slurm
from seedrun.launchers.cluster import SlurmError, SlurmState, State

# Captured ~1.5 s after submitting: 2 = 4-task array, 3 = `exit 3`,
# 4 = sleeper, 5 = 6-task array with %2 throttle, 6 = 1-minute limit,
# 7 = `kill -9 $$`. Accounting lags: 2, 4, 6 already run (see SQUEUE_EARLY)
# but still read PENDING; 5 is not in accounting yet at all.
SACCT_EARLY = """\
2|PENDING|0:0|00:00:02|localhost
3|FAILED|3:0|00:00:00|localhost
4|PENDING|0:0|00:00:02|localhost
6|PENDING|0:0|00:00:02|localhost
7|FAILED|0:9|00:00:00|localhost
"""
SQUEUE_EARLY = """\
5_2|PENDING|JobArrayTaskLimit
5_3|PENDING|JobArrayTaskLimit
5_4|PENDING|JobArrayTaskLimit
5_5|PENDING|JobArrayTaskLimit
2_0|RUNNING|None
2_1|RUNNING|None
2_2|RUNNING|None
2_3|RUNNING|None
4|RUNNING|None
5_0|RUNNING|None
5_1|RUNNING|None
6|RUNNING|None
"""
# A few seconds later, after `scancel 4`.
SACCT_LATER = """\
3|FAILED|3:0|00:00:00|localhost
4|CANCELLED by 0|0:0|00:00:02|localhost
6|RUNNING|0:0|00:00:07|localhost
7|FAILED|0:9|00:00:00|localhost
2_0|COMPLETED|0:0|00:00:03|localhost
2_1|COMPLETED|0:0|00:00:03|localhost
2_2|COMPLETED|0:0|00:00:03|localhost
2_3|COMPLETED|0:0|00:00:03|localhost
5_0|RUNNING|0:0|00:00:07|localhost
5_1|RUNNING|0:0|00:00:07|localhost
5_[2-5%2]|PENDING|0:0|00:00:00|None assigned
"""
# Everything finished (6 hit its time limit).
SACCT_DONE = """\
3|FAILED|3:0|00:00:00|localhost
4|CANCELLED by 0|0:0|00:00:02|localhost
6|TIMEOUT|0:0|00:01:26|localhost
7|FAILED|0:9|00:00:00|localhost
2_0|COMPLETED|0:0|00:00:03|localhost
2_1|COMPLETED|0:0|00:00:03|localhost
2_2|COMPLETED|0:0|00:00:03|localhost
2_3|COMPLETED|0:0|00:00:03|localhost
"""
# After `scontrol requeue 16` on the running job 16.
SACCT_REQUEUED = "16|REQUEUED|0:0|00:00:03|localhost\n"
SQUEUE_REQUEUED = "16|PENDING|BeginTime\n"

# A 2-task array (29) that finished within a second: for several seconds
# accounting shows only a bare record (raw id 29, which is task 29_1), while
# the controller (squeue -t all) already lists both tasks.
SACCT_BARE_ARRAY = "29|COMPLETED|0:0|00:00:00|localhost\n"
SQUEUE_BARE_ARRAY = "29_0|COMPLETED|None\n29_1|COMPLETED|None\n"

SCONTROL_CONFIG = """\
Configuration data as of 2026-11-28T05:01:02
AccountingStorageBackupHost = (null)
JobRequeue              = 1
MailProg                = /bin/true
MaxArraySize            = 1001
MaxDBDMsgs              = 20008
MaxJobCount             = 10000
"""


# --------------------------------------------------------------------------- chunking

@pytest.mark.parametrize("n, expected", [(0, 0), (1, 1), (1001, 1), (1002, 2), (2500, 3)])
def test_chunk_counts_with_default_limit(n: int, expected: int) -> None:
    chunks = slurm.chunk(list(range(n)), 1001)
    assert len(chunks) == expected
    assert [x for c in chunks for x in c] == list(range(n))     # order kept, nothing lost
    assert all(1 <= len(c) <= 1001 for c in chunks)


def test_chunk_sizes_and_bad_limit() -> None:
    assert [len(c) for c in slurm.chunk(range(2500), 1001)] == [1001, 1001, 498]
    assert slurm.chunk(["a", "b", "c"], 1) == [["a"], ["b"], ["c"]]
    with pytest.raises(ValueError):
        slurm.chunk([1], 0)


# --------------------------------------------------------------------------- parsing

def test_parse_max_array_size() -> None:
    assert slurm.parse_max_array_size(SCONTROL_CONFIG) == 1001
    assert slurm.parse_max_array_size("MaxArraySize = 40000\n") == 40000
    assert slurm.parse_max_array_size("nothing here") is None


def test_max_array_size_falls_back_to_default(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSlurm({"scontrol": (1, "", "slurm_load_ctl_conf error: Unable to contact slurm controller")})
    monkeypatch.setattr(slurm, "_run", fake)
    assert slurm.max_array_size() == 1001

    def missing(args: Sequence[str], timeout: float = 0) -> subprocess.CompletedProcess[str]:
        raise SlurmError("scontrol not found")
    monkeypatch.setattr(slurm, "_run", missing)
    assert slurm.max_array_size() == 1001

    monkeypatch.setattr(slurm, "_run", FakeSlurm({"scontrol": (0, "MaxArraySize = 5000\n", "")}))
    assert slurm.max_array_size() == 5000


def test_parse_sacct_real_output() -> None:
    st = slurm.parse_sacct(SACCT_LATER)
    assert st["3"].state is State.FAILED and (st["3"].exit_code, st["3"].signal) == (3, 0)
    assert st["4"].state is State.CANCELLED and st["4"].raw == "CANCELLED by 0"
    assert st["7"].state is State.FAILED and st["7"].signal == 9
    assert st["6"].state is State.RUNNING and st["6"].elapsed_s == 7
    assert [st[f"2_{i}"].state for i in range(4)] == [State.COMPLETED] * 4
    # the pending range "5_[2-5%2]" becomes one entry per task ("%2" is a throttle)
    assert {j for j in st if j.startswith("5_")} == {f"5_{i}" for i in range(6)}
    assert st["5_4"].state is State.PENDING and st["5_4"].nodelist == ""
    assert st["2_0"].nodelist == "localhost" and st["2_0"].source == "sacct"
    assert slurm.parse_sacct(SACCT_DONE)["6"].state is State.TIMEOUT


def test_parse_sacct_ignores_steps_and_blank_lines() -> None:
    st = slurm.parse_sacct("\n9|COMPLETED|0:0|00:00:01|localhost\n9.batch|COMPLETED|0:0|00:00:01|localhost\n")
    assert list(st) == ["9"]


def test_parse_squeue_real_output() -> None:
    st = slurm.parse_squeue(SQUEUE_EARLY)
    assert len(st) == 12
    assert st["5_3"].state is State.PENDING and st["5_3"].reason == "JobArrayTaskLimit"
    assert st["4"].state is State.RUNNING and st["4"].reason == "" and st["4"].source == "squeue"


@pytest.mark.parametrize("raw, state", [
    ("COMPLETED", State.COMPLETED), ("CANCELLED by 1000", State.CANCELLED),
    ("CANCELLED+", State.CANCELLED), ("OUT_OF_MEMORY", State.OUT_OF_MEMORY),
    ("NODE_FAIL", State.NODE_FAIL), ("BOOT_FAIL", State.BOOT_FAIL), ("PREEMPTED", State.PREEMPTED),
    ("REQUEUED", State.REQUEUED), ("REQUEUE_HOLD", State.REQUEUED), ("DEADLINE", State.DEADLINE),
    ("COMPLETING", State.RUNNING), ("CONFIGURING", State.RUNNING), ("SUSPENDED", State.RUNNING),
    ("running", State.RUNNING), ("WEIRD", State.UNKNOWN), ("", State.UNKNOWN),
])
def test_normalize_state(raw: str, state: State) -> None:
    assert slurm.normalize_state(raw) is state


@pytest.mark.parametrize("job_id, tasks", [
    ("123", ["123"]), ("123_4", ["123_4"]),
    ("123_[0-2]", ["123_0", "123_1", "123_2"]),
    ("123_[1,3,5-6%2]", ["123_1", "123_3", "123_5", "123_6"]),
    ("7_[0-6:3]", ["7_0", "7_3", "7_6"]),
])
def test_expand_job_id(job_id: str, tasks: list[str]) -> None:
    assert slurm.expand_job_id(job_id) == tasks


def test_elapsed_seconds() -> None:
    assert SlurmState("1", State.RUNNING, elapsed="1-02:03:04").elapsed_s == 93784
    assert SlurmState("1", State.RUNNING, elapsed="03:04").elapsed_s == 184
    assert SlurmState("1", State.RUNNING, elapsed="").elapsed_s is None


# --------------------------------------------------------------------------- query_states / cancel

class FakeSlurm:
    """Stands in for slurm._run: answers by command name, records every call."""

    def __init__(self, answers: dict[str, tuple[int, str, str]]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, args: Sequence[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        assert isinstance(args, (list, tuple)) and all(isinstance(a, str) for a in args)
        assert timeout > 0
        self.calls.append(list(args))
        rc, out, err = self.answers[args[0]]
        return subprocess.CompletedProcess(list(args), rc, out, err)

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


def test_query_states_one_sacct_call_when_all_finished(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSlurm({"sacct": (0, SACCT_DONE, ""), "squeue": (0, "", "")})
    monkeypatch.setattr(slurm, "_run", fake)
    ids = ["2_0", "2_1", "2_2", "2_3", "3", "4", "6", "7"]
    st = slurm.query_states(ids)
    assert fake.names() == ["sacct"]                 # all terminal: squeue not needed
    # array tasks are asked for through their array job: a short command line
    j = fake.calls[0][fake.calls[0].index("-j") + 1]
    assert j == "2,3,4,6,7"
    assert "-X" in fake.calls[0] and "-P" in fake.calls[0] and "-n" in fake.calls[0]
    assert {i: st[i].state for i in ids} == {
        "2_0": State.COMPLETED, "2_1": State.COMPLETED, "2_2": State.COMPLETED,
        "2_3": State.COMPLETED, "3": State.FAILED, "4": State.CANCELLED,
        "6": State.TIMEOUT, "7": State.FAILED}
    assert not any(s.missing for s in st.values())


def test_query_states_uses_squeue_for_lagging_accounting(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSlurm({"sacct": (0, SACCT_EARLY, ""), "squeue": (0, SQUEUE_EARLY, "")})
    monkeypatch.setattr(slurm, "_run", fake)
    ids = ["2_0", "2_3", "3", "4", "5_0", "5_5", "6", "7"]
    st = slurm.query_states(ids)
    assert fake.names() == ["sacct", "squeue"]       # one of each, whatever the number of jobs
    assert "-r" in fake.calls[1]                     # one line per array task
    assert st["2_0"].state is State.RUNNING and st["2_0"].source == "squeue"
    assert st["4"].state is State.RUNNING            # sacct still said PENDING
    assert st["5_0"].state is State.RUNNING and st["5_5"].state is State.PENDING
    assert st["3"].state is State.FAILED and st["3"].exit_code == 3
    assert "2" not in st                             # the stale bare array record is dropped
    assert not any(s.missing for s in st.values())


def test_query_states_bare_array_record(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSlurm({"sacct": (0, SACCT_BARE_ARRAY, ""), "squeue": (0, SQUEUE_BARE_ARRAY, "")})
    monkeypatch.setattr(slurm, "_run", fake)
    st = slurm.query_states(["29_0", "29_1"])
    assert fake.names() == ["sacct", "squeue"]
    assert "-t" in fake.calls[1] and fake.calls[1][fake.calls[1].index("-t") + 1] == "all"
    assert set(st) == {"29_0", "29_1"}               # the bare "29" record is dropped
    assert all(st[j].state is State.COMPLETED and st[j].exit_code == 0 for j in st)


@pytest.mark.parametrize("bare, task_state", [("PENDING", State.PENDING), ("COMPLETED", State.UNKNOWN)])
def test_query_states_task_known_only_by_bare_record(monkeypatch: pytest.MonkeyPatch, bare: str,
                                                     task_state: State) -> None:
    # the bare record stands for one task only: a task that nothing else
    # reports exists (not missing) but only a PENDING array says its state
    fake = FakeSlurm({"sacct": (0, f"29|{bare}|0:0|00:00:00|localhost\n", ""), "squeue": (0, "", "")})
    monkeypatch.setattr(slurm, "_run", fake)
    st = slurm.query_states(["29_0"])
    assert st["29_0"].state is task_state and not st["29_0"].missing


def test_query_states_reports_missing_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSlurm({"sacct": (0, SACCT_DONE, ""),
                      "squeue": (1, "", "slurm_load_jobs error: Invalid job id specified\n")})
    monkeypatch.setattr(slurm, "_run", fake)
    st = slurm.query_states(["3", "999", "888_1"])
    assert fake.names() == ["sacct", "squeue"]
    assert st["3"].state is State.FAILED and not st["3"].missing
    for j in ("999", "888_1"):
        assert st[j].missing and st[j].state is State.UNKNOWN


def test_query_states_keeps_requeued(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSlurm({"sacct": (0, SACCT_REQUEUED, ""), "squeue": (0, SQUEUE_REQUEUED, "")})
    monkeypatch.setattr(slurm, "_run", fake)
    st = slurm.query_states(["16"])
    assert st["16"].state is State.REQUEUED and st["16"].reason == "BeginTime"


def test_query_states_without_accounting_uses_squeue(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSlurm({"sacct": (1, "", "Slurm accounting storage is disabled\n"),
                      "squeue": (0, "4|RUNNING|None\n", "")})
    monkeypatch.setattr(slurm, "_run", fake)
    st = slurm.query_states(["4", "3"])
    assert st["4"].state is State.RUNNING and st["3"].missing


@pytest.mark.parametrize("failing", ["sacct", "squeue"])
def test_query_states_raises_on_outage(monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    # an outage must not read as "all jobs lost"
    answers = {"sacct": (0, SACCT_EARLY, ""), "squeue": (0, SQUEUE_EARLY, "")}
    answers[failing] = (1, "", "Unable to contact slurm controller (connect failure)\n")
    monkeypatch.setattr(slurm, "_run", FakeSlurm(answers))
    with pytest.raises(SlurmError):
        slurm.query_states(["4"])


def test_query_states_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSlurm({})
    monkeypatch.setattr(slurm, "_run", fake)
    assert slurm.query_states([]) == {} and fake.calls == []


def test_cancel_is_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSlurm({"scancel": (0, "", "")})
    monkeypatch.setattr(slurm, "_run", fake)
    slurm.cancel(["5_1", "5_2", "6", "6"])
    assert fake.calls == [["scancel", "5_1", "5_2", "6"]]
    slurm.cancel([])
    assert len(fake.calls) == 1
    slurm.cancel(["6"], signal="USR2")
    assert fake.calls[-1] == ["scancel", "--signal", "USR2", "6"]


def test_cancel_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slurm, "_run", FakeSlurm({"scancel": (
        1, "", "scancel: error: Kill job error on job id 3: Job/step already completing or completed\n")}))
    slurm.cancel(["3"])                                 # already finished: fine
    monkeypatch.setattr(slurm, "_run", FakeSlurm({"scancel": (
        1, "", "scancel: error: Unable to contact slurm controller (connect failure)\n")}))
    with pytest.raises(SlurmError):
        slurm.cancel(["3"])


def test_run_real_subprocess_errors() -> None:
    with pytest.raises(SlurmError, match="not found"):
        slurm._run(["seedrun-no-such-slurm-command"])
    with pytest.raises(SlurmError, match="timed out"):
        slurm._run(["sleep", "5"], timeout=0.2)
