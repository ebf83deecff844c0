"""`seedrun logs RUN`: a run's state, failure and events, its own log (every attempt), and the tail of
its last attempt's Slurm/submitit stdout and stderr."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from seedrun.launchers.control import find_run
from seedrun.store.engine import session_scope

LOG_TAIL_LINES = 40


def _tail(path: Path, lines: int) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    return "\n".join(text.splitlines()[-lines:])


def show_logs(db_url: str, run_prefix: str) -> int:
    """A run's state, failure and events, its own log (every attempt), and the tail of its last
    attempt's Slurm/submitit stdout and stderr."""
    with session_scope(db_url) as session:
        run = find_run(session, run_prefix, "logs")
        prov: dict[str, Any] = dict(run.provenance or {})
        state = run.state + (f" ({run.failure_reason})" if run.failure_reason else "")
        print(f"run {run.hash}  {run.stage}  {state}  attempts {run.attempts}  job {run.job_id or '-'}")
        counts = "  ".join(f"{key} {prov[key]}" for key in ("preemptions", "timeouts", "failures") if prov.get(key))
        if counts:
            print(f"  {counts}")
        for event in prov.get("events") or []:
            print(f"  {event.get('at', '')} attempt {event.get('attempt')}: {event.get('event')} ({event.get('detail', '')})")
        if run.error:
            print("error:")
            print("\n".join(f"  {text}" for text in run.error.splitlines()))
        run_dir = Path(run.run_dir)
    log = run_dir / "log.txt"
    print(f"\n== {log}")
    text = _tail(log, 10**6)
    print(text if text is not None else "(no log yet: the run has not started)")
    for rank_log in sorted(run_dir.glob("log.rank*.txt")):  # the other ranks of a multi-process run
        print(f"\n== {rank_log} (last {LOG_TAIL_LINES} lines)")
        print(_tail(rank_log, LOG_TAIL_LINES) or "(empty)")
    for key in ("log_out", "log_err"):
        if prov.get(key):
            path = Path(prov[key])
            text = _tail(path, LOG_TAIL_LINES)
            print(f"\n== {path} (last {LOG_TAIL_LINES} lines)")
            print(text if text is not None else "(missing)")
    if not prov.get("log_out") and (prov.get("submission") or {}).get("folder"):
        print(f"\nsubmitted from {prov['submission']['folder']}")
    return 0
