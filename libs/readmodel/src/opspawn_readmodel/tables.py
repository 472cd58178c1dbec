"""Read-model tables (SQLAlchemy Core). Alembic migrations create them; see ``migrations/``."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    Uuid,
    false,
    text,
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
    Column("tenant", Text, nullable=False, server_default="default"),
    Column("idempotency_key", Text),
    Column("request_hash", Text),
    Column("options", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("attempt", Integer, nullable=False, server_default=text("0")),
    Column("deadline_at", DateTime(timezone=True)),
    Column("retry_at", DateTime(timezone=True)),
    Column("input_tokens", BigInteger, nullable=False, server_default=text("0")),
    Column("output_tokens", BigInteger, nullable=False, server_default=text("0")),
    CheckConstraint(
        "status IN ('pending', 'running', 'completed', 'failed', 'cancelled')",
        name="tasks_status_valid",
    ),
    Index("tasks_created_at_idx", "created_at", "task_id"),
    Index("tasks_status_created_at_idx", "status", "created_at", "task_id"),
    Index("tasks_tenant_created_at_idx", "tenant", "created_at", "task_id"),
    Index("tasks_tenant_status_created_at_idx", "tenant", "status", "created_at", "task_id"),
    Index("tasks_tenant_type_created_at_idx", "tenant", "task_type", "created_at", "task_id"),
    Index(
        "tasks_open_deadline_idx",
        "deadline_at",
        postgresql_where=text("status IN ('pending', 'running') AND deadline_at IS NOT NULL"),
    ),
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
    Column("attempt", Integer, comment="the attempt a runner wrote it for, if any"),
    Column(
        "superseded",
        Boolean,
        nullable=False,
        server_default=false(),
        comment="written by an attempt older than the task's current one; changed nothing",
    ),
    Index("task_events_task_idx", "task_id", "sequence"),
)

projection_checkpoints = Table(
    "projection_checkpoints",
    metadata,
    Column("projection", Text, primary_key=True),
    Column("last_sequence", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", Text, primary_key=True),
    Column("tenant", Text, nullable=False),
    Column("secret_hash", Text, nullable=False, comment="SHA-256 of the key's secret, hex"),
    Column("name", Text),
    Column("read_only", Boolean, nullable=False, server_default=false()),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    Index("api_keys_tenant_idx", "tenant"),
)
