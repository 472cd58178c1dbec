"""Read-model tables (SQLAlchemy Core). Alembic migrations create them; see ``migrations/``."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

tasks = Table(
    "tasks",
    metadata,
    Column("task_id", Uuid, primary_key=True),
    Column("task_type", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("input_data", JSONB, nullable=False),
    Column("output_data", JSONB),
    Column("error_message", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("last_sequence", BigInteger, nullable=False, comment="stream sequence of last event"),
    CheckConstraint(
        "status IN ('pending', 'running', 'completed', 'failed', 'cancelled')",
        name="tasks_status_valid",
    ),
    Index("tasks_created_at_idx", "created_at", "task_id"),
    Index("tasks_status_created_at_idx", "status", "created_at", "task_id"),
)

task_events = Table(
    "task_events",
    metadata,
    Column("sequence", BigInteger, primary_key=True, autoincrement=False),
    Column("task_id", Uuid, nullable=False),
    Column("event_id", Uuid, nullable=False, unique=True),
    Column("event_type", Text, nullable=False),
    Column("schema_version", Integer, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("payload", JSONB, nullable=False, comment="the whole event envelope as stored"),
    Index("task_events_task_idx", "task_id", "sequence"),
)

projection_checkpoints = Table(
    "projection_checkpoints",
    metadata,
    Column("projection", Text, primary_key=True),
    Column("last_sequence", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
