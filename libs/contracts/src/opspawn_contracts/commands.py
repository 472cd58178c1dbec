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

from opspawn_contracts.events import utc_now


class _Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    command_id: UUID = Field(default_factory=uuid4)
    schema_version: int = 1
    task_id: UUID
    issued_at: datetime = Field(default_factory=utc_now)
    correlation_id: UUID


class SubmitTask(_Command):
    command_type: Literal["submit"] = "submit"
    task_type: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    input_data: dict[str, JsonValue]


Command = Annotated[SubmitTask, Field(discriminator="command_type")]
"""Any command; a union as soon as there is more than one (cancel comes next)."""

command_adapter: TypeAdapter[Command] = TypeAdapter(Command)


def encode_command(command: Command) -> bytes:
    return command.model_dump_json().encode()


def decode_command(payload: bytes) -> Command:
    """Parse and validate a command; raises :class:`pydantic.ValidationError` on bad input."""
    return command_adapter.validate_json(payload)
