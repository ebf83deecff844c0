"""Folder records and experiments: runs.updated_at (when the row last took in a change, against a run
folder's run.json) and runs.experiment (the config hash without the seed, filled from each config);
SQLite's covering grouping index with the experiment in it.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from seedrun.store.experiments import experiment_of

    bind = op.get_bind()
    columns = {column["name"] for column in sa.inspect(bind).get_columns("runs")}
    if "updated_at" not in columns:
        op.add_column("runs", sa.Column("updated_at", sa.Float))
    if "experiment" not in columns:
        op.add_column("runs", sa.Column("experiment", sa.String(64)))
    runs = sa.table("runs", sa.column("id", sa.Integer), sa.column("config", sa.JSON),
                    sa.column("experiment", sa.String(64)))
    for run_id, config in bind.execute(sa.select(runs.c.id, runs.c.config).where(runs.c.experiment.is_(None))).all():
        bind.execute(sa.update(runs).where(runs.c.id == run_id).values(experiment=experiment_of(config or {})))
    if bind.dialect.name == "sqlite":
        # Covering index for `seedrun table`'s one query (seedrun.store.groups.load_groups). SQLite only:
        # PostgreSQL cannot put JSON columns in a B-tree index.
        op.execute("DROP INDEX IF EXISTS ix_runs_grouping")
        op.execute("CREATE INDEX ix_runs_grouping ON runs (stage, settings, experiment, state, finished_at, summary)")


def downgrade() -> None:
    raise NotImplementedError("seedrun databases are only upgraded")
