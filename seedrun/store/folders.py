"""A run's folder is the record of truth; the database is its index.

Each run folder ($SEEDRUN_HOME/runs/<hash[:16]>/) holds, besides the config (config.json) and the
logs, the run's record:

    run.json        its state, attempts, epoch, job id, error, failure reason, provenance, the last
                    value of each metric (summary), its final results, and its version (attempt,
                    counter: `version_of`); rewritten whole and atomically (seedrun.atomic) at every change
    metrics.jsonl   one line per epoch ({"epoch": N, metric: value, ...}), appended before run.json

One writer per store: a job writes only its run's folder, wherever it runs and whatever the database;
seedrun's commands write the database and bring the folders of runs in flight into it
(seedrun.store.catchup). A submission writes the folder first (seedrun.store.attempts: the new attempt,
`submitted`), so the job always finds the attempt it was started for.

No SQLAlchemy, no torch, no pathlib at import: jobs, `status` and `table` read these.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import Any, Iterator, Optional

RECORD = "run.json"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
#: The fields of a record that are the run's row in the database (besides hash, stage, depends_on).
ROW_FIELDS = ("state", "attempts", "epoch", "job_id", "error", "failure_reason", "provenance", "summary",
              "started_at", "finished_at")
#: Filesystems whose locks SQLite cannot rely on (network and cluster filesystems, FUSE).
NETWORK_FS = ("nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "lustre", "gpfs", "beegfs", "ceph", "cephfs", "9p",
              "afs", "glusterfs", "panfs", "pvfs2", "orangefs", "ocfs2", "gfs2", "wekafs", "sshfs", "davfs")


class FolderRecord(dict):
    """A run's record as a dict with attribute reads (record.state, record.attempts): what the job's
    recording code changes through seedrun.store.states.transition_record."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def read_record(run_dir: str) -> Optional[FolderRecord]:
    """The run.json in `run_dir`, or None if there is none (or it cannot be read)."""
    try:
        with open(os.path.join(run_dir, RECORD), "rb") as fh:
            value = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    return FolderRecord(value) if isinstance(value, dict) else None


def write_record(run_dir: str, record: dict[str, Any]) -> None:
    from seedrun.atomic import atomic_write_json

    atomic_write_json(os.path.join(run_dir, RECORD), record, default=json_default, sort_keys=True)


def json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"not JSON: {type(value).__name__}")


def read_config(run_dir: str) -> Optional[dict[str, Any]]:
    try:
        with open(os.path.join(run_dir, CONFIG), "rb") as fh:
            value = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def metric_lines(run_dir: str, after_epoch: Optional[int] = None,
                 through_epoch: Optional[int] = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(epoch, {metric: value}) per line of metrics.jsonl, only epochs after `after_epoch` and up to
    `through_epoch` where given. A job appends an epoch's line before the record that counts it, so a reader
    bounds the lines by the record it read: a line past it is counted by the next record, once."""
    try:
        fh = open(os.path.join(run_dir, METRICS), "r", encoding="utf-8")
    except OSError:
        return
    with fh:
        for line in fh:
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut short by a crash: the next epoch rewrites what matters
                continue
            if not isinstance(entry, dict) or not isinstance(entry.get("epoch"), int):
                continue
            epoch = entry.pop("epoch")
            if (after_epoch is None or epoch > after_epoch) and (through_epoch is None or epoch <= through_epoch):
                yield epoch, entry


def append_metrics(run_dir: str, epoch: int, metrics: dict[str, float]) -> None:
    """One line, written with one write() and flushed to disk before the record that counts it."""
    line = (json.dumps({"epoch": epoch, **metrics}) + "\n").encode()
    fd = os.open(os.path.join(run_dir, METRICS), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- versions: records ordered without clocks --------------------------------------------------------

def version_of(record: Optional[dict[str, Any]]) -> tuple[int, int]:
    """(attempt, counter): the order of a run's records. A submission opens attempt N+1 with counter 0;
    the job of that attempt counts up with every write, across Slurm's requeues of it. A record from
    before versions is (0, 0): older than any."""
    version = (record or {}).get("version")
    try:
        attempt, seq = version
        return int(attempt), int(seq)
    except (TypeError, ValueError):
        return 0, 0


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def hostname() -> str:
    """This host's name as seedrun sees it: SEEDRUN_HOSTNAME if set (tests, containers), else the system's."""
    return os.environ.get("SEEDRUN_HOSTNAME") or os.uname().nodename  # socket.gethostname(), without importing socket


# ---- where a SQLite file may use WAL --------------------------------------------------------------

def filesystem_type(path: str) -> Optional[str]:
    """The type of the filesystem holding `path` (Linux: the longest mount point above it in /proc/mounts)."""
    path = os.path.realpath(path)
    best, kind = "", None
    try:
        with open("/proc/self/mounts", "r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount = parts[1].replace("\\040", " ")
                inside = path == mount or path.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, kind = mount, parts[2]
    except OSError:
        return None
    return kind


def sqlite_path(url: str) -> Optional[str]:
    return os.path.abspath(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def on_network_filesystem(path: str) -> tuple[bool, str]:
    """(whether `path` lies on a network or cluster filesystem, its type). SQLite's WAL mode needs shared
    memory that such filesystems do not share between hosts; its rollback journal works with their locks."""
    kind = filesystem_type(os.path.dirname(os.path.abspath(path))) or "unknown"
    return kind.split(".")[0] in NETWORK_FS or kind.startswith("fuse") or kind == "unknown", kind
