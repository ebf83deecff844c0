"""The attempt's hold on its run: one live attempt per run, and a holder that is gone is known at once.

The lease is the file `lease.json` in the run's folder, created with O_CREAT|O_EXCL (atomic, also on
NFS). It names its holder: the host, the process id and that process's start time, and the job id
(`local:<pid>` for the local launcher, `<job>` or `<array>_<task>` on Slurm). Its modification time is
the heartbeat, renewed every LEASE_BEAT_S by a thread of the holder.

Another attempt takes the lease over when its holder is gone:
- at once when the holder is a process of this host that no longer exists (or a new process under
  the same id: the start time differs), or a Slurm job that Slurm says has ended;
- at once when the holder is this very Slurm job (Slurm requeued it, on any node);
- otherwise when its heartbeat is older than SEEDRUN_LEASE_STALE_S (default 300 s).
Taking over renames the lease away (one renamer wins) and checks the renamed holder again by the same
rules before creating a new lease, so a live holder that came in between gets its lease back.

The heartbeat survives transient errors (a network filesystem that stalls): it retries until the stale
window has passed since its last good beat. An attempt whose lease is gone (taken over, or not renewed
for the whole window) is told through `lost`: it stops training and writes nothing more.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from typing import Any, Callable, Optional

LEASE_FILE = "lease.json"


def lease_beat_s() -> float:
    return _seconds("SEEDRUN_LEASE_BEAT_S", 30.0)


def lease_stale_s() -> float:
    return _seconds("SEEDRUN_LEASE_STALE_S", 300.0)


def _seconds(name: str, default: float) -> float:
    try:
        return max(0.01, float(os.environ.get(name, default)))
    except ValueError:
        return default


def process_start(pid: int) -> Optional[str]:
    """When process `pid` started (clock ticks since boot, from /proc), None where that cannot be read:
    with the pid it names one process, even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after the command name, which may hold spaces
    return fields[19] if len(fields) > 19 else None


def _process_alive(pid: int, started: Optional[str]) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, someone else's
        pass
    return started is None or process_start(pid) in (None, started)


def _slurm_job(job_id: str) -> bool:
    return bool(job_id) and not job_id.startswith(("local:", "pid:"))


def _slurm_ended(job_id: str) -> bool:
    """True when Slurm says the job has ended (or no longer knows it); False when it lives or Slurm
    does not answer (then only the heartbeat's age decides)."""
    from seedrun.launchers.cluster import SlurmError, State, query_states

    try:
        found = query_states([job_id]).get(job_id)
    except SlurmError:
        return False
    return found is None or found.missing or (found.terminal and found.state is not State.REQUEUED)


def holder_gone(holder: dict[str, Any], host: str, job_id: str) -> Optional[str]:
    """Why the lease's holder no longer holds the run ("process 123 on node-a is gone", ...); None while
    it may still be alive."""
    theirs = str(holder.get("job_id") or "")
    if _slurm_job(theirs) and theirs == job_id:
        return f"this Slurm job ({job_id}) held it before Slurm requeued it"
    pid = holder.get("pid")
    if holder.get("host") == host and isinstance(pid, int) and not _process_alive(pid, holder.get("pid_start")):
        return f"its process {pid} on {host} is gone"
    if float(holder.get("age_s") or 0) >= lease_stale_s():
        return f"its heartbeat stopped {float(holder['age_s']):.0f} s ago"
    if _slurm_job(theirs) and _slurm_ended(theirs):
        return f"Slurm job {theirs} has ended"
    return None


def read_lease(run_dir: str) -> Optional[dict[str, Any]]:
    """The lease's holder with its heartbeat's age ("age_s"), or None when nobody holds the run."""
    try:
        return _read(os.path.join(run_dir, LEASE_FILE))
    except FileNotFoundError:
        return None


def _read(path: str) -> dict[str, Any]:
    age = time.time() - os.stat(path).st_mtime
    try:
        with open(path, encoding="utf-8") as fh:
            holder = json.load(fh)
    except FileNotFoundError:
        raise
    except (OSError, ValueError):  # being written this very moment: a live holder
        holder, age = {}, 0.0
    return {**(holder if isinstance(holder, dict) else {}), "age_s": age}


def lease_token(path: str) -> Optional[str]:
    """The token of the lease at `path`; raises on any error (the heartbeat tells transient ones)."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh).get("token")


def take_lease(run_dir: str, holder: dict[str, Any],
               log: Callable[[str], None] = print) -> tuple[Optional[str], Optional[dict[str, Any]]]:
    """(token, None) when this attempt now holds the run; (None, the live holder) when another does.
    `holder` names this attempt: host, pid, pid_start, job_id."""
    path = os.path.join(run_dir, LEASE_FILE)
    token = uuid.uuid4().hex
    os.makedirs(run_dir, exist_ok=True)
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            current = read_lease(run_dir)
            if current is None:
                continue  # released meanwhile: try again
            if holder_gone(current, holder["host"], holder["job_id"]) is None:
                return None, current
            old = f"{path}.{token}.old"
            try:  # one renamer wins
                os.rename(path, old)
            except FileNotFoundError:
                continue
            moved = _read(old)
            why = holder_gone(moved, holder["host"], holder["job_id"])
            if why is None:  # a live holder took it since we looked: give it back
                try:
                    os.link(old, path)
                except OSError:
                    pass
                os.remove(old)
                return None, moved
            os.remove(old)
            log(f"taking over the run from {describe_holder(moved)}: {why}")
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({**holder, "token": token, "since": time.time()}, fh)
        return token, None
    return None, read_lease(run_dir) or {"job_id": "?", "host": "?", "age_s": 0.0}


def release_lease(run_dir: str, token: Optional[str]) -> None:
    holder = read_lease(run_dir) if token else None
    if holder is not None and holder.get("token") == token:
        try:
            os.remove(os.path.join(run_dir, LEASE_FILE))
        except OSError:
            pass


def describe_holder(holder: dict[str, Any]) -> str:
    pid = f", pid {holder['pid']}" if holder.get("pid") else ""
    return (f"job {holder.get('job_id', '?')} on {holder.get('host', '?')}{pid} "
            f"(heartbeat {float(holder.get('age_s') or 0):.0f} s ago)")


class AttemptLease:
    """Taken before the job changes anything of its run, kept alive by a heartbeat thread, given back when
    the attempt ends however it ends (a requeue exits through it too)."""

    def __init__(self) -> None:
        self.token: Optional[str] = None
        self.run_dir = ""
        self.lost = threading.Event()  # set when another attempt holds the run now
        self.why_lost = ""
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def take(self, run_dir: str, holder: dict[str, Any], log: Callable[[str], None] = print) -> Optional[dict[str, Any]]:
        """None when this attempt now holds the run; else the live holder, and the attempt must leave.

        A holder that is another Slurm job is waited for up to SEEDRUN_LEASE_WAIT_S (default 120 s): after
        `seedrun cancel` and a retry, sacct can report the cancelled job alive for a while after the retry's
        job starts, and leaving at once would lose the retry."""
        self.run_dir = run_dir
        deadline = time.monotonic() + _seconds("SEEDRUN_LEASE_WAIT_S", 120.0)
        while True:
            self.token, current = take_lease(run_dir, holder, log)
            if current is None or not _slurm_job(str(current.get("job_id") or "")) or time.monotonic() > deadline:
                break
            time.sleep(5.0)
        if self.token is not None:
            self._thread = threading.Thread(target=self._beat, name="seedrun-lease", daemon=True)
            self._thread.start()
        return current

    def _beat(self) -> None:
        path = os.path.join(self.run_dir, LEASE_FILE)
        last_good = time.monotonic()
        while not self._stop.wait(lease_beat_s()):
            try:
                current = lease_token(path)
                if current == self.token:
                    os.utime(path)
                    last_good = time.monotonic()
                    continue
                holder = read_lease(self.run_dir)
                self.lose("the lease is now held by " + (describe_holder(holder) if holder else "nobody"))
                return
            except FileNotFoundError:
                self.lose("the lease was taken away")
                return
            except (OSError, ValueError) as exc:  # a stalled filesystem: retry while the lease cannot be stale
                if time.monotonic() - last_good >= lease_stale_s():
                    self.lose(f"the heartbeat failed for {lease_stale_s():.0f} s ({exc})")
                    return

    def lose(self, why: str, still_ours: bool = False) -> None:
        """The attempt stops and writes nothing more. `still_ours`: the lease is still this attempt's (a newer
        attempt waits for it): it is given back as the attempt ends; else never released, another holds it."""
        self.why_lost = why
        if not still_ours:
            self.token = None
        self.lost.set()

    def release(self) -> None:
        self._stop.set()
        if self.token is not None:
            release_lease(self.run_dir, self.token)
            self.token = None
