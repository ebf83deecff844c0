"""The database's schema version, and upgrading it with Alembic (seedrun.store.migrations).

`schema_version` reads alembic_version with plain SQL (no Alembic import): a database at HEAD costs
one query. `upgrade` runs the migrations from wherever the database stands to HEAD.
"""

from __future__ import annotations

import sys
from typing import Optional

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from seedrun.store.migrations import HEAD


def schema_version(connection: Connection) -> Optional[str]:
    """The database's schema revision; None before versions (or for an empty database)."""
    if "alembic_version" not in inspect(connection).get_table_names():
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine, say: bool = True) -> tuple[Optional[str], str]:
    """Bring the database to HEAD; (the version it had, HEAD). With `say`, one line on stderr when a
    database that held tables was upgraded (a new one is just created)."""
    with engine.connect() as connection:
        before = schema_version(connection)
        had_tables = bool(set(inspect(connection).get_table_names()) - {"alembic_version"})
    if before == HEAD:
        return before, HEAD
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "seedrun.store:migrations")
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    if say and had_tables:
        shown = engine.url.render_as_string(hide_password=True)
        print(f"seedrun: upgraded the run database {shown} from schema {before or 'before versions'} to {HEAD}",
              file=sys.stderr)
    return before, HEAD
