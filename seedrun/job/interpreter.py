"""A job's process and the Python interpreter: what a job's start and end cost with torch loaded, less.

Used by seedrun.job.run_job (rank 0, and a run of one process) and seedrun.job.ranks (the other ranks);
collector_paused also by `status` (seedrun.commands.read), where benchmarks/cli_latency.py measured it.
Measured per job, not per command: a second or two of every job's start and end on 2 cores, which a
sweep of many short runs (and the test suite) pays each time.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os


@contextlib.contextmanager
def collector_paused():
    """The cyclic garbage collector paused, then left as it was found. For torch's import, which allocates
    some million long-lived objects: collections triggered by the allocations walk the growing heap again
    and again, about 1 s of every training job's start on 2 cores, and nothing the import makes is garbage."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# The module that trains (or evaluates) each stage.
_STAGE_MODULES = {"pretrain": "seedrun.training.pretrain", "distill": "seedrun.training.distill",
                  "eval": "seedrun.evaluate.run"}


def import_stage(stage: str) -> None:
    """Import torch and a stage's code with the collector paused (collector_paused says why), and for a
    training torch._dynamo too, which torch.optim imports at the first optimizer anyway. The callers
    (seedrun.job.run_job, seedrun.job.ranks) then import what they call as usual, from the module cache."""
    with collector_paused():
        if stage != "eval":
            importlib.import_module("torch._dynamo")
        importlib.import_module("seedrun.training.loop")
        importlib.import_module(_STAGE_MODULES.get(stage, _STAGE_MODULES["distill"]))


def ending_process() -> None:
    """In a job's own process (submitit's, which writes the result and exits once the job returns): freeze
    the objects alive now, so that the interpreter's shutdown does not walk them for garbage cycles again and
    again. With torch loaded that shutdown took about 2 s of every job on 2 cores (0.7 s frozen), a run's end
    and the next run's start, its dependants' on Slurm, that much later. Objects are still freed by their
    reference counts; the operating system takes back the rest. Not in any other process (a test, a notebook
    calling a RunJob): there frozen objects would never be collected."""
    if os.environ.get("SUBMITIT_FOLDER"):  # set by submitit's job runner (submitit.core.submission.process_job)
        gc.freeze()
