"""The job: what runs on a worker (a Slurm node or a local process) for one run.

    run_job      RunJob, the submitit Checkpointable: start, train, stop at a step boundary, requeue, record
    signals      USR2/SIGTERM heard, the attempt stopped at a step boundary
    ranks        several processes per run: global rank 0 records, the others train beside it and leave
    budgets      how many preemptions, timeouts and failures a run may spend
    failures     failure classes (`failure_reason`) and the exceptions that end an attempt
    provenance   where and with what an attempt ran, and what it cost

May import seedrun.store, seedrun.training and seedrun.evaluate (training only inside the attempt, so
that submitting a job imports no torch); nothing outside the launchers imports this package.
"""
