"""runs.device_kind and runs.device_hours on SQLite: the hours a run used, kept equal to its provenance
by triggers, for `seedrun status`'s hours per sweep.

A run's provenance holds them (gpu_hours of the GPUs it trained on; on CPUs wall_hours times its
processes). Summed per sweep out of 10,000 runs' provenance they cost status more than its whole budget
(benchmarks/cli_latency.py), so SQLite keeps them in two narrow columns, as it keeps runs.layout (0003):
triggers see every writer. PostgreSQL's status sums them from the provenance.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_KIND = "CASE WHEN coalesce(json_extract({p}, '$.gpus_used'), 0) > 0 THEN 'gpu' ELSE 'cpu' END"
_HOURS = ("CASE WHEN coalesce(json_extract({p}, '$.gpus_used'), 0) > 0 THEN json_extract({p}, '$.gpu_hours') "
          "ELSE json_extract({p}, '$.wall_hours') * coalesce(json_extract({p}, '$.training_ranks'), 1) END")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    if "device_kind" not in {column["name"] for column in sa.inspect(bind).get_columns("runs")}:
        op.add_column("runs", sa.Column("device_kind", sa.String(8)))
        op.add_column("runs", sa.Column("device_hours", sa.Float))
    op.execute(f"UPDATE runs SET device_kind = {_KIND.format(p='provenance')}, "
               f"device_hours = {_HOURS.format(p='provenance')}")
    kind, hours = _KIND.format(p="NEW.provenance"), _HOURS.format(p="NEW.provenance")
    for trigger, when in (("runs_hours_insert", "AFTER INSERT ON runs"),
                          ("runs_hours_update", "AFTER UPDATE OF provenance ON runs")):
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute(f"CREATE TRIGGER {trigger} {when} BEGIN UPDATE runs SET device_kind = {kind}, "
                   f"device_hours = {hours} WHERE id = NEW.id; END")


def downgrade() -> None:
    raise NotImplementedError("seedrun databases are only upgraded")
