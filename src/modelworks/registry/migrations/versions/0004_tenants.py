"""tenants: model names unique per tenant, declared tenants' settings, runs carry their tenant

Revision ID: 0004_tenants
Revises: 0003_http
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_tenants"
down_revision = "0003_http"
branch_labels = None
depends_on = None

# 0001 left the unique constraint on models.name unnamed: SQLite reflects it under this
# convention's name, PostgreSQL named it models_name_key.
_UQ = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _drop_global_name_unique() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("models", naming_convention=_UQ) as batch_op:
            batch_op.drop_constraint("uq_models_name", type_="unique")
            batch_op.create_unique_constraint("uq_models_tenant_name", ["tenant", "name"])
        return
    op.drop_constraint("models_name_key", "models", type_="unique")
    op.create_unique_constraint("uq_models_tenant_name", "models", ["tenant", "name"])


def upgrade() -> None:
    _drop_global_name_unique()
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("display_name", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("weight", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("max_queued_runs", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("max_artifact_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("settings", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("tenant", sa.String(length=128), nullable=False, server_default="default")
        )
        batch_op.add_column(sa.Column("reason", sa.Text(), nullable=True))
        batch_op.create_index("ix_runs_status_tenant", ["status", "tenant"], unique=False)
    op.execute(
        "UPDATE runs SET tenant = "
        "(SELECT models.tenant FROM models WHERE models.id = runs.model_id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_status_tenant")
        batch_op.drop_column("reason")
        batch_op.drop_column("tenant")
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        for column in (
            "updated_at",
            "settings",
            "max_artifact_bytes",
            "max_queued_runs",
            "weight",
            "display_name",
        ):
            batch_op.drop_column(column)
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("models", schema=None) as batch_op:
            batch_op.drop_constraint("uq_models_tenant_name", type_="unique")
            batch_op.create_unique_constraint("uq_models_name", ["name"])
        return
    op.drop_constraint("uq_models_tenant_name", "models", type_="unique")
    op.create_unique_constraint("models_name_key", "models", ["name"])
