"""The schema of the releases before folder records: sweeps, runs (with settings), sweep_runs, metrics.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    tables = set(sa.inspect(bind).get_table_names())
    if "sweeps" not in tables:
        op.create_table("sweeps", sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("name", sa.String(200), unique=True, nullable=False),
                        sa.Column("ablation", sa.String(100)), sa.Column("path", sa.Text, nullable=False),
                        sa.Column("axes", sa.JSON, nullable=False), sa.Column("created_at", sa.DateTime, nullable=False))
    if "runs" not in tables:
        op.create_table("runs", sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("hash", sa.String(64), unique=True, nullable=False),
                        sa.Column("stage", sa.String(20), nullable=False),
                        sa.Column("state", sa.String(20), nullable=False),
                        sa.Column("attempts", sa.Integer, nullable=False), sa.Column("epoch", sa.Integer, nullable=False),
                        sa.Column("run_dir", sa.Text, nullable=False), sa.Column("config", sa.JSON, nullable=False),
                        sa.Column("settings", sa.JSON), sa.Column("depends_on", sa.String(64)),
                        sa.Column("job_id", sa.String(64)), sa.Column("error", sa.Text),
                        sa.Column("failure_reason", sa.String(40)), sa.Column("provenance", sa.JSON, nullable=False),
                        sa.Column("summary", sa.JSON, nullable=False), sa.Column("created_at", sa.DateTime, nullable=False),
                        sa.Column("started_at", sa.DateTime), sa.Column("finished_at", sa.DateTime))
        op.create_index("ix_runs_state", "runs", ["state"])
    if "sweep_runs" not in tables:
        op.create_table("sweep_runs", sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("sweep_id", sa.Integer, sa.ForeignKey("sweeps.id", ondelete="CASCADE"), nullable=False),
                        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
                        sa.Column("position", sa.Integer, nullable=False), sa.Column("axes", sa.JSON, nullable=False),
                        sa.UniqueConstraint("sweep_id", "run_id"))
        op.create_index("ix_sweep_runs_run_id", "sweep_runs", ["run_id"])
    if "metrics" not in tables:
        op.create_table("metrics", sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
                        sa.Column("name", sa.String(100), nullable=False), sa.Column("value", sa.Float, nullable=False),
                        sa.Column("epoch", sa.Integer), sa.Column("created_at", sa.DateTime, nullable=False))
        op.create_index("ix_metrics_run_name", "metrics", ["run_id", "name"])
    if "settings" not in {column["name"] for column in sa.inspect(bind).get_columns("runs")}:
        # The earliest databases: settings filled from each run's config.
        from seedrun.sweeps.settings import settings_of

        op.add_column("runs", sa.Column("settings", sa.JSON))
        runs = sa.table("runs", sa.column("id", sa.Integer), sa.column("config", sa.JSON), sa.column("settings", sa.JSON))
        for run_id, config in bind.execute(sa.select(runs.c.id, runs.c.config)).all():
            bind.execute(sa.update(runs).where(runs.c.id == run_id).values(settings=settings_of(config or {})))
    op.execute("CREATE INDEX IF NOT EXISTS ix_sweep_runs_order ON sweep_runs (sweep_id, position)")


def downgrade() -> None:
    raise NotImplementedError("seedrun databases are only upgraded")
