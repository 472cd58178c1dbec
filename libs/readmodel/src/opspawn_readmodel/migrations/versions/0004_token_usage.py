"""Token usage on tasks: the tokens of the model replies a task's attempts recorded.

Existing rows get 0: rebuild the read model with ``opspawn replay --swap`` to derive the totals
from history (streams written before model replies were recorded stay at 0).

Revision ID: 0004_tokens
Revises: 0003_attempts
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_tokens"
down_revision: str | None = "0003_attempts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for column in ("input_tokens", "output_tokens"):
        op.add_column(
            "tasks",
            sa.Column(column, sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        )


def downgrade() -> None:
    for column in ("output_tokens", "input_tokens"):
        op.drop_column("tasks", column)
