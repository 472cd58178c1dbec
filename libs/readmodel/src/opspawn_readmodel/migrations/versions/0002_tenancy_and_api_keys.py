"""Tenancy, idempotency and per-task options on tasks; hashed API keys.

Existing tasks belong to the tenant ``default`` (the tenant of unauthenticated development use).
The listing indexes lead with the tenant, because every read is scoped to one tenant.

Revision ID: 0002_tenancy
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0002_tenancy"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("tenant", sa.Text(), nullable=False, server_default="default"))
    op.add_column("tasks", sa.Column("idempotency_key", sa.Text()))
    op.add_column("tasks", sa.Column("request_hash", sa.Text()))
    op.add_column(
        "tasks",
        sa.Column("options", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
    )
    op.create_index("tasks_tenant_created_at_idx", "tasks", ["tenant", "created_at", "task_id"])
    op.create_index(
        "tasks_tenant_status_created_at_idx",
        "tasks",
        ["tenant", "status", "created_at", "task_id"],
    )
    op.create_index(
        "tasks_tenant_type_created_at_idx",
        "tasks",
        ["tenant", "task_type", "created_at", "task_id"],
    )
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.Text(), primary_key=True),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("secret_hash", sa.Text(), nullable=False),
        sa.Column("name", sa.Text()),
        sa.Column("read_only", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )
    op.create_index("api_keys_tenant_idx", "api_keys", ["tenant"])


def downgrade() -> None:
    op.drop_table("api_keys")
    op.drop_index("tasks_tenant_type_created_at_idx", table_name="tasks")
    op.drop_index("tasks_tenant_status_created_at_idx", table_name="tasks")
    op.drop_index("tasks_tenant_created_at_idx", table_name="tasks")
    for column in ("options", "request_hash", "idempotency_key", "tenant"):
        op.drop_column("tasks", column)
