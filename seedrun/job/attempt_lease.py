"""The attempt's hold on its run (seedrun.store.states: take_lease, beat_lease, release_lease): taken
before the job changes anything of the run, kept alive by a heartbeat thread, given back when the
attempt ends however it ends (a requeue exits through it too)."""

from __future__ import annotations

import threading
from typing import Any, Optional

from seedrun.store.folders import hostname
from seedrun.store.states import LEASE_BEAT_S, beat_lease, release_lease, take_lease


class AttemptLease:
    def __init__(self) -> None:
        self.token: Optional[str] = None
        self.run_dir = ""
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def take(self, run_dir: str, job_id: str) -> Optional[dict[str, Any]]:
        """None when this attempt now holds the run; else the live holder, and the attempt must leave."""
        self.run_dir = run_dir
        self.token, holder = take_lease(run_dir, job_id, hostname())
        if self.token is not None:
            self._thread = threading.Thread(target=self._beat, name="seedrun-lease", daemon=True)
            self._thread.start()
        return holder

    def _beat(self) -> None:
        while not self._stop.wait(LEASE_BEAT_S):
            if not beat_lease(self.run_dir, self.token or ""):
                return  # taken over as stale (this attempt stalled for minutes): nothing left to keep alive

    def release(self) -> None:
        self._stop.set()
        if self.token is not None:
            release_lease(self.run_dir, self.token)
            self.token = None


def describe_holder(holder: dict[str, Any]) -> str:
    return (f"job {holder.get('job_id', '?')} on {holder.get('host', '?')} "
            f"(heartbeat {float(holder.get('age_s') or 0):.0f} s ago)")
