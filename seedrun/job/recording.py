"""How a job records its run: in the run's folder only, never in the database.

The job reads the record its submission wrote (seedrun.store.attempts: the attempt it was started for,
`submitted`) and the config beside it, and writes every change back as a whole new run.json (atomic),
its version one count higher. seedrun's commands bring the folder into the database
(seedrun.store.catchup); a database that is busy, locked or unreachable cannot touch a running job.
"""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple, Optional

from seedrun.store.folders import FolderRecord, read_config, read_record, version_of, write_record


class LoadedRun(NamedTuple):
    record: FolderRecord
    config: dict[str, Any]
    upstream: Optional[tuple[str, str]]  # (its state, its folder) for a run that needs another's result


def finite_or_none(values: dict[str, Any]) -> dict[str, Any]:
    """Metric values as records hold them: numbers, or None for NaN and infinities (no store holds NaN)."""
    return {name: float(value) if math.isfinite(float(value)) else None for name, value in (values or {}).items()}


def load_run(run_dir: str, run_hash: str, attempt: int) -> tuple[Optional[LoadedRun], str]:
    """(the run as its folder holds it, "") when the folder holds attempt `attempt` of run `run_hash`;
    (None, why not) otherwise: the job must leave the run alone."""
    record, config = read_record(run_dir), read_config(run_dir)
    if record is None or not config:
        return None, f"no record of run {run_hash[:12]} in {run_dir}"
    if record.get("hash") != run_hash:
        return None, f"{run_dir} holds run {str(record.get('hash'))[:12]}, not {run_hash[:12]}"
    found = version_of(record)[0]
    if found != attempt:
        return None, (f"run {run_hash[:12]} is at attempt {found} in its folder; this job was started for attempt "
                      f"{attempt}: it leaves the run to that one")
    if record.get("stage") == "eval":
        from seedrun.store.protocols import protocol_key

        record["protocol_key"] = protocol_key(config)
    upstream = None
    depends_on = record.get("depends_on")
    if depends_on:
        up_dir = os.path.join(os.path.dirname(os.path.abspath(run_dir)), depends_on[:16])
        up = read_record(up_dir)
        if up is None and os.path.exists(os.path.join(up_dir, "model.pt")):
            up = FolderRecord(state="completed")  # trained before folder records: its model is there
        upstream = ((up or {}).get("state", "missing"), up_dir)
    return LoadedRun(record, config, upstream), ""


def save_record(run_dir: str, record: FolderRecord) -> bool:
    """Write the record with its version one count higher: the next record of this attempt. False, and
    nothing written, when the folder already holds a newer attempt (a retry opened it while this attempt's
    job was still being stopped): the attempt must stop and write nothing more."""
    attempt, seq = version_of(record)
    if version_of(read_record(run_dir))[0] > attempt:
        return False
    record["version"] = [attempt, seq + 1]
    write_record(run_dir, record)
    return True
