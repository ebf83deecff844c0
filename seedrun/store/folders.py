"""A run's folder is the record of truth; the database is its index.

Each run folder ($SEEDRUN_HOME/runs/<hash[:16]>/) holds, besides the config (config.json) and the
logs, the run's record:

    run.json        its state, attempts, epoch, job id, error, failure reason, provenance, the last
                    value of each metric (summary), its final results and when it changed ("updated",
                    unix seconds); rewritten whole and atomically (seedrun.atomic) at every change
    metrics.jsonl   one line per epoch ({"epoch": N, metric: value, ...}), appended before run.json

The job writes them before anything else, and only then the database (seedrun.store.catchup applies a
record to it). Whether a job writes the database at all is `jobs_write_db`: yes for a server database
(PostgreSQL), and for SQLite only on the host that created the file and only when that file lies on a
local disk. SQLite's locking does not work across hosts over a network filesystem (its documentation
says so of WAL mode in particular), so array tasks on compute nodes leave it alone, and the commands
users type (`status`, `table`, `sync`) bring the index up to date from the folders.

No SQLAlchemy, no torch, no pathlib at import: `status` and `table` read these.
"""

from __future__ import annotations

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

    atomic_write_json(os.path.join(run_dir, RECORD), record, default=_json_default, sort_keys=True)


def _json_default(value: Any) -> Any:
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


def metric_lines(run_dir: str, after_epoch: Optional[int] = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(epoch, {metric: value}) per line of metrics.jsonl, only epochs after `after_epoch` if given."""
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
            if after_epoch is None or epoch > after_epoch:
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


# ---- who writes the database ----------------------------------------------------------------------

def hostname() -> str:
    """This host's name as seedrun sees it: SEEDRUN_HOSTNAME if set (tests, containers), else the system's."""
    return os.environ.get("SEEDRUN_HOSTNAME") or os.uname().nodename  # socket.gethostname(), without importing socket


def sqlite_path(url: str) -> Optional[str]:
    return os.path.abspath(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def host_file(path: str) -> str:
    """Next to a SQLite file: the host that created it (written by seedrun.store.engine when it does)."""
    return path + ".host"


def record_creator(url: str) -> None:
    """Note which host created this SQLite database (called once, when the file is new)."""
    path = sqlite_path(url)
    if path is not None:
        from seedrun.atomic import atomic_write_json

        atomic_write_json(host_file(path), {"host": hostname()})


def creator(url: str) -> Optional[str]:
    path = sqlite_path(url)
    try:
        with open(host_file(path), "rb") as fh:
            return json.loads(fh.read()).get("host")
    except (OSError, ValueError, AttributeError, TypeError):
        return None


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


def jobs_write_db(url: str) -> tuple[bool, str]:
    """(whether a job on this host writes the database, why). Detected, never assumed:

    a server database (any URL but SQLite): yes. SQLite: only on the host that created the file (its
    `.host` note, or SEEDRUN_HOSTNAME) and only when the file is on a local filesystem; otherwise the
    job writes its folder only, and `status`, `table` or `sync` on the database's host bring it in.
    """
    path = sqlite_path(url)
    if path is None:
        return True, "server database"
    made_by, here = creator(url), hostname()
    if made_by is None:
        return False, f"no note of the host that created {path}"
    if made_by != here:
        return False, f"{path} belongs to host {made_by}, this is {here}"
    kind = filesystem_type(os.path.dirname(path))
    if kind is None or kind.split(".")[0] in NETWORK_FS or kind.startswith("fuse"):
        return False, f"{path} is on a {kind or 'unknown'} filesystem"
    return True, f"local {kind} disk of {here}"


def prepare_folders(url: str, hashes: list[str]) -> int:
    """Before a SQLite database's runs are submitted to a cluster: each run's config.json and run.json
    as the database holds them, so that a job on a compute node (which leaves the file alone) finds its
    run in its folder. A server database needs none (jobs read it). Returns how many were written.

    Written without fsync (tens of thousands of small files must not slow a submission down); a folder
    whose run.json is newer (a job already wrote it) is left as it is.
    """
    from contextlib import closing

    from seedrun.atomic import atomic_write_json
    from seedrun.store.records import connect, parse_json

    if sqlite_path(url) is None or not hashes:
        return 0
    columns = ("hash", "stage", "depends_on") + ROW_FIELDS + ("updated_at", "config", "run_dir")
    connection, mark = connect(url)
    rows = []
    with closing(connection):
        cursor = connection.cursor()
        for start in range(0, len(hashes), 500):
            chunk = hashes[start:start + 500]
            cursor.execute(f"SELECT {', '.join(columns)} FROM runs WHERE hash IN ({', '.join(mark for _ in chunk)})", chunk)
            rows += cursor.fetchall()
    written = 0
    for row in rows:
        values = dict(zip(columns, row))
        config, run_dir = parse_json(values.pop("config")), values.pop("run_dir")
        values["provenance"], values["summary"] = parse_json(values["provenance"]) or {}, parse_json(values["summary"]) or {}
        values["updated"] = float(values.pop("updated_at") or 0)
        existing = read_record(run_dir)
        if existing is not None and float(existing.get("updated") or 0) >= values["updated"]:
            continue
        atomic_write_json(os.path.join(run_dir, CONFIG), config, indent=2, sort_keys=True, fsync=False)
        atomic_write_json(os.path.join(run_dir, RECORD), values, sort_keys=True, default=_json_default, fsync=False)
        written += 1
    return written
