"""Attempts, deadlines and retries on tasks; attempt and superseded flag on indexed events.

``tasks.attempt`` is the fencing token (the newest attempt started or scheduled), ``deadline_at``
and ``retry_at`` are what the scheduler's timers look for; the partial index keeps the deadline
sweep to the tasks still open. Existing rows get attempt 0 and no deadline: rebuild the read
model with ``opspawn replay --swap`` to derive them from history.

Revision ID: 0003_attempts
Revises: 0002_tenancy
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_attempts"
down_revision: str | None = "0002_tenancy"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "tasks", sa.Column("attempt", sa.Integer(), nullable=False, server_default=sa.text("0"))
    )
    op.add_column("tasks", sa.Column("deadline_at", sa.DateTime(timezone=True)))
    op.add_column("tasks", sa.Column("retry_at", sa.DateTime(timezone=True)))
    op.create_index(
        "tasks_open_deadline_idx",
        "tasks",
        ["deadline_at"],
        postgresql_where=sa.text("status IN ('pending', 'running') AND deadline_at IS NOT NULL"),
    )
    op.add_column(
        "task_events",
        sa.Column("attempt", sa.Integer(), comment="the attempt a runner wrote it for, if any"),
    )
    op.add_column(
        "task_events",
        sa.Column(
            "superseded",
            sa.Boolean(),
            nullable=False,
            server_default=sa.false(),
            comment="written by an attempt older than the task's current one; changed nothing",
        ),
    )


def downgrade() -> None:
    op.drop_column("task_events", "superseded")
    op.drop_column("task_events", "attempt")
    op.drop_index("tasks_open_deadline_idx", table_name="tasks")
    for column in ("retry_at", "deadline_at", "attempt"):
        op.drop_column("tasks", column)
