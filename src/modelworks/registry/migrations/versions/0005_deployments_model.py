"""deployments: an index on (model_id, id) for one model's deployments, newest first

`mw show` and `GET /api/v1/models/{tenant}/{name}` read a model's deployments by model_id;
the only index was (env, model_id), so that read scanned the table (90,000 rows at 90,000
models: a cost that grew with the fleet).

Revision ID: 0005_deployments_model
Revises: 0004_tenants
"""

from __future__ import annotations

from alembic import op

revision = "0005_deployments_model"
down_revision = "0004_tenants"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_deployments_model", "deployments", ["model_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_deployments_model", table_name="deployments")
