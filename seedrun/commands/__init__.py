"""What each `seedrun` command does (seedrun.cli holds main() and the argument parser).

    read.py      status, table, logs, list, teacher inspect: read the record, never train
    launch.py    sweep, eval, retry, cancel: record runs and run or submit them
    database.py  sync, db upgrade: the database itself

Each command imports what it needs when it runs, so that the commands that do not train (`status`,
`table`, `list`) start in a fraction of a second without torch; importing these modules costs nothing.
"""

from __future__ import annotations

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """A command line that argparse accepted but that makes no sense (exit 2, one line)."""


def database_url(args) -> str:
    """The run database's URL: --db, else SEEDRUN_DB, else the SQLite file under SEEDRUN_HOME."""
    from seedrun.store.locations import default_db_url

    return args.db or default_db_url()


def db_exists(url: str) -> bool:
    if url.startswith("sqlite:///"):
        import os

        return os.path.exists(url.removeprefix("sqlite:///"))
    return True
