"""How an attempt ends when it does not finish: the failure classes recorded as `failure_reason`,
and the exceptions the job uses to leave an attempt."""

from __future__ import annotations

import traceback


def classify_failure(exc: BaseException) -> str:
    if isinstance(getattr(exc, "failure_reason", None), str):  # another rank's, classified there (seedrun.job.ranks)
        return exc.failure_reason  # type: ignore[attr-defined]
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return "out_of_memory"
    if isinstance(exc, FloatingPointError) or "nan" in text.lower().split():
        return "nan_loss"
    if type(exc).__name__ == "DataError":  # seedrun.data.formats: too many unreadable images
        return "data_error"
    return "exception"



class Stopped(Exception):
    """Training stopped at a step boundary on request; a checkpoint has been written."""



class LeaseLost(Exception):
    """Another attempt holds the run now (seedrun.job.attempt_lease): this one stops and writes nothing."""



class AttemptOver(BaseException):
    """The attempt is over and already recorded: leave without being recorded again as a failure."""



def traceback_tail(exc: BaseException, lines: int = 8) -> str:
    return "\n".join("".join(traceback.format_exception(exc)).rstrip().splitlines()[-lines:])


