"""Cluster-side Slurm helpers for seedrun's launcher.

Everything here talks to Slurm's command-line tools (`scontrol`, `sacct`,
`squeue`, `scancel`) with argument lists (never a shell) and timeouts, and in
batches: the state of N jobs is ONE `sacct` call plus at most ONE `squeue`
call, never one subprocess per job. No torch import: the launcher and the CLI
use this module without loading the training stack.

Job ids are strings as Slurm prints them: ``"123"`` for a plain job and
``"123_4"`` for task 4 of array job 123 (what submitit's ``job.job_id`` holds).
"""

from __future__ import annotations

import enum
import os
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "DEFAULT_MAX_ARRAY_SIZE",
    "SlurmError",
    "SlurmState",
    "State",
    "TERMINAL_STATES",
    "cancel",
    "chunk",
    "expand_job_id",
    "max_array_size",
    "normalize_state",
    "parse_max_array_size",
    "parse_sacct",
    "parse_squeue",
    "query_states",
]

#: Slurm's default MaxArraySize (indices 0..1000).
DEFAULT_MAX_ARRAY_SIZE = 1001
#: Seconds any one Slurm command may take before we give up on it.
COMMAND_TIMEOUT_S = 60.0

SACCT_FORMAT = "JobID,State,ExitCode,Elapsed,NodeList"
SQUEUE_FORMAT = "%i|%T|%r"

T = TypeVar("T")


class SlurmError(RuntimeError):
    """A Slurm command failed, timed out or is not installed."""


class State(str, enum.Enum):
    """Normalized job state (a ``str``: ``State.COMPLETED == "COMPLETED"``)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    PREEMPTED = "PREEMPTED"
    NODE_FAIL = "NODE_FAIL"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    REQUEUED = "REQUEUED"
    UNKNOWN = "UNKNOWN"

    def __str__(self) -> str:
        return self.value


#: States after which the job will not run again by itself. PREEMPTED is not
#: here: with JobRequeue a preempted job usually comes back as REQUEUED/PENDING,
#: so the controller is asked too (query_states); a job both call PREEMPTED has
#: ended (PreemptMode=CANCEL): seedrun.launchers.end_states decides what then.
TERMINAL_STATES = frozenset(
    {State.COMPLETED, State.FAILED, State.CANCELLED, State.TIMEOUT,
     State.NODE_FAIL, State.BOOT_FAIL, State.DEADLINE, State.OUT_OF_MEMORY}
)

# Slurm's many raw states (sacct and squeue spell them the same) -> ours.
_STATE_MAP: dict[str, State] = {
    **{s.value: s for s in State},
    "CONFIGURING": State.RUNNING,   # nodes booting for the job
    "COMPLETING": State.RUNNING,    # finished, epilog still running: not final yet
    "SIGNALING": State.RUNNING,
    "STAGE_OUT": State.RUNNING,
    "RESIZING": State.RUNNING,
    "SUSPENDED": State.RUNNING,     # holds its allocation and will resume
    "STOPPED": State.RUNNING,
    "REQUEUE_HOLD": State.REQUEUED,
    "REQUEUE_FED": State.REQUEUED,
    "RESV_DEL_HOLD": State.PENDING,
    "REVOKED": State.CANCELLED,     # federation: runs on a sibling cluster instead
    "SPECIAL_EXIT": State.FAILED,
}


def normalize_state(raw: str) -> State:
    """Map a raw Slurm state to :class:`State`.

    Handles sacct's decorations (``"CANCELLED by 0"``, ``"CANCELLED+"`` when
    truncated); anything unrecognised is UNKNOWN.
    """
    word = raw.strip().split(" ", 1)[0].rstrip("+").upper()
    return _STATE_MAP.get(word, State.UNKNOWN)


@dataclass(frozen=True)
class SlurmState:
    """What Slurm says about one job (or one array task).

    ``source`` is where the state came from: ``"sacct"``, ``"squeue"`` (live
    controller view, fresher than accounting) or ``"missing"`` when neither
    knows the id; the caller should then treat the job as lost.
    ``exit_code``/``signal`` come from sacct's ``ExitCode`` (``"3:0"`` -> 3, 0;
    ``"0:9"`` -> killed by signal 9); None while unknown. ``reason`` is
    squeue's pending reason, ``raw`` the state as Slurm spelled it.
    """

    job_id: str
    state: State
    exit_code: int | None = None
    signal: int | None = None
    elapsed: str = ""
    nodelist: str = ""
    source: str = "sacct"
    reason: str = ""
    raw: str = ""

    @property
    def missing(self) -> bool:
        return self.source == "missing"

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def elapsed_s(self) -> int | None:
        """Elapsed time in seconds (sacct's ``[D-]HH:MM:SS``), None if unparseable."""
        m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)(?:\.\d+)?", self.elapsed.strip())
        if not m:
            return None
        d, h, mi, s = (int(x) if x else 0 for x in m.groups())
        return ((d * 24 + h) * 60 + mi) * 60 + s


# --------------------------------------------------------------------------- running commands

def _run(args: Sequence[str], timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run one Slurm command (argument list, no shell). Raises SlurmError if it
    cannot be started or times out; a non-zero exit is left to the caller."""
    try:
        return subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL, check=False,
            # a stable, parseable output whatever the user's locale/SLURM_TIME_FORMAT
            env={**os.environ, "LC_ALL": "C", "SLURM_TIME_FORMAT": "standard"},
        )
    except FileNotFoundError as e:
        raise SlurmError(f"{args[0]} not found: is Slurm installed?") from e
    except subprocess.TimeoutExpired as e:
        raise SlurmError(f"{' '.join(args)} timed out after {timeout:.0f}s") from e


# --------------------------------------------------------------------------- array size and chunking

def parse_max_array_size(scontrol_config: str) -> int | None:
    """``MaxArraySize = N`` from ``scontrol show config`` output, else None."""
    m = re.search(r"^\s*MaxArraySize\s*=\s*(\d+)\s*$", scontrol_config, re.MULTILINE)
    return int(m.group(1)) if m else None


def max_array_size() -> int:
    """The cluster's MaxArraySize, or 1001 (Slurm's default) when it cannot be
    read (no Slurm here, controller down, unexpected output)."""
    try:
        proc = _run(["scontrol", "show", "config"], timeout=30)
    except SlurmError:
        return DEFAULT_MAX_ARRAY_SIZE
    if proc.returncode != 0:
        return DEFAULT_MAX_ARRAY_SIZE
    value = parse_max_array_size(proc.stdout)
    return value if value and value > 0 else DEFAULT_MAX_ARRAY_SIZE


def chunk(items: Sequence[T], limit: int) -> list[list[T]]:
    """Split ``items`` into consecutive chunks of at most ``limit`` items.

    ``limit`` is MaxArraySize. Slurm accepts array indices 0..MaxArraySize-1,
    and submitit numbers the tasks of each array from 0, so one array may hold
    exactly ``limit`` tasks: 1001 runs fit one array under the default 1001,
    1002 need two. An empty input gives no chunks.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    seq = list(items)
    return [seq[i:i + limit] for i in range(0, len(seq), limit)]


# --------------------------------------------------------------------------- parsing

_RANGE_RE = re.compile(r"^(\d+)_\[([^\]]*)\]$")


def expand_job_id(job_id: str) -> list[str]:
    """Expand a pending array record such as ``123_[0-3,7%2]`` into
    ``["123_0", "123_1", "123_2", "123_3", "123_7"]``; other ids unchanged."""
    m = _RANGE_RE.match(job_id)
    if not m:
        return [job_id]
    base, spec = m.group(1), m.group(2).split("%", 1)[0]   # "%2" = max running, not an index
    out: list[str] = []
    for part in filter(None, spec.split(",")):
        step = 1
        if ":" in part:
            part, step_s = part.split(":", 1)
            step = int(step_s)
        lo, _, hi = part.partition("-")
        out.extend(f"{base}_{i}" for i in range(int(lo), int(hi or lo) + 1, step))
    return out


def _exit_code(raw: str) -> tuple[int | None, int | None]:
    code, _, sig = raw.strip().partition(":")
    try:
        return int(code), int(sig or 0)
    except ValueError:
        return None, None


def parse_sacct(output: str) -> dict[str, SlurmState]:
    """Parse ``sacct --format JobID,State,ExitCode,Elapsed,NodeList -P -n -X``.

    One line per job or array task (``123_4``); pending array ranges
    (``123_[5-9]``) are expanded to one entry per task. Step lines
    (``123.batch``), which ``-X`` should already drop, are ignored.
    """
    states: dict[str, SlurmState] = {}
    for line in output.splitlines():
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) < 2:
            continue
        fields += [""] * (5 - len(fields))
        raw_id, raw_state, raw_exit, elapsed, nodelist = (f.strip() for f in fields[:5])
        if "." in raw_id:          # job step
            continue
        code, sig = _exit_code(raw_exit)
        for jid in expand_job_id(raw_id):
            states[jid] = SlurmState(
                job_id=jid, state=normalize_state(raw_state), exit_code=code, signal=sig,
                elapsed=elapsed, nodelist="" if nodelist == "None assigned" else nodelist,
                source="sacct", raw=raw_state,
            )
    return states


def parse_squeue(output: str) -> dict[str, SlurmState]:
    """Parse ``squeue -h -r -o '%i|%T|%r'`` (``-r``: one line per array task)."""
    states: dict[str, SlurmState] = {}
    for line in output.splitlines():
        fields = line.strip().split("|")
        if len(fields) < 2 or not fields[0]:
            continue
        reason = fields[2].strip() if len(fields) > 2 else ""
        for jid in expand_job_id(fields[0].strip()):
            states[jid] = SlurmState(
                job_id=jid, state=normalize_state(fields[1]),
                reason="" if reason == "None" else reason, source="squeue",
                raw=fields[1].strip(),
            )
    return states


# --------------------------------------------------------------------------- queries

def _array_master(job_id: str) -> str:
    return job_id.split("_", 1)[0]


def _query_ids(job_ids: Iterable[str]) -> list[str]:
    """Ids to pass to ``-j``: array tasks collapse to their array job (``123_4``
    -> ``123``; one id returns every task), which keeps the command line short
    for thousands of runs. Order kept, duplicates dropped."""
    return list(dict.fromkeys(_array_master(j) for j in job_ids))


def _run_sacct(ids: list[str]) -> dict[str, SlurmState] | None:
    """States from accounting; None when this cluster has no accounting."""
    proc = _run(["sacct", "-j", ",".join(ids), "--format", SACCT_FORMAT, "-P", "-n", "-X"])
    if proc.returncode != 0:
        if "accounting storage is disabled" in proc.stderr.lower():
            return None
        # Do not guess: reporting every job as missing because slurmdbd is
        # briefly down would make the caller mark live runs as lost.
        raise SlurmError(f"sacct failed ({proc.returncode}): {proc.stderr.strip()}")
    return parse_sacct(proc.stdout)


def _run_squeue(ids: list[str]) -> dict[str, SlurmState]:
    # -t all: with -j, squeue otherwise hides jobs that just ended, while
    # accounting may not know them yet (the controller keeps them MinJobAge s)
    proc = _run(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(ids), "-o", SQUEUE_FORMAT])
    if proc.returncode != 0:
        # squeue fails with this when NONE of the ids is still in the
        # controller (all finished and purged): that is an empty answer.
        if "invalid job id" in proc.stderr.lower():
            return {}
        raise SlurmError(f"squeue failed ({proc.returncode}): {proc.stderr.strip()}")
    return parse_squeue(proc.stdout)


def _merge(acct: SlurmState | None, live: SlurmState) -> SlurmState:
    """Combine what accounting and the controller say about one job.

    squeue's view is current; sacct lags by seconds (a running job may still
    read PENDING there, a finished one RUNNING). So the state is squeue's,
    except that REQUEUED is kept when the controller shows the requeued job
    pending again, and a job sacct already has as ended stays ended while the
    controller only cleans up (COMPLETING). The exit code is sacct's when
    sacct has the same state (squeue cannot print one); COMPLETED means 0.
    """
    if acct is None or acct.job_id != live.job_id:
        acct = None
    elif acct.terminal and live.raw == "COMPLETING":
        return acct
    state = live.state
    if acct is not None and state is State.PENDING and acct.state in (State.REQUEUED, State.PREEMPTED):
        state = State.REQUEUED
    exit_code = signal = None
    elapsed = nodelist = ""
    if acct is not None and acct.state is state:
        exit_code, signal = acct.exit_code, acct.signal
    elif state is State.COMPLETED:
        exit_code, signal = 0, 0
    if acct is not None:
        elapsed, nodelist = acct.elapsed, acct.nodelist
    return SlurmState(job_id=live.job_id, state=state, exit_code=exit_code, signal=signal,
                      elapsed=elapsed, nodelist=nodelist, source="squeue",
                      reason=live.reason, raw=live.raw)


def _settled(job_id: str, found: dict[str, SlurmState]) -> bool:
    """True when sacct already gave a final answer for ``job_id``: then the
    controller need not be asked."""
    if job_id in found:
        return found[job_id].terminal
    if "_" in job_id:           # task not in accounting (yet): ask squeue
        return False
    tasks = [s for j, s in found.items() if _array_master(j) == job_id]
    return bool(tasks) and all(s.terminal for s in tasks)


def query_states(job_ids: Sequence[str]) -> dict[str, SlurmState]:
    """The state of every job in ``job_ids``, with one ``sacct`` call and, only
    if some job is not yet finished or not yet in accounting, one ``squeue``.

    Returns one entry per requested id (``"123"`` or array task ``"123_4"``)
    plus one per other task of the same arrays that Slurm reported. A
    requested id that neither command knows gets ``source="missing"``,
    ``state=UNKNOWN`` (``.missing`` is True): the caller may mark it lost. A
    requested bare array id (``"123"``) whose tasks were found is not missing;
    look up its tasks (``"123_0"``, ...).

    Raises SlurmError when a command is absent, times out or fails for
    another reason than "no such job" (so a transient outage is never
    mistaken for lost jobs).
    """
    wanted = list(dict.fromkeys(str(j).strip() for j in job_ids if str(j).strip()))
    if not wanted:
        return {}
    ids = _query_ids(wanted)
    found = _run_sacct(ids)
    if found is None:           # no accounting: the controller is all we have
        found = {}
    if any(not _settled(j, found) for j in wanted):
        for jid, live in _run_squeue(ids).items():
            found[jid] = _merge(found.get(jid), live)
    # Accounting may show an array as one bare record ("123|PENDING") before
    # it learns about the tasks; the record then holds the state of ONE task
    # (the one whose raw id is 123). Once tasks are known it is stale: drop it.
    # A task asked for by id and known nowhere else is PENDING if that record
    # is (the array is not split yet), else UNKNOWN but not missing: it exists.
    masters_with_tasks = {_array_master(j) for j in found if "_" in j}
    result = {j: s for j, s in found.items() if j not in masters_with_tasks}
    for j in wanted:
        if j in result:
            continue
        master = _array_master(j)
        if "_" in j and master in found:
            base = found[master]
            pending = base.state is State.PENDING
            result[j] = SlurmState(job_id=j, state=State.PENDING if pending else State.UNKNOWN,
                                   source=base.source, reason=base.reason if pending else "",
                                   raw=base.raw)
        elif "_" not in j and j in masters_with_tasks:
            continue    # array job: its tasks are in the result
        else:
            result[j] = SlurmState(job_id=j, state=State.UNKNOWN, source="missing")
    return result


def cancel(job_ids: Sequence[str], *, signal: str | None = None) -> None:
    """Cancel jobs (or array tasks, ``"123_4"``) with ONE ``scancel`` call.

    Ids of jobs that already ended are not an error (Slurm 22.05 ignores
    them). ``signal`` (e.g. ``"USR2"``) sends that signal instead of
    cancelling. Raises SlurmError when scancel fails otherwise.
    """
    ids = list(dict.fromkeys(str(j).strip() for j in job_ids if str(j).strip()))
    if not ids:
        return
    args = ["scancel"]
    if signal:
        args += ["--signal", signal]
    proc = _run(args + ids)
    if proc.returncode != 0:
        benign = ("already completing or completed", "invalid job id")
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        if not lines or not all(any(b in ln.lower() for b in benign) for ln in lines):
            raise SlurmError(f"scancel failed ({proc.returncode}): {proc.stderr.strip()}")


def requeue(job_ids: Sequence[str]) -> list[str]:
    """Put ended jobs (or array tasks) back in the queue with ``scontrol requeue``; same job ids.

    One call per job, unlike the queries: preemptions are few, and when scontrol is given a list it
    does not say for sure which of them it refused. Returns the ids Slurm refused (a job it no longer
    holds, one not requeueable); raises SlurmError when scontrol cannot be run at all.
    """
    ids = list(dict.fromkeys(str(j).strip() for j in job_ids if str(j).strip()))
    return [j for j in ids if _run(["scontrol", "requeue", j]).returncode != 0]
