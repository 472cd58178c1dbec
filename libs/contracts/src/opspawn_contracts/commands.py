"""Commands: requests to change a task, published by the gateway and decided by the scheduler.

A command is an intention, not a fact; the scheduler may turn it into events or refuse it. The
gateway assigns ``task_id`` so it can answer the client at once; ``command_id`` doubles as the
``Nats-Msg-Id`` so a retried publish is stored once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter

from opspawn_contracts.events import DEFAULT_TENANT, TaskOptions, utc_now


class _Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    command_id: UUID = Field(default_factory=uuid4)
    schema_version: int = 1
    task_id: UUID
    issued_at: datetime = Field(default_factory=utc_now)
    correlation_id: UUID


class SubmitTask(_Command):
    """Submit a task. With an ``idempotency_key`` the gateway derives ``task_id`` from (tenant,
    key) and ``command_id`` from (task id, ``request_hash``): retries of one request are one
    message, and a reused key with another body is a second command for the same task, which the
    scheduler refuses because the task already has its TaskSubmitted."""

    command_type: Literal["submit"] = "submit"
    task_type: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    input_data: dict[str, JsonValue]
    tenant: str = DEFAULT_TENANT
    idempotency_key: str | None = None
    request_hash: str | None = None
    options: TaskOptions = Field(default_factory=TaskOptions)


class CancelTask(_Command):
    """Stop a pending or running task; the scheduler records TaskCancelled, or nothing if the
    task has already finished."""

    command_type: Literal["cancel"] = "cancel"
    reason: str | None = Field(default=None, max_length=1000)


Command = Annotated[SubmitTask | CancelTask, Field(discriminator="command_type")]
"""Any command."""

command_adapter: TypeAdapter[Command] = TypeAdapter(Command)


def encode_command(command: Command) -> bytes:
    return command.model_dump_json().encode()


def decode_command(payload: bytes) -> Command:
    """Parse and validate a command; raises :class:`pydantic.ValidationError` on bad input."""
    return command_adapter.validate_json(payload)
