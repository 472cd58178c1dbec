"""Commands: requests to change a task, sent by the gateway and decided by the scheduler.

A command is an intention, not a fact; the scheduler may turn it into events or refuse it. The
gateway assigns ``task_id`` so it can answer the client at once.

A command reaches the scheduler one of two ways, decided the same way:

- **as a request** (``SubmitTask`` on :attr:`Subjects.submit_requests`): nothing is stored but
  the decision's event. The scheduler answers with :class:`SubmitAnswer` once TaskSubmitted is
  durable, so the gateway's 202 means the task exists; no answer means the client retries with
  the same Idempotency-Key, which is always safe (the task id derives from it, and TaskSubmitted
  is only appended to a task with no events).
- **stored on the commands stream** (any command; ``command_id`` doubles as the ``Nats-Msg-Id``
  so a retried publish is stored once): decided when the scheduler gets to it, even if it was not
  running when the command was sent. The gateway sends ``CancelTask`` this way.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, Self
from uuid import UUID, uuid4

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    TypeAdapter,
    field_validator,
    model_validator,
)

from opspawn_contracts.events import DEFAULT_TENANT, TaskOptions, utc_now

COMMAND_SCHEMA_VERSION = 1
"""The one command schema version this code reads and writes. Commands are short-lived requests,
not history, so nothing upcasts them: a command in another version is refused (the scheduler
dead-letters it, to be re-driven once a scheduler that reads that version runs) rather than
read as if its fields meant what they mean in this version."""


def nul_character_path(
    value: object, path: tuple[str | int, ...] = ()
) -> tuple[str | int, ...] | None:
    """Where ``value`` (JSON-like) holds a NUL character, in a string or a key; ``None`` if
    nowhere.

    PostgreSQL stores no NUL in text or jsonb, so a command carrying one would become an event the
    read model cannot show (the projection steps over it): the task would run but never appear.
    Commands therefore refuse NUL anywhere, and the gateway tells its client before publishing.
    """
    if isinstance(value, str):
        return path if "\x00" in value else None
    items: list[tuple[str | int, object]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                return (*path, key)
            items.append((key, item))
    elif isinstance(value, list | tuple):
        items = list(enumerate(value))
    for key, item in items:
        found = nul_character_path(item, (*path, key))
        if found is not None:
            return found
    return None


class _Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    command_id: UUID = Field(default_factory=uuid4)
    schema_version: int = COMMAND_SCHEMA_VERSION
    task_id: UUID
    issued_at: datetime = Field(default_factory=utc_now)
    correlation_id: UUID

    @field_validator("schema_version")
    @classmethod
    def _readable_version(cls, version: int) -> int:
        if version != COMMAND_SCHEMA_VERSION:
            raise ValueError(
                f"command schema version {version} cannot be read: this code reads version "
                f"{COMMAND_SCHEMA_VERSION}"
            )
        return version

    @model_validator(mode="after")
    def _storable(self) -> Self:
        where = nul_character_path(self.model_dump())
        if where is not None:
            field = ".".join(str(part) for part in where).replace("\x00", "\\u0000")
            raise ValueError(
                f"{field} contains a NUL character (\\u0000), which the read model cannot store"
            )
        return self


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


class SubmitAnswer(BaseModel):
    """The scheduler's answer to a :class:`SubmitTask` sent as a request."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    outcome: Literal["submitted", "already_submitted", "conflict", "refused", "unavailable"]
    """``submitted``: TaskSubmitted is stored now. ``already_submitted``: an earlier delivery of
    this same command stored it. ``conflict``: another command submitted this task (an
    idempotency key reused for another request). ``refused``: the command can never be stored
    (``detail`` says why). ``unavailable``: storing failed for now (NATS); retrying is safe."""
    task_id: UUID | None = None
    """The task the command names (absent when the request was not a readable command)."""
    detail: str | None = None
