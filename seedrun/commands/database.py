"""The commands on the database itself: `sync` (build or repair it from run folders) and `db upgrade`."""

from __future__ import annotations

from seedrun.commands import database_url, db_exists


def cmd_db_upgrade(args) -> int:
    """Bring the database's schema to this release's (seedrun.store.migrations); a no-op when it is."""
    from sqlalchemy import create_engine

    from seedrun.errors import database_error
    from seedrun.store.engine import engine_for
    from seedrun.store.migrate import schema_version
    from seedrun.store.migrations import HEAD

    db_url = database_url(args)
    before = None
    if db_exists(db_url):
        try:
            with create_engine(db_url).connect() as connection:
                before = schema_version(connection)
        except Exception as exc:  # no driver, no server
            raise database_error(db_url, exc) from exc
    engine_for(db_url)  # upgrades it
    print(f"schema {HEAD}" + (" (already)" if before == HEAD else f" (was {before or 'before versions'})"))
    return 0


def cmd_sync(args) -> int:
    """Build or repair the database from run folders (seedrun.store.sync)."""
    import os

    from seedrun.errors import InputError
    from seedrun.store.locations import seedrun_home
    from seedrun.store.sync import sync

    folders = args.folders or [str(seedrun_home() / "runs")]
    for folder in folders:
        if not os.path.isdir(folder):
            raise InputError("sync", "FOLDER", f"{folder} is not a folder (give run folders or folders of them)")
    _, report = sync(database_url(args), folders)
    for line in report:
        print(line)
    return 0
