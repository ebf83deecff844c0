"""How a job hears that it must stop, and stops where a consistent checkpoint can be written.

Stopping, checkpointing and requeueing (checked against the one-node test cluster,
tests/test_slurm_sweep.py):

- USR2 comes `signal_delay_s` before the time limit, on a preemption notice, or from submitit's
  `job._interrupt()`. submitit's own handler would call `checkpoint()`, run `scontrol requeue` and
  `sys.exit` at once, in the middle of a training step, where no consistent state can be saved. So
  while the run trains, RunJob puts its own handler in front: it only sets `stop_requested`.
  training.loop.Loop asks `hooks.should_stop()` after every step, writes an atomic checkpoint at that step
  boundary and raises training.loop.Interrupted; RunJob then counts the interruption against its budget and
  hands over to submitit's handler, which calls `checkpoint()`, requeues and exits. Should no step
  boundary come within a grace period (a long evaluation, a stuck step), an alarm hands over anyway
  and the requeued job resumes from the last periodic checkpoint (`checkpoint_every_steps`).
- SIGTERM comes from `scontrol requeue`, from Slurm's own preemption and from scancel, each followed by
  SIGKILL after KillWait; submitit never calls `checkpoint()` for it. The loop stops at the next step
  with a checkpoint written, then the job waits for Slurm to kill it (or for a USR2: `_interrupt()`
  sends SIGTERM, then USR2). If the job is rerun, it resumes from that checkpoint and counts a
  preemption.
"""

from __future__ import annotations

import signal
from typing import Any, Optional

import submitit


class StepBoundarySignals:
    """Signal handling for RunJob: USR2 and SIGTERM only set `stop_requested`; the training loop stops at
    the next step boundary. The class using it provides `_log(message)` and `_hand_over()` (count the
    interruption, then let submitit requeue), and the attributes `_reset` sets: `stop_requested`,
    `_signal`, `_sigterm`, `_submitit_handler`, `_previous_handlers`, `_grace_s`."""

    stop_requested: bool
    _signal: Optional[int]
    _sigterm: bool
    _submitit_handler: Any
    _previous_handlers: dict[int, Any]
    _grace_s: float

    def _install_handlers(self) -> None:
        try:
            usr2 = submitit.JobEnvironment._usr_sig()
            self._previous_handlers = {signal.SIGTERM: signal.getsignal(signal.SIGTERM), usr2: signal.getsignal(usr2),
                                       signal.SIGALRM: signal.getsignal(signal.SIGALRM)}
            current = self._previous_handlers[usr2]
            self._submitit_handler = current if callable(current) else None
            signal.signal(signal.SIGTERM, self._on_sigterm)
            signal.signal(usr2, self._on_usr2)
        except ValueError:  # not the main thread (e.g. submitit's debug executor): no signals to handle
            self._previous_handlers = {}

    def _restore_handlers(self) -> None:
        self._disarm_alarm()
        for signum, handler in self._previous_handlers.items():
            try:
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
            except (ValueError, TypeError):
                pass
        self._previous_handlers = {}

    def _on_sigterm(self, signum, frame) -> None:
        self._sigterm = True
        self.stop_requested = True

    def _on_usr2(self, signum, frame) -> None:
        if self._signal is not None:
            return
        self._signal = signum
        self.stop_requested = True
        try:
            signal.signal(signal.SIGALRM, self._on_alarm)
            signal.setitimer(signal.ITIMER_REAL, self._grace_s)
        except ValueError:
            pass

    def _on_alarm(self, signum, frame) -> None:
        # No step boundary within the grace period: requeue from the last periodic checkpoint.
        self._log(f"no step boundary {self._grace_s:.0f}s after the signal: requeueing from the last checkpoint")
        self._hand_over()

    def _disarm_alarm(self) -> None:
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
        except ValueError:
            pass


def signal_name(signum: Optional[int]) -> str:
    try:
        return signal.Signals(signum).name if signum is not None else "SIGTERM"
    except ValueError:
        return str(signum)
