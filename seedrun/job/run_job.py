"""The job: what runs on the worker (a Slurm node or a local subprocess) for one run.

It reads its run from its folder (the attempt its submission opened there: seedrun.store.attempts),
trains in that folder (resuming from its checkpoint if there is one), and records state, per-epoch
metrics, final metrics, failures and provenance in the same folder, and nowhere else: it never opens the
database (seedrun.job.recording). It is a submitit Checkpointable.

One live attempt per run: the job holds the run's lease (seedrun.job.attempt_lease) while it writes; an
attempt that loses it stops at the next step and writes nothing more. State changes follow the one table
of transitions (seedrun.store.states): the job starts a run of its own attempt that is neither cancelled
nor completed, and ends or requeues only the `running` it set itself.

Stopping at a step boundary on USR2 or SIGTERM, then requeueing: seedrun.job.signals.

Budgets (config["launcher"], or the launcher recorded at submission): `max_preemptions` (-1 = no
limit), `max_timeouts` (default 3; only time limits whose attempt made no progress count: see
budgets.spends_budget), `max_failures` (retries of a run that raised; default 0; a NaN loss is never
retried: the rerun would reproduce it). The counts live in run.provenance as
`preemptions`, `timeouts`, `failures`, with an `events` list; a spent budget fails the run with
failure_reason `preempted`, `timeout` or the failure's own class.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import submitit

from seedrun.store.folders import FolderRecord, append_metrics, hostname, utcnow
from seedrun.store.states import (BLOCKED, COMPLETED, FAILED, PENDING, RUNNING, STARTABLE, SUBMITTED,
                                  transition_record)
from seedrun.job.recording import finite_or_none, load_run, save_record
from seedrun.job.attempt_lease import AttemptLease, describe_holder, process_start
from seedrun.job import ranks
from seedrun.job.interpreter import ending_process as _ending_process
from seedrun.job.interpreter import import_stage as _import_stage
from seedrun.job.budgets import DEFAULT_BUDGETS, as_int, budgets_of, record_event, spends_budget
from seedrun.job.failures import AttemptOver, LeaseLost, Stopped, classify_failure, traceback_tail
from seedrun.job.signals import StepBoundarySignals, signal_name
from seedrun.job.provenance import (accelerator, add_hours, gpus_used, job_environment, job_id, layout, provenance,
                                    submitit_paths, teacher_digest, teacher_file)

LOG = "log.txt"
CHECKPOINT = "checkpoint.pt"  # seedrun.training.checkpoints.CHECKPOINT (not imported: that module loads torch)
#: After a SIGTERM the job waits this long for SIGKILL (Slurm's KillWait) or a USR2 before it exits.
SIGTERM_WAIT_S = 120.0


class _RecordingHooks:
    def __init__(self, job: "RunJob", run_dir: Path):
        self.job, self.run_dir = job, run_dir

    def log(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        print(line, flush=True)
        with open(self.run_dir / LOG, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        append_metrics(str(self.run_dir), epoch, metrics)  # the folder first, then run.json, then the database

        def record(run: FolderRecord, prov: dict[str, Any]) -> None:
            run["epoch"] = epoch
            run["summary"] = {**(run.summary or {}), **finite_or_none(metrics)}
            prov["heartbeat"] = time.time()

        self.job._update(record)

    def should_stop(self) -> bool:
        # training.loop asks once after every step (after_step or end_epoch): the count is the attempt's steps
        self.job._steps += 1
        if self.job._lease.lost.is_set():  # another attempt holds the run: no checkpoint, no record
            raise LeaseLost(self.job._lease.why_lost)
        return self.job.stop_requested


class RunJob(StepBoundarySignals, submitit.helpers.Checkpointable):
    """One attempt of one run: its hash, its folder, the data root and the attempt number. The pickle
    submitit ships holds only these: the run's config (every sweep value) is read from the folder,
    never passed through a shell or a command line."""

    def __init__(self, run_hash: str, run_dir: str, data_root: Optional[str] = None, attempt: int = 1):
        self.run_hash, self.run_dir, self.data_root, self.attempt = run_hash, str(run_dir), data_root, int(attempt)
        self._reset()

    def _reset(self) -> None:
        self.stop_requested = False
        self._signal: Optional[int] = None  # the USR2 received, if any
        self._sigterm = False
        self._submitit_handler: Any = None  # submitit's USR2 handler, called at a step boundary
        self._previous_handlers: dict[int, Any] = {}
        self._handed_over = False
        self._accounted = False
        self._started = time.time()
        self._steps = 0  # steps this attempt trained (_RecordingHooks.should_stop)
        self._gpus = (1, 0)  # (training ranks, GPUs estimated at the start): see provenance.layout
        self._budgets = dict(DEFAULT_BUDGETS)
        self._grace_s = 60.0
        self._hooks: Optional[_RecordingHooks] = None
        self._record = FolderRecord()
        self._run_dir = Path(self.run_dir)
        self._taken_over: list[str] = []
        self._lease = AttemptLease()  # one live attempt per run (seedrun.job.attempt_lease)
        self._group = ranks.Group(ranks.Place())  # several processes per run: seedrun.job.ranks

    def __getstate__(self) -> dict[str, Any]:  # a requeue pickles a fresh job: no handlers, no flags
        return {"run_hash": self.run_hash, "run_dir": self.run_dir, "data_root": self.data_root,
                "attempt": self.attempt}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    # ---- the attempt ----------------------------------------------------------------------------

    def __call__(self) -> dict[str, float]:
        try:
            return self._call()
        finally:
            _ending_process()

    def _call(self) -> dict[str, float]:
        self._reset()
        where = ranks.place()
        if not where.is_main:  # another rank of the run: trains beside rank 0, records nothing
            return ranks.follow(where, self.data_root)
        self._install_handlers()
        try:
            self._group = ranks.Group(where)
            return self._attempt()
        finally:
            self._group.close()
            self._lease.release()
            self._restore_handlers()

    def _attempt(self) -> dict[str, float]:
        start = None
        try:
            start = self._start()
            if start is not None and self._group.where.world > 1:
                ranks.clear_failures(start[1])
        finally:
            self._group.announce(start)  # the other ranks train this run beside rank 0, or leave
        if start is None:
            return {}
        config, run_dir, stage, teacher_dir = start
        if not ranks.on_all_ranks(stage):
            self._group.alone()  # evaluation runs on rank 0 alone (seedrun.job.ranks)
        hooks = self._hooks = _RecordingHooks(self, run_dir)
        hooks.log(f"run {self.run_hash[:12]} ({stage}) attempt on {socket.gethostname()}, job {job_id()}")
        for line in self._taken_over:  # the lease of an attempt that is gone, taken over at once
            hooks.log(line)
        try:
            results = self._train(stage, config, run_dir, hooks, teacher_dir)
        except LeaseLost as exc:
            hooks.log(f"stopped: {exc}; this attempt writes nothing more")
            return {}
        except Stopped:
            self._after_stop()
            raise
        except AttemptOver:
            raise
        except Exception as exc:
            self._after_failure(exc)
            raise
        if self._signal is not None:
            self._disarm_alarm()  # finished before the step boundary came: nothing to requeue
        if self._lease.lost.is_set():
            hooks.log(f"results not recorded: {self._lease.why_lost}")
            return {}
        hooks.log("results " + json.dumps(results))
        self._finish(results)
        return results

    def _train(self, stage: str, config: dict[str, Any], run_dir: Path, hooks: _RecordingHooks,
               teacher_dir: Optional[Path]) -> dict[str, float]:
        """The training itself (seedrun.training); tests override this to record without training."""
        _import_stage(stage)  # torch: the heaviest imports of the job, with the collector paused
        from seedrun.training.loop import Interrupted

        try:
            if stage == "pretrain":
                from seedrun.training.pretrain import pretrain

                return pretrain(config, run_dir, hooks, self.data_root)
            if stage == "eval":  # teacher_dir is the evaluated run's directory
                from seedrun.evaluate.run import evaluate

                # recorded on the run it evaluated too, with the result (seedrun.store.catchup)
                return evaluate(config, run_dir, teacher_dir, self.data_root, log=hooks.log)
            from seedrun.training.distill import distill

            return distill(config, run_dir, hooks, teacher_dir, self.data_root)
        except Interrupted as exc:
            raise Stopped(str(exc)) from None

    def _start(self) -> Optional[tuple[dict[str, Any], Path, str, Optional[Path]]]:
        """Mark the run running (or blocked, or out of budget) in its folder; None when it must not train.

        The folder must hold the attempt this job was started for, and the run's lease must be free
        (or its holder gone): otherwise the job says why and leaves the folder as it is."""
        info = provenance()
        loaded, why = load_run(self.run_dir, self.run_hash, self.attempt)
        if loaded is None:
            print(why, flush=True)
            return None
        run, config, upstream = loaded
        run_dir = self._run_dir
        self._record = run
        if run.state not in STARTABLE:
            print(f"run {self.run_hash[:12]} is {run.state}: this attempt leaves it", flush=True)
            return None
        holder = self._lease.take(str(run_dir), {"host": hostname(), "pid": os.getpid(),
                                                 "pid_start": process_start(os.getpid()), "job_id": job_id()},
                                  log=self._taken_over.append)
        if holder is not None:  # another attempt is alive: leave the run and its folder as they are
            print(f"run {self.run_hash[:12]} is held by {describe_holder(holder)}: this attempt leaves it", flush=True)
            return None
        stage = run["stage"]
        if upstream is not None and upstream[0] != COMPLETED:
            if transition_record(run, BLOCKED, expect=STARTABLE, failure_reason="blocked", finished_at=utcnow(),
                                 error=f"upstream run {run['depends_on'][:12]} is {upstream[0]}"):
                self._save()
            return None
        prov = dict(run.provenance or {})
        launcher = {**(config.get("launcher") or {}), **(prov.get("launcher") or {})}
        self._budgets = budgets_of(launcher)
        delay = as_int(launcher.get("signal_delay_s"), 120)
        self._grace_s = float(min(60, max(5, delay // 3)))
        if prov.get("attempt_open"):
            # The previous attempt ended without recording how: SIGTERM (requeue, preemption) or a kill.
            prov["preemptions"] = prov.get("preemptions", 0) + 1
            add_hours(prov, max(0.0, prov.get("heartbeat", 0) - prov.get("attempt_started", 0)))
            record_event(prov, run.attempts, "preempted", "the previous attempt was stopped or killed and requeued")
            limit = self._budgets["max_preemptions"]
            if 0 <= limit < prov["preemptions"]:
                prov["attempt_open"] = False
                if transition_record(run, FAILED, expect=STARTABLE, provenance=prov, failure_reason="preempted",
                                     finished_at=utcnow(), error=f"preemption budget spent: {prov['preemptions']} "
                                                                 f"preemptions > max_preemptions={limit}"):
                    self._save()
                return None
        prov.update(info)
        world = self._group.where.world  # this attempt's processes, nodes and the GPUs it will train on
        prov.pop("layout", None)  # an earlier attempt's, on another world size
        prov.update(layout(world, world if ranks.on_all_ranks(stage) else 1, str(config.get("device") or "auto")))
        self._gpus = (prov["training_ranks"], prov["gpus_used"])
        prov.update(submitit_paths())
        prov.update({"attempt_open": True, "attempt_started": self._started, "heartbeat": self._started})
        teacher_dir = Path(upstream[1]) if upstream is not None else None
        weights = teacher_file(config, stage, teacher_dir)
        if weights is not None:
            prov.update(teacher_digest(weights, prov))
            named = (config.get("teacher") or {}).get("checkpoint_sha256") if teacher_dir is None else None
            if named and prov.get("teacher_sha256") not in (None, named):  # the run is named by another teacher
                if transition_record(run, FAILED, expect=STARTABLE, provenance=prov, failure_reason="teacher_changed",
                                     finished_at=utcnow(), error=f"the teacher file {weights} is not the one this run "
                                     f"was planned with (sha256 {named[:12]}); `seedrun sweep` plans it anew"):
                    self._save()
                return None
        if not transition_record(run, RUNNING, expect=STARTABLE, attempts=int(run.attempts or 0) + 1,
                                 started_at=run.get("started_at") or utcnow(), job_id=job_id(), error=None,
                                 failure_reason=None, provenance=prov):
            return None
        self._save()
        return config, run_dir, stage, teacher_dir

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit's USR2 handler, which RunJob only lets run once the loop has written its
        checkpoint at a step boundary (see the module doc): the requeued job is the same run, and it
        resumes from run_dir/checkpoint.pt."""
        self.stop_requested = True
        again = type(self)(self.run_hash, self.run_dir, self.data_root, self.attempt)  # the same attempt
        return submitit.helpers.DelayedSubmission(again)

    def _after_stop(self) -> None:
        self._disarm_alarm()
        if self._signal is None:
            # SIGTERM only: Slurm kills the job after KillWait and requeues or cancels it.
            self._account(keep_open=True)
            self._log("stopped on SIGTERM: checkpoint written; waiting for Slurm to requeue or cancel the job")
            deadline = time.monotonic() + SIGTERM_WAIT_S
            while self._signal is None and time.monotonic() < deadline:
                time.sleep(0.2)
            if self._signal is None:
                self._log(f"not killed {SIGTERM_WAIT_S:.0f}s after SIGTERM: exiting; `seedrun sweep` resumes the run")
                self._update(lambda run, prov: _move(run, PENDING, error="stopped by SIGTERM; resumable"))
                raise AttemptOver("stopped by SIGTERM")
            self._disarm_alarm()
        self._log("stopped: checkpoint written")
        self._hand_over()

    def _hand_over(self) -> None:
        """Count the interruption; then let submitit requeue (it calls checkpoint() and exits)."""
        if self._handed_over:
            return
        self._handed_over = True
        self._disarm_alarm()
        handler = self._submitit_handler
        owner = getattr(handler, "__self__", None)
        timed_out = bool(owner.has_timed_out()) if hasattr(owner, "has_timed_out") else False
        kind = "timeouts" if timed_out else "preemptions"
        limit = self._budgets["max_timeouts" if timed_out else "max_preemptions"]
        progressed = self._progressed()
        spends = spends_budget(kind, progressed)
        outcome: dict[str, Any] = {}

        def record(run: FolderRecord, prov: dict[str, Any]) -> None:
            count = prov.get(kind, 0) + int(spends)
            if spends and 0 <= limit < count:
                what = "timeout" if timed_out else "preemption"
                moved = _move(run, FAILED, failure_reason="timeout" if timed_out else "preempted", finished_at=utcnow(),
                              error=f"{what} budget spent: {count} {kind} > max_{kind}={limit}")
            elif handler is None:
                moved = _move(run, PENDING, error="interrupted outside submitit: `seedrun sweep` resumes it")
            else:
                outcome["requeue"] = moved = _move(run, SUBMITTED, error=None)
            if moved:  # else cancelled (or ended by status) meanwhile: nothing to count, no requeue
                prov[kind] = outcome["count"] = count
                detail = "signal " + signal_name(self._signal)
                if not spends:
                    prov["progress_timeouts"] = prov.get("progress_timeouts", 0) + 1
                    detail += f"; the attempt made progress ({self._steps} steps, checkpoint written): budget not spent"
                elif timed_out:
                    detail += "; the attempt made no progress: counted against max_timeouts"
                record_event(prov, run.attempts, "timeout" if timed_out else "preempted", detail)

        self._account(extra=record)
        if not outcome.get("requeue"):
            self._log(f"not requeued ({kind}: {outcome['count']}, limit {limit})" if "count" in outcome else
                      "not requeued: the run was cancelled or ended by another writer meanwhile")
            raise AttemptOver(f"interrupted, not requeued ({kind})")
        self._log(f"requeueing after {'a timeout' if timed_out else 'a preemption'}"
                  + (f" that made progress ({self._steps} steps): not counted" if not spends else "")
                  + f" ({kind}: {outcome['count']}" + (f" of {limit})" if limit >= 0 else ")"))
        try:
            handler(self._signal, None)  # submitit: checkpoint(), dump, `scontrol requeue`, sys.exit
        except Exception as exc:
            error = f"requeue failed: {traceback_tail(exc)}"
            self._update(lambda run, prov: _move(run, FAILED, expect=(SUBMITTED,), failure_reason="exception", error=error))
            raise AttemptOver("requeue failed") from exc
        raise AttemptOver("submitit did not exit after requeueing")

    def _progressed(self) -> bool:
        """Whether this attempt advanced the run: it trained steps and wrote a checkpoint (at a later step
        than it resumed from, since the loop saves only after a step) during the attempt. Steps lost with
        the attempt (no checkpoint since they ran) are no progress."""
        try:
            saved = (self._run_dir / CHECKPOINT).stat().st_mtime
        except OSError:
            return False
        return self._steps > 0 and saved >= self._started

    # ---- failures and results -------------------------------------------------------------------

    def _after_failure(self, exc: BaseException) -> None:
        if self._group.where.world > 1:  # a collective broken by another rank's failure: record that one
            exc = ranks.primary_failure(exc, self._run_dir)
        reason = classify_failure(exc)
        self._log("".join(traceback.format_exception(exc)).rstrip())
        limit = self._budgets["max_failures"]
        env = job_environment()
        outcome: dict[str, Any] = {}

        def record(run: FolderRecord, prov: dict[str, Any]) -> None:
            prov["failures"] = prov.get("failures", 0) + 1
            record_event(prov, run.attempts, "failure", f"{reason}: {str(exc)[:200]}")
            retry = env is not None and reason != "nan_loss" and (limit < 0 or prov["failures"] <= limit)
            retry = retry and _move(run, SUBMITTED, error=traceback_tail(exc), failure_reason=None)
            if not retry:
                _move(run, FAILED, error=traceback_tail(exc), failure_reason=reason, finished_at=utcnow())
            outcome["retry"], outcome["count"] = retry, prov["failures"]

        self._account(extra=record)
        if outcome.get("retry"):
            self._log(f"failed ({reason}); retrying (failure {outcome['count']} of {'any' if limit < 0 else limit})")
            env._requeue(10**6)  # Slurm: `scontrol requeue`; local: exits with submitit's requeue code
            sys.exit(-1)

    def _finish(self, results: dict[str, float]) -> None:
        def record(run: FolderRecord, prov: dict[str, Any]) -> None:
            if _move(run, COMPLETED, error=None, failure_reason=None, finished_at=utcnow()):
                prov["end"] = utcnow().isoformat()
                run["summary"] = {**(run.summary or {}), **finite_or_none(results)}
                run["results"] = finite_or_none(results)
            else:
                self._log("results not recorded: the run was cancelled or ended by another writer meanwhile")

        self._account(extra=record)

    def _account(self, keep_open: bool = False, extra: Optional[Callable[[FolderRecord, dict], None]] = None) -> None:
        """Add this attempt's wall and GPU hours to provenance (once), then apply `extra` in the same
        transaction. `keep_open`: the attempt may still be killed (SIGTERM): the next start counts it."""

        def update(run: FolderRecord, prov: dict[str, Any]) -> None:
            if not self._accounted:
                prov.update(accelerator())
                prov["gpus_used"] = gpus_used(*self._gpus)  # what it did use, now that it trained
                add_hours(prov, time.time() - self._started, prov["gpus_used"])
                prov["heartbeat"] = time.time()
                prov["attempt_started"] = time.time()  # a later kill adds only what follows
            prov["attempt_open"] = keep_open
            if extra is not None:
                extra(run, prov)

        self._update(update)
        self._accounted = True

    def _update(self, fn: Callable[[FolderRecord, dict], None]) -> None:
        """Change the run's record in its folder."""
        run = self._record
        prov = dict(run.provenance or {})
        fn(run, prov)
        run["provenance"] = prov
        self._save()

    def _save(self) -> None:
        """run.json, atomically, as the next version of this attempt's record; nothing once another
        attempt holds the run."""
        if self._lease.lost.is_set():
            self._log(f"record not written: {self._lease.why_lost}")
            return
        if not save_record(str(self._run_dir), self._record):
            self._lease.lose("a newer attempt of the run was opened in its folder", still_ours=True)
            self._log(f"record not written: {self._lease.why_lost}")

    def _log(self, message: str) -> None:
        if self._hooks is not None:
            self._hooks.log(message)
        else:
            print(message, flush=True)


# ---- helpers ------------------------------------------------------------------------------------

def _move(run: FolderRecord, state: str, expect: tuple[str, ...] = (RUNNING,), **values: Any) -> bool:
    """Move the attempt's run record to `state`, only from `expect`: by default from the `running` it set
    itself."""
    return transition_record(run, state, expect=expect, **values)
