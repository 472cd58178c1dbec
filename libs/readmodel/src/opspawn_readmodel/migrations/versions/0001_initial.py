"""Initial read model: tasks, the per-task event index, projection checkpoints.

Revision ID: 0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("task_id", sa.Uuid(), primary_key=True),
        sa.Column("task_type", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("input_data", JSONB(), nullable=False),
        sa.Column("output_data", JSONB()),
        sa.Column("error_message", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "last_sequence", sa.BigInteger(), nullable=False,
            comment="stream sequence of last event",
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'completed', 'failed', 'cancelled')",
            name="tasks_status_valid",
        ),
    )  # fmt: skip
    op.create_index("tasks_created_at_idx", "tasks", ["created_at", "task_id"])
    op.create_index("tasks_status_created_at_idx", "tasks", ["status", "created_at", "task_id"])
    op.create_table(
        "task_events",
        sa.Column("sequence", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False, unique=True),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", JSONB(), nullable=False, comment="the whole event envelope as stored"),
    )
    op.create_index("task_events_task_idx", "task_events", ["task_id", "sequence"])
    op.create_table(
        "projection_checkpoints",
        sa.Column("projection", sa.Text(), primary_key=True),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("projection_checkpoints")
    op.drop_table("task_events")
    op.drop_table("tasks")
