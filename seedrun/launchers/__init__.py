"""Getting runs executed and keeping track of them: locally or as Slurm array jobs.

    local        run_local: each run in a local process through submitit's LocalExecutor, with live progress
    slurm        submit_slurm: runs -> array jobs (dependencies, throttle, resources) through submitit
    cluster      what Slurm says: batched sacct/squeue queries, scancel, array limits
    reconcile    in-flight runs brought up to date with their jobs (used by `seedrun status`)
    control      `seedrun retry` and `seedrun cancel`

Imports no torch (the job does, when it trains). May import seedrun.store, seedrun.sweeps and seedrun.job.
"""
