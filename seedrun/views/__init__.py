"""What users read about their runs, other than tables: `seedrun status` and `seedrun logs`.

Imports no torch and, unless a run's state must change, no SQLAlchemy ORM. May import seedrun.store
and seedrun.launchers (reconciliation).
"""
