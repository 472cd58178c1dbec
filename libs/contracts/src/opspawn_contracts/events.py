"""Task lifecycle events: the source of truth, stored in the events stream.

Every event is a frozen envelope (``event_id``, ``event_type``, ``schema_version``, ``task_id``,
``occurred_at``, ``correlation_id``, ``causation_id``) around a typed ``data`` payload, named in the
past tense. ``event_type`` is the discriminator of the :data:`Event` union and the last token of
the event's subject.

Contract for producers: ``event_id`` doubles as the ``Nats-Msg-Id`` (JetStream dedup), so an
event republished after a crash is stored once. ``correlation_id`` is the id of the request that
started the task's story (the submit command); ``causation_id`` is the message that directly caused
this event.

Runner-produced events carry the ``attempt`` that produced them, a fencing token: the scheduler
uses it to tell a superseded attempt's events from the current one's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter


def utc_now() -> datetime:
    return datetime.now(UTC)


class _Data(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Envelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: UUID = Field(default_factory=uuid4)
    schema_version: int = 1
    task_id: UUID
    occurred_at: datetime = Field(default_factory=utc_now)
    correlation_id: UUID
    causation_id: UUID | None = None


# --- payloads ------------------------------------------------------------------------------


class TaskSubmittedData(_Data):
    task_type: str
    input_data: dict[str, JsonValue]


class TaskStartedData(_Data):
    attempt: int = Field(ge=1)
    runner_id: str


class AgentStepCompletedData(_Data):
    """One turn of the agent loop finished; its tool calls are the calls of that turn."""

    attempt: int = Field(ge=1)
    step_index: int = Field(ge=0)
    tool_call_ids: list[str] = Field(default_factory=list)
    message: str | None = None


class ToolCallRequestedData(_Data):
    attempt: int = Field(ge=1)
    step_index: int = Field(ge=0)
    call_id: str
    tool: str
    arguments: dict[str, JsonValue]


class ToolCallCompletedData(_Data):
    """Outcome of one tool call: exactly one of ``result`` (``ok``) or ``error`` is meaningful."""

    attempt: int = Field(ge=1)
    step_index: int = Field(ge=0)
    call_id: str
    tool: str
    ok: bool
    result: JsonValue = None
    error: str | None = None
    duration_ms: float = Field(ge=0)


class TaskCompletedData(_Data):
    attempt: int = Field(ge=1)
    output_data: dict[str, JsonValue]


class TaskFailedData(_Data):
    attempt: int = Field(ge=0)
    error_message: str
    output_data: dict[str, JsonValue] | None = None
    """What the steps before the failure produced, so a client can see how far it got."""


class TaskCancelledData(_Data):
    reason: str | None = None


# --- events --------------------------------------------------------------------------------


class TaskSubmitted(_Envelope):
    event_type: Literal["TaskSubmitted"] = "TaskSubmitted"
    data: TaskSubmittedData


class TaskStarted(_Envelope):
    event_type: Literal["TaskStarted"] = "TaskStarted"
    data: TaskStartedData


class AgentStepCompleted(_Envelope):
    event_type: Literal["AgentStepCompleted"] = "AgentStepCompleted"
    data: AgentStepCompletedData


class ToolCallRequested(_Envelope):
    event_type: Literal["ToolCallRequested"] = "ToolCallRequested"
    data: ToolCallRequestedData


class ToolCallCompleted(_Envelope):
    event_type: Literal["ToolCallCompleted"] = "ToolCallCompleted"
    data: ToolCallCompletedData


class TaskCompleted(_Envelope):
    event_type: Literal["TaskCompleted"] = "TaskCompleted"
    data: TaskCompletedData


class TaskFailed(_Envelope):
    event_type: Literal["TaskFailed"] = "TaskFailed"
    data: TaskFailedData


class TaskCancelled(_Envelope):
    event_type: Literal["TaskCancelled"] = "TaskCancelled"
    data: TaskCancelledData


Event = Annotated[
    TaskSubmitted
    | TaskStarted
    | AgentStepCompleted
    | ToolCallRequested
    | ToolCallCompleted
    | TaskCompleted
    | TaskFailed
    | TaskCancelled,
    Field(discriminator="event_type"),
]
"""Any task event; validate with :data:`event_adapter`."""

event_adapter: TypeAdapter[Event] = TypeAdapter(Event)

TERMINAL_EVENT_TYPES: frozenset[str] = frozenset({"TaskCompleted", "TaskFailed", "TaskCancelled"})


def encode_event(event: Event) -> bytes:
    return event.model_dump_json().encode()


def decode_event(payload: bytes) -> Event:
    """Parse and validate an event; raises :class:`pydantic.ValidationError` on bad input."""
    return event_adapter.validate_json(payload)
