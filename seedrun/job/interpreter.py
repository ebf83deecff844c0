"""A job's process and the Python interpreter: what a job's start and end cost with torch loaded, less.

Used by seedrun.job.run_job (rank 0, and a run of one process) and seedrun.job.ranks (the other ranks).
"""

from __future__ import annotations

import contextlib
import gc
import os


@contextlib.contextmanager
def collector_paused():
    """The cyclic garbage collector paused, then left as it was found. For torch's import, which allocates
    some million long-lived objects: collections triggered by the allocations walk the growing heap again
    and again, about 1 s of every training job's start on 2 cores, and nothing the import makes is garbage.
    For the reading commands too (seedrun.commands.read): 10,000 runs' rows hold no cycles."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def ending_process() -> None:
    """In a job's own process (submitit's, which writes the result and exits once the job returns): freeze
    the objects alive now, so that the interpreter's shutdown does not walk them for garbage cycles again and
    again. With torch loaded that shutdown took about 2 s of every job on 2 cores (0.7 s frozen), a run's end
    and the next run's start, its dependants' on Slurm, that much later. Objects are still freed by their
    reference counts; the operating system takes back the rest. Not in any other process (a test, a notebook
    calling a RunJob): there frozen objects would never be collected."""
    if os.environ.get("SUBMITIT_FOLDER"):  # set by submitit's job runner (submitit.core.submission.process_job)
        gc.freeze()
