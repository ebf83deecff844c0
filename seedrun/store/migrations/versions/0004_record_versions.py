"""Record versions: runs.attempt and runs.seq, the version of the last folder record the row took in.

A run's folder record (run.json) is ordered by (attempt, seq): the attempt a submission opened, and a
counter its job advances with every write. The database applies a folder record only when its version is
newer than the row's, whatever the clocks of the hosts that wrote them say (seedrun.store.catchup).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {column["name"] for column in sa.inspect(op.get_bind()).get_columns("runs")}
    for name in ("attempt", "seq"):
        if name not in columns:
            op.add_column("runs", sa.Column(name, sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    raise NotImplementedError("seedrun databases are only upgraded")
