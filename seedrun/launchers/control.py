"""Control of recorded runs: `seedrun retry --failed [--reason R]` and `seedrun cancel SWEEP|RUN`.

Each function returns the command's exit status; bad input raises InputError (the CLI prints one
line and exits 2). None of them imports torch.
"""

from __future__ import annotations

import os
import signal
from typing import Optional

from sqlalchemy import select

from seedrun.errors import InputError
from seedrun.store.schema import Run, Sweep as SweepRow, SweepRun, utcnow
from seedrun.store.states import BLOCKED, CANCELLED, IN_FLIGHT, PENDING, RETRYABLE, transition
from seedrun.store.engine import session_scope


def find_run(session, prefix: str, command: str) -> Run:
    prefix = prefix.strip().lower()
    if len(prefix) < 4 or any(c not in "0123456789abcdef" for c in prefix):
        raise InputError(command, "RUN", f"expected at least 4 hex digits of a run hash, got {prefix!r}")
    matches = session.scalars(select(Run).where(Run.hash.like(prefix + "%")).limit(6)).all()
    if not matches:
        raise InputError(command, "RUN", f"no run whose hash starts with {prefix!r}")
    if len(matches) > 1:
        shown = ", ".join(run.hash[:16] for run in matches[:5])
        raise InputError(command, "RUN", f"{prefix!r} matches several runs ({shown}{', ...' if len(matches) > 5 else ''}); give more digits")
    return matches[0]


def _spec(run: Run):
    from seedrun.sweeps.spec import RunSpec

    config = {key: value for key, value in run.config.items() if key not in ("stage", "depends_on")}
    spec = RunSpec(run.stage, config, axes={}, depends_on=run.depends_on)
    spec.hash = run.hash  # the recorded identity, even if hashing changed since
    return spec


def retry(db_url: str, failed: bool = True, reason: Optional[str] = None, sweep: Optional[str] = None) -> int:
    """Resubmit failed runs (failed, blocked, cancelled, lost; only those with failure_reason `reason`
    if given; only `sweep`'s if given) through the launcher each was recorded with, the same path as
    `seedrun sweep`. A blocked run whose teacher is retried is retried with it."""
    from rich.console import Console

    from seedrun.store.plan import Plan
    from seedrun.launchers.reconcile import reconcile
    from seedrun.sweeps.sweep_file import Sweep

    if not failed:
        raise InputError("retry", "--failed", "say which runs to retry: --failed")
    reconcile(db_url)
    with session_scope(db_url) as session:
        query = select(Run).where(Run.state.in_(RETRYABLE))
        if sweep is not None:
            if session.scalars(select(SweepRow.id).where(SweepRow.name == sweep)).first() is None:
                raise InputError("retry", "--sweep", f"no sweep named {sweep!r}")
            query = query.join(SweepRun, SweepRun.run_id == Run.id).join(SweepRow).where(SweepRow.name == sweep)
        candidates = list(session.scalars(query).unique())
    chosen = {run.hash: run for run in candidates if reason is None or run.failure_reason == reason}
    for run in candidates:  # students blocked on a teacher that is retried
        if run.state == BLOCKED and run.depends_on in chosen:
            chosen.setdefault(run.hash, run)
    console = Console()
    if not chosen:
        console.print("nothing to retry" + (f" (no failed run with reason {reason!r})" if reason else ""))
        return 0
    groups: dict[tuple[str, Optional[str]], list[Run]] = {}
    for run in chosen.values():
        prov = run.provenance or {}
        launcher = {**(run.config.get("launcher") or {}), **(prov.get("launcher") or {})}
        groups.setdefault((launcher.get("name") or "local", prov.get("data_root")), []).append(run)
    for (launcher_name, data_root), runs in groups.items():
        specs = [_spec(run) for run in runs]
        specs.sort(key=lambda spec: spec.stage != "pretrain")
        launcher = {**(runs[0].config.get("launcher") or {})}
        plan = Plan(Sweep(name=sweep or "retry", path="retry", ablation=None, runs=specs, axes=[], launcher=launcher),
                    states={run.hash: run.state for run in runs})
        console.print(f"retrying {len(specs)} runs ({launcher_name})")
        if launcher_name == "slurm":
            from seedrun.launchers.slurm import submit_slurm

            submit_slurm(plan, specs, db_url, data_root, console)
        else:
            from seedrun.launchers.local import run_local

            outcome = run_local(plan, specs, db_url, data_root, console)
            console.print(f"completed {outcome['completed']}  failed {outcome['failed']}  blocked {outcome['blocked']}")
    return 0


def cancel(db_url: str, target: str) -> int:
    """Cancel a sweep's unfinished runs (TARGET is a sweep name) or one run (a hash prefix): one
    scancel for all their Slurm jobs, and state `cancelled` recorded for each."""
    with session_scope(db_url) as session:
        row = session.scalars(select(SweepRow).where(SweepRow.name == target)).one_or_none()
        if row is not None:
            runs = list(session.scalars(select(Run).join(SweepRun, SweepRun.run_id == Run.id)
                                        .where(SweepRun.sweep_id == row.id, Run.state.in_((PENDING,) + IN_FLIGHT))))
            what = f"sweep {target}"
        else:
            try:
                run = find_run(session, target, "cancel")
            except InputError:
                raise InputError("cancel", "SWEEP|RUN", f"no sweep named {target!r} and no run whose hash starts with it") from None
            what = f"run {run.hash[:12]}"
            if run.state not in (PENDING,) + IN_FLIGHT:
                print(f"{what} is {run.state}: nothing to cancel")
                return 0
            runs = [run]
        targets = [(run.id, run.job_id) for run in runs]
    if not targets:
        print(f"{what}: nothing to cancel (no pending or in-flight runs)")
        return 0
    # Recorded first: what the attempt's job writes after this does not bring the run back in flight.
    with session_scope(db_url) as session:
        for run_id, _ in targets:
            transition(session, run_id, CANCELLED, expect=(PENDING,) + IN_FLIGHT, failure_reason="cancelled",
                       error="cancelled with `seedrun cancel`", finished_at=utcnow())
    slurm_ids = [job_id for _, job_id in targets if job_id and not job_id.startswith(("local:", "pid:"))]
    local = [job_id.split(":", 1)[1] for _, job_id in targets if job_id and job_id.startswith(("local:", "pid:"))]
    status = 0
    if slurm_ids:
        from seedrun.launchers.cluster import SlurmError, cancel as scancel

        try:
            scancel(slurm_ids)
        except SlurmError as exc:
            print(f"error: {exc}")
            status = 1
    for pid in local:
        if pid.isdigit():
            try:
                os.kill(int(pid), signal.SIGINT)
            except (ProcessLookupError, PermissionError):
                pass
    print(f"cancelled {len(targets)} runs of {what}" + (f" ({len(slurm_ids)} Slurm jobs, one scancel)" if slurm_ids else ""))
    return status
