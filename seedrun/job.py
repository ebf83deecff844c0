"""The job: what runs on the worker (a Slurm node or a local subprocess) for one run.

It reads its run from the database, trains in the run's fixed directory (resuming from its
checkpoint if there is one), and records state, per-epoch metrics, final metrics, failures and
provenance. It is a submitit Checkpointable: on a timeout or preemption signal submitit calls
`checkpoint()`, which asks the loop to save and requeues the same job into the same directory.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import submitit
from sqlalchemy import select

from seedrun import __version__
from seedrun.schema import BLOCKED, CANCELLED, COMPLETED, FAILED, RUNNING, Run, record_metrics, utcnow
from seedrun.store import session_scope

LOG = "log.txt"


def classify_failure(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return "out_of_memory"
    if isinstance(exc, FloatingPointError) or "nan" in text.lower().split():
        return "nan_loss"
    return "exception"


class _RecordingHooks:
    def __init__(self, job: "RunJob", run_dir: Path):
        self.job, self.run_dir = job, run_dir

    def log(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        print(line, flush=True)
        with open(self.run_dir / LOG, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        with session_scope(self.job.db_url) as session:
            run = session.scalars(select(Run).where(Run.hash == self.job.run_hash)).one()
            run.epoch = epoch
            record_metrics(session, run, metrics, epoch)
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"epoch": epoch, **metrics}) + "\n")

    def should_stop(self) -> bool:
        return self.job.stop_requested


class RunJob(submitit.helpers.Checkpointable):
    def __init__(self, run_hash: str, db_url: str, data_root: Optional[str] = None):
        self.run_hash, self.db_url, self.data_root = run_hash, db_url, data_root
        self.stop_requested = False

    def __call__(self) -> dict[str, float]:
        self.stop_requested = False
        # `scontrol requeue` and a local kill send SIGTERM: save at the next step, then exit.
        signal.signal(signal.SIGTERM, self._request_stop)
        with session_scope(self.db_url) as session:
            run = session.scalars(select(Run).where(Run.hash == self.run_hash)).one()
            upstream = session.scalars(select(Run).where(Run.hash == run.depends_on)).one_or_none() if run.depends_on else None
            if upstream is not None and upstream.state != COMPLETED:
                run.state, run.error = BLOCKED, f"upstream run {upstream.hash[:12]} is {upstream.state}"
                return {}
            run.state, run.attempts = RUNNING, run.attempts + 1
            run.started_at = run.started_at or utcnow()
            run.job_id = _job_id()
            run.error = run.failure_reason = None
            run.provenance = {**(run.provenance or {}), **provenance()}
            config, run_dir, stage = run.config, Path(run.run_dir), run.stage
            teacher_dir = Path(upstream.run_dir) if upstream is not None else None
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        hooks = _RecordingHooks(self, run_dir)
        hooks.log(f"run {self.run_hash[:12]} ({stage}) attempt on {socket.gethostname()}, job {_job_id()}")
        started = time.time()
        from seedrun import train

        try:
            if stage == "pretrain":
                results = train.pretrain(config, run_dir, hooks, self.data_root)
            else:
                results = train.distill(config, run_dir, hooks, teacher_dir, self.data_root)
        except train.Interrupted:
            hooks.log("interrupted: checkpoint written, waiting to be requeued")
            raise
        except BaseException as exc:
            hooks.log("".join(traceback.format_exception(exc)).rstrip())
            self._finish(FAILED, started, error=_tail(exc), reason=classify_failure(exc))
            raise
        hooks.log("results " + json.dumps(results))
        self._finish(COMPLETED, started, results=results)
        return results

    def _request_stop(self, signum, frame) -> None:
        self.stop_requested = True

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        self.stop_requested = True
        return submitit.helpers.DelayedSubmission(RunJob(self.run_hash, self.db_url, self.data_root))

    def _finish(self, state: str, started: float, results: Optional[dict] = None, error: Optional[str] = None,
                reason: Optional[str] = None) -> None:
        with session_scope(self.db_url) as session:
            run = session.scalars(select(Run).where(Run.hash == self.run_hash)).one()
            if run.state == CANCELLED:
                return
            run.state, run.error, run.failure_reason = state, error, reason
            run.finished_at = utcnow()
            hours = (time.time() - started) / 3600
            prov = dict(run.provenance or {})
            prov["wall_hours"] = prov.get("wall_hours", 0.0) + hours
            prov["gpu_hours"] = prov.get("gpu_hours", 0.0) + hours * _gpus()
            prov["end"] = utcnow().isoformat()
            run.provenance = prov
            epoch = run.epoch
            record_metrics(session, run, results or {}, epoch)


def _tail(exc: BaseException, lines: int = 8) -> str:
    return "\n".join("".join(traceback.format_exception(exc)).rstrip().splitlines()[-lines:])


def _job_id() -> str:
    try:
        return str(submitit.JobEnvironment().job_id)
    except RuntimeError:
        return f"pid:{os.getpid()}"


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def provenance() -> dict[str, Any]:
    """Where and with what this attempt ran: enough to reproduce it and to say what it cost."""
    import torch

    root = Path(__file__).resolve().parent.parent
    info: dict[str, Any] = {
        "seedrun_version": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "host": socket.gethostname(), "start": utcnow().isoformat(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "slurm_array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"), "packages_sha256": _packages_hash(),
    }
    info.update(_git(root))
    return info


def _git(root: Path) -> dict[str, Any]:
    import subprocess

    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    if commit.returncode != 0:
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}


def _packages_hash() -> str:
    import hashlib
    from importlib import metadata

    names = sorted(f"{dist.metadata['Name']}=={dist.version}" for dist in metadata.distributions())
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def main() -> None:  # `python -m seedrun.job HASH DB` runs one run in this process (debugging)
    RunJob(sys.argv[1], sys.argv[2])()


if __name__ == "__main__":
    main()
