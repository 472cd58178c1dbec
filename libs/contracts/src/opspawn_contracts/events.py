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

A runner records a task's steps as its journal, one record per step boundary: the step's intent
(every tool call with its arguments) before any call runs, and the calls' outcomes once they have
run. The first step's intent rides in the attempt's ``TaskStarted`` (schema version 2), so the
claim and the first intent are one durable write; later steps are ``StepStarted``; every step's
outcomes are ``StepCompleted``. An attempt that needs no record before it ends (it ran only
steps whose calls change nothing outside the run, see :attr:`TaskCompletedData.started`) is one
durable write: its terminal event carries the claim and the steps. Streams written before
TaskStarted version 2 hold one ``ToolCallRequested``
and ``ToolCallCompleted`` per call and an ``AgentStepCompleted`` per step instead: those types are
still read (and projected as they were), never written.

``schema_version`` is the version of the event type's stored shape: :func:`decode_event` upcasts
older versions through :mod:`opspawn_contracts.upcasting` and refuses versions it cannot read.
"""

from __future__ import annotations

import json
import typing
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID, uuid4

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from opspawn_contracts.upcasting import UPCASTERS, Upcasters


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


DEFAULT_TENANT = "default"
"""The tenant of tasks submitted without authentication (development mode, old events)."""

MAX_TASK_TIMEOUT_SECONDS = 7 * 24 * 3600
ALLOWED_TOOL_PATTERN = r"^[A-Za-z0-9_-]+\.(\*|[A-Za-z0-9_./-]+)$"
"""A tool name (``math.add``) or every tool of a namespace (``time.*``)."""
MAX_TASK_ATTEMPTS = 100


class TaskOptions(_Data):
    """Per-task settings a client may choose at submission; ``None`` means the system default.

    ``allowed_tools`` entries are tool names (``math.add``) or a whole namespace (``time.*``);
    ``None`` allows every tool, so an empty list is not a valid value.
    """

    timeout_seconds: float | None = Field(default=None, gt=0, le=MAX_TASK_TIMEOUT_SECONDS)
    max_attempts: int | None = Field(default=None, ge=1, le=MAX_TASK_ATTEMPTS)
    allowed_tools: list[Annotated[str, StringConstraints(pattern=ALLOWED_TOOL_PATTERN)]] | None = (
        Field(default=None, min_length=1)
    )
    max_total_tokens: int | None = Field(default=None, ge=1, exclude_if=lambda value: value is None)
    """The most tokens the model's replies may use over the whole task (every attempt): the
    reply that goes past it is not acted on and the task fails saying so. Left out when unset."""


class TaskSubmittedData(_Data):
    task_type: str
    input_data: dict[str, JsonValue]
    tenant: str = DEFAULT_TENANT
    """Who owns the task: the tenant of the API key that submitted it."""
    idempotency_key: str | None = None
    request_hash: str | None = None
    """Digest of the submitted request, so a reused idempotency key with another body is told
    apart from a retry of the same request."""
    options: TaskOptions = Field(default_factory=TaskOptions)
    attempts_allowed: int | None = Field(
        default=None, ge=1, le=MAX_TASK_ATTEMPTS, exclude_if=lambda value: value is None
    )
    """How many attempts the task gets: ``options.max_attempts``, else the scheduler's default,
    decided once at submission (the runner that takes the first attempt from this event needs
    it). Absent from events written before it existed: read as ``options.max_attempts`` or 1."""


class ModelReplyRecord(_Data):
    """What the model said about the reply that decided a step (or gave the final answer):
    which model, why it stopped, and the tokens of every request that decision took."""

    model: str | None = Field(default=None, exclude_if=lambda value: value is None)
    finish_reason: str | None = Field(default=None, exclude_if=lambda value: value is None)
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)


class ToolCallIntent(_Data):
    """A tool call the agent is about to make, recorded before it runs."""

    call_id: str
    tool: str
    arguments: dict[str, JsonValue]


class ToolCallOutcome(_Data):
    """How one tool call ended: exactly one of ``result`` (``ok``) or ``error`` is meaningful."""

    call_id: str
    tool: str
    ok: bool
    result: JsonValue = None
    error: str | None = None
    duration_ms: float = Field(ge=0)


class StepIntent(_Data):
    """What step ``step_index`` of the agent loop is about to do."""

    step_index: int = Field(ge=0)
    calls: list[ToolCallIntent] = Field(min_length=1)
    message: str | None = Field(default=None, exclude_if=lambda value: value is None)
    """What the model said alongside its calls, if anything."""
    model_reply: ModelReplyRecord | None = Field(
        default=None, exclude_if=lambda value: value is None
    )
    """The model reply that decided the step; absent for a plan's steps (and in streams
    written before it existed)."""


class TaskStartedData(_Data):
    attempt: int = Field(ge=1)
    runner_id: str
    supersedes_attempt: int | None = Field(
        default=None, ge=1, exclude_if=lambda value: value is None
    )
    """Set when a runner takes over a task whose work came back to the queue (its previous
    runner stopped heart-beating or gave it back): the attempt this one fences off. Left out of
    the stored event when unset."""
    first_step: StepIntent | None = Field(default=None, exclude_if=lambda value: value is None)
    """The attempt's first step, recorded with the claim (version 2); ``None`` when the run
    ended before its first tool call, or in version 1 events."""


class StepStartedData(_Data):
    """A step after the attempt's first one is about to run its calls."""

    attempt: int = Field(ge=1)
    step: StepIntent


class StepCompletedData(_Data):
    """A step's calls have run (the last one possibly ending the run by failing)."""

    attempt: int = Field(ge=1)
    step_index: int = Field(ge=0)
    outcomes: list[ToolCallOutcome]


class AgentStepCompletedData(_Data):
    """One turn of the agent loop finished; its tool calls are the calls of that turn.
    (Streams before TaskStarted v2; no longer written.)"""

    attempt: int = Field(ge=1)
    step_index: int = Field(ge=0)
    tool_call_ids: list[str] = Field(default_factory=list)
    message: str | None = None


class ToolCallRequestedData(_Data):
    """(Streams before TaskStarted v2; no longer written.)"""

    attempt: int = Field(ge=1)
    step_index: int = Field(ge=0)
    call_id: str
    tool: str
    arguments: dict[str, JsonValue]


class ToolCallCompletedData(ToolCallOutcome):
    """Outcome of one tool call, recorded on its own (streams before TaskStarted v2; no longer
    written)."""

    attempt: int = Field(ge=1)
    step_index: int = Field(ge=0)


class StepOutcomes(_Data):
    """The outcomes of step ``step_index``'s calls, carried by the event that ends the attempt
    when nothing else was recorded between the step's end and the attempt's (one durable write
    instead of two; the same content as a StepCompleted)."""

    step_index: int = Field(ge=0)
    outcomes: list[ToolCallOutcome]


class TaskCompletedData(_Data):
    attempt: int = Field(ge=1)
    output_data: dict[str, JsonValue]
    final_reply: ModelReplyRecord | None = Field(
        default=None, exclude_if=lambda value: value is None
    )
    """The model reply that gave the final answer (a model task only)."""
    last_step: StepOutcomes | None = Field(default=None, exclude_if=lambda value: value is None)
    """The last step's outcomes, when they were not recorded in a StepCompleted of their own."""
    started: TaskStartedData | None = Field(default=None, exclude_if=lambda value: value is None)
    """The attempt's claim, when it was not stored as a TaskStarted of its own (version 2): the
    attempt recorded nothing before it ended, because nothing it ran needed a record first (no
    step, or one whose calls all ran inline, see ``agentkit.tools.registry``). The event then
    stands for the TaskStarted it carries, followed by itself."""


class TaskFailedData(_Data):
    attempt: int = Field(ge=0)
    error_message: str
    output_data: dict[str, JsonValue] | None = None
    """What the steps before the failure produced, so a client can see how far it got."""
    last_step: StepOutcomes | None = Field(default=None, exclude_if=lambda value: value is None)
    """The last step's outcomes, when they were not recorded in a StepCompleted of their own."""
    started: TaskStartedData | None = Field(default=None, exclude_if=lambda value: value is None)
    """The attempt's claim, when it was not stored as a TaskStarted of its own (version 2): the
    attempt recorded nothing before it ended, because nothing it ran needed a record first (no
    step, or one whose calls all ran inline, see ``agentkit.tools.registry``). The event then
    stands for the TaskStarted it carries, followed by itself."""


class TaskCancelledData(_Data):
    reason: str | None = None


class TaskAttemptFailedData(_Data):
    """An attempt failed in a way another attempt might not; the scheduler decides what next
    (TaskRetryScheduled, or TaskFailed once the task's attempts are used up)."""

    attempt: int = Field(ge=1)
    error_message: str
    output_data: dict[str, JsonValue] | None = None
    last_step: StepOutcomes | None = Field(default=None, exclude_if=lambda value: value is None)
    """The last step's outcomes, when they were not recorded in a StepCompleted of their own."""
    started: TaskStartedData | None = Field(default=None, exclude_if=lambda value: value is None)
    """The attempt's claim, when it was not stored as a TaskStarted of its own (version 2): the
    attempt recorded nothing before it ended, because nothing it ran needed a record first (no
    step, or one whose calls all ran inline, see ``agentkit.tools.registry``). The event then
    stands for the TaskStarted it carries, followed by itself."""


class TaskRetryScheduledData(_Data):
    """The scheduler's decision to run the task again: ``attempt`` is the attempt to come."""

    attempt: int = Field(ge=2)
    reason: str
    """Why the previous attempt is being retried (its error)."""
    delay_seconds: float = Field(ge=0)
    """The backoff chosen (exponential in the attempt number, with jitter)."""
    not_before: datetime
    """When the next attempt is queued."""


class TaskTimedOutData(_Data):
    """The task's deadline passed before it finished; the task is failed."""

    attempt: int = Field(ge=0)
    """The attempt running (or last run) when the deadline passed; 0 if none had started."""
    timeout_seconds: float = Field(gt=0)
    reason: str


# --- events --------------------------------------------------------------------------------


class TaskSubmitted(_Envelope):
    event_type: Literal["TaskSubmitted"] = "TaskSubmitted"
    data: TaskSubmittedData


class TaskStarted(_Envelope):
    event_type: Literal["TaskStarted"] = "TaskStarted"
    schema_version: int = 2
    data: TaskStartedData


class StepStarted(_Envelope):
    event_type: Literal["StepStarted"] = "StepStarted"
    data: StepStartedData


class StepCompleted(_Envelope):
    event_type: Literal["StepCompleted"] = "StepCompleted"
    data: StepCompletedData


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
    schema_version: int = 2
    data: TaskCompletedData


class TaskFailed(_Envelope):
    event_type: Literal["TaskFailed"] = "TaskFailed"
    schema_version: int = 2
    data: TaskFailedData


class TaskCancelled(_Envelope):
    event_type: Literal["TaskCancelled"] = "TaskCancelled"
    data: TaskCancelledData


class TaskAttemptFailed(_Envelope):
    event_type: Literal["TaskAttemptFailed"] = "TaskAttemptFailed"
    schema_version: int = 2
    data: TaskAttemptFailedData


class TaskRetryScheduled(_Envelope):
    event_type: Literal["TaskRetryScheduled"] = "TaskRetryScheduled"
    data: TaskRetryScheduledData


class TaskTimedOut(_Envelope):
    event_type: Literal["TaskTimedOut"] = "TaskTimedOut"
    data: TaskTimedOutData


Event = Annotated[
    TaskSubmitted
    | TaskStarted
    | StepStarted
    | StepCompleted
    | AgentStepCompleted
    | ToolCallRequested
    | ToolCallCompleted
    | TaskCompleted
    | TaskFailed
    | TaskCancelled
    | TaskAttemptFailed
    | TaskRetryScheduled
    | TaskTimedOut,
    Field(discriminator="event_type"),
]
"""Any task event; validate with :data:`event_adapter`."""

event_adapter: TypeAdapter[Event] = TypeAdapter(Event)

TERMINAL_EVENT_TYPES: frozenset[str] = frozenset(
    {"TaskCompleted", "TaskFailed", "TaskCancelled", "TaskTimedOut"}
)

CURRENT_SCHEMA_VERSIONS: dict[str, int] = {
    member.model_fields["event_type"].default: member.model_fields["schema_version"].default
    for member in typing.get_args(typing.get_args(Event)[0])
}
"""The schema version each event type is written in today; older ones are upcast on read."""


@UPCASTERS.register("TaskStarted", from_version=1)
def _task_started_without_first_step(stored: dict[str, Any]) -> dict[str, Any]:
    """Version 2 added ``data.first_step``; a version 1 TaskStarted recorded no step."""
    return {**stored, "schema_version": 2}


@UPCASTERS.register("TaskCompleted", from_version=1)
@UPCASTERS.register("TaskFailed", from_version=1)
@UPCASTERS.register("TaskAttemptFailed", from_version=1)
def _attempt_end_without_claim(stored: dict[str, Any]) -> dict[str, Any]:
    """Version 2 added ``data.started``; in version 1 every attempt's claim was a TaskStarted."""
    return {**stored, "schema_version": 2}


def upcast_stored(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored event's JSON object brought to its type's current version (for readers that
    serve stored events as they are, e.g. from the read model's ``task_events``)."""
    if stored.get("schema_version", 1) == CURRENT_SCHEMA_VERSIONS.get(stored.get("event_type", "")):
        return stored
    return UPCASTERS.upcast(stored, CURRENT_SCHEMA_VERSIONS)


def encode_event(event: Event) -> bytes:
    return event.model_dump_json().encode()


def decode_event(payload: bytes, *, upcasters: Upcasters = UPCASTERS) -> Event:
    """Parse and validate an event, upcasting an older schema version to the current one.

    Raises :class:`pydantic.ValidationError` on bad input, including a schema version this code
    cannot read (newer than it knows, or older with no upcaster registered).
    """
    try:
        event = event_adapter.validate_json(payload)
    except ValidationError:
        stored = _json_object(payload)
        if stored is None or not upcasters.applies_to(stored, CURRENT_SCHEMA_VERSIONS):
            raise
    else:
        if event.schema_version == CURRENT_SCHEMA_VERSIONS[event.event_type]:
            return event
        stored = _json_object(payload)
        assert stored is not None  # it validated as an event, so it is a JSON object
    event = event_adapter.validate_python(upcasters.upcast(stored, CURRENT_SCHEMA_VERSIONS))
    current = CURRENT_SCHEMA_VERSIONS[event.event_type]
    if event.schema_version != current:
        raise ValidationError.from_exception_data(
            "Event",
            [
                InitErrorDetails(
                    type=PydanticCustomError(
                        "schema_version",
                        "{event_type} schema version {version} cannot be read: this code reads "
                        "version {current} and upcasts older versions it has upcasters for",
                        {
                            "event_type": event.event_type,
                            "version": event.schema_version,
                            "current": current,
                        },
                    ),
                    loc=("schema_version",),
                    input=event.schema_version,
                )
            ],
        )
    return event


def _json_object(payload: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
