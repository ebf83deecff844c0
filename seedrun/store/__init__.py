"""Where runs and metrics are recorded, and the one owner of a run's state.

    states       run states, the allowed transitions, and the one function that moves a run between them
    locations    SEEDRUN_HOME and the default database URL
    schema       the SQLAlchemy tables (sweeps, runs, sweep_runs, metrics)
    engine       engines and sessions (SQLite in WAL mode by default, any SQLAlchemy URL)
    plan         a sweep's runs recorded, and their states read back
    records      the fast read path: plain SQL, no ORM (status, logs)
    groups       runs grouped by setting for tables (one SQL GROUP BY)

This package imports nothing heavy itself; states, locations and records import no SQLAlchemy ORM
and no torch, so `seedrun status` and `seedrun table` start fast. May import seedrun.sweeps.
"""
