"""runs.layout on SQLite: a run's process layout ("8x1 gpu", provenance.layout) as a narrow column,
kept equal to its provenance by triggers, for `seedrun status`.

Status lists every run, and pulling the layout out of each run's provenance (1-2 KB of JSON) in its
query cost about a seventh of that query at 10,000 runs (benchmarks/cli_latency.py). Triggers rather
than every writer setting the column: jobs, reconciliation, catch-up and sync write provenance through
the ORM, SQLAlchemy Core and plain sqlite3, and a trigger sees them all. PostgreSQL is left as it is:
its status reads the records through SQLAlchemy, not this query.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_LAYOUT = "json_extract(NEW.provenance, '$.layout')"


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    if "layout" not in {column["name"] for column in sa.inspect(bind).get_columns("runs")}:
        op.add_column("runs", sa.Column("layout", sa.String(40)))
    op.execute("UPDATE runs SET layout = json_extract(provenance, '$.layout')")
    op.execute("DROP TRIGGER IF EXISTS runs_layout_insert")
    op.execute("DROP TRIGGER IF EXISTS runs_layout_update")
    op.execute(f"CREATE TRIGGER runs_layout_insert AFTER INSERT ON runs BEGIN "
               f"UPDATE runs SET layout = {_LAYOUT} WHERE id = NEW.id; END")
    op.execute(f"CREATE TRIGGER runs_layout_update AFTER UPDATE OF provenance ON runs BEGIN "
               f"UPDATE runs SET layout = {_LAYOUT} WHERE id = NEW.id; END")


def downgrade() -> None:
    raise NotImplementedError("seedrun databases are only upgraded")
