"""The task as clients see it, and the pure fold that derives it from events.

:func:`fold` is the only place that turns events into a task's state: live projection, replay,
the scheduler's decisions, the runner's claim and the CLI's as-of all call it (through
``TaskHistory.state()`` where they hold a whole history), so a rebuilt read model cannot drift
from the live one by construction. :func:`evolve` is its step, one event at a time.

The attempt number is a fencing token. ``TaskView.attempt`` is the newest attempt started or
scheduled; an event a runner wrote for an older attempt (a runner presumed dead that was only
slow) is *superseded*: :func:`is_superseded` says so, the projection records it as such, and
:func:`evolve` leaves the state as it was.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import assert_never
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from opspawn_contracts.events import (
    DEFAULT_TENANT,
    AgentStepCompleted,
    Event,
    StepCompleted,
    StepStarted,
    TaskAttemptFailed,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskOptions,
    TaskRetryScheduled,
    TaskStarted,
    TaskSubmitted,
    TaskTimedOut,
    ToolCallCompleted,
    ToolCallRequested,
)
from opspawn_contracts.journal import recorded_replies


class TaskStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


class TaskView(BaseModel):
    """A task's current state: the fields kept from the system Opspawn descends from."""

    model_config = ConfigDict(frozen=True)

    task_id: UUID
    task_type: str
    status: TaskStatus
    input_data: dict[str, JsonValue]
    output_data: dict[str, JsonValue] | None = None
    error_message: str | None = None
    created_at: datetime
    updated_at: datetime
    tenant: str = DEFAULT_TENANT
    idempotency_key: str | None = None
    request_hash: str | None = None
    options: TaskOptions = Field(default_factory=TaskOptions)
    attempt: int = 0
    """The newest attempt started or scheduled (0 before the first start): the fencing token."""
    deadline_at: datetime | None = None
    """Submission time plus ``options.timeout_seconds``: past it the task times out."""
    retry_at: datetime | None = None
    """While a retry is scheduled and not yet started: when its attempt is queued."""
    input_tokens: int = 0
    output_tokens: int = 0
    """Tokens of the model replies the task's attempts recorded (steps and final answer)."""


_FENCED_EVENT_TYPES = frozenset(
    {
        "TaskStarted",
        "StepStarted",
        "StepCompleted",
        "AgentStepCompleted",
        "ToolCallRequested",
        "ToolCallCompleted",
        "TaskCompleted",
        "TaskAttemptFailed",
        "TaskFailed",
    }
)
"""Events a runner writes for an attempt (TaskFailed with attempt 0 comes from no attempt)."""


def runner_attempt(event: Event) -> int | None:
    """The attempt a runner wrote ``event`` for; ``None`` for events no attempt fences."""
    if event.event_type not in _FENCED_EVENT_TYPES:
        return None
    attempt: int = getattr(event.data, "attempt", 0)
    return attempt or None


def claimed_attempt(event: Event) -> int | None:
    """The attempt whose claim ``event`` stores: a TaskStarted's, or that of an attempt's last
    event carrying its claim (``data.started``); ``None`` for any other event."""
    if isinstance(event, TaskStarted):
        return event.data.attempt
    started = getattr(event.data, "started", None)
    return None if started is None else int(started.attempt)


def is_superseded(state: TaskView | None, event: Event) -> bool:
    """Whether ``event`` comes from an attempt older than the task's current one."""
    attempt = runner_attempt(event)
    return state is not None and attempt is not None and attempt < state.attempt


def fold(events: Iterable[Event], state: TaskView | None = None) -> TaskView | None:
    """The task's state after ``events``, continuing from ``state`` (``None``: from nothing)."""
    for event in events:
        state = evolve(state, event)
    return state


def evolve(state: TaskView | None, event: Event) -> TaskView | None:
    """Apply one event to a task's state; ``None`` is the state before TaskSubmitted.

    Events that arrive for a task that was never submitted, or after it finished, or from a
    superseded attempt leave the state as it is: history is immutable, and a late event from a
    slow runner must not reopen a task or overwrite what a newer attempt did.
    """
    if isinstance(event, TaskSubmitted):
        if state is not None:
            return state
        timeout = event.data.options.timeout_seconds
        return TaskView(
            task_id=event.task_id,
            task_type=event.data.task_type,
            status=TaskStatus.PENDING,
            input_data=event.data.input_data,
            created_at=event.occurred_at,
            updated_at=event.occurred_at,
            tenant=event.data.tenant,
            idempotency_key=event.data.idempotency_key,
            request_hash=event.data.request_hash,
            options=event.data.options,
            deadline_at=None if timeout is None else event.occurred_at + timedelta(seconds=timeout),
        )
    if state is None or state.status.is_terminal or is_superseded(state, event):
        return state
    state = _spent(state, event)
    match event:
        case TaskStarted():
            return _started(state, event.data.attempt, event.occurred_at)
        case (
            StepStarted()
            | StepCompleted()
            | AgentStepCompleted()
            | ToolCallRequested()
            | ToolCallCompleted()
        ):
            return state.model_copy(update={"updated_at": event.occurred_at})
        case TaskCompleted():
            state = _claimed_by(state, event)
            return state.model_copy(
                update={
                    "status": TaskStatus.COMPLETED,
                    "output_data": event.data.output_data,
                    "error_message": None,
                    "updated_at": event.occurred_at,
                }
            )
        case TaskFailed():
            state = _claimed_by(state, event)
            return state.model_copy(
                update={
                    "status": TaskStatus.FAILED,
                    "error_message": event.data.error_message,
                    "output_data": event.data.output_data,
                    "retry_at": None,
                    "updated_at": event.occurred_at,
                }
            )
        case TaskCancelled():
            return state.model_copy(
                update={
                    "status": TaskStatus.CANCELLED,
                    "error_message": event.data.reason,
                    "retry_at": None,
                    "updated_at": event.occurred_at,
                }
            )
        case TaskAttemptFailed():
            state = _claimed_by(state, event)
            return state.model_copy(
                update={"error_message": event.data.error_message, "updated_at": event.occurred_at}
            )
        case TaskRetryScheduled():
            return state.model_copy(
                update={
                    "status": TaskStatus.PENDING,
                    "attempt": max(state.attempt, event.data.attempt),
                    "retry_at": event.data.not_before,
                    "error_message": event.data.reason,
                    "updated_at": event.occurred_at,
                }
            )
        case TaskTimedOut():
            return state.model_copy(
                update={
                    "status": TaskStatus.FAILED,
                    "error_message": event.data.reason,
                    "retry_at": None,
                    "updated_at": event.occurred_at,
                }
            )
        case _:
            assert_never(event)


def _started(state: TaskView, attempt: int, at: datetime) -> TaskView:
    return state.model_copy(
        update={
            "status": TaskStatus.RUNNING,
            "attempt": attempt,
            "retry_at": None,
            "updated_at": at,
        }
    )


def _claimed_by(state: TaskView, event: TaskCompleted | TaskFailed | TaskAttemptFailed) -> TaskView:
    """The state after the TaskStarted an attempt's last event carries (``data.started``), if
    it carries one: the attempt starts and ends in one event."""
    started = event.data.started
    return state if started is None else _started(state, started.attempt, event.occurred_at)


def _spent(state: TaskView, event: Event) -> TaskView:
    """The state with the tokens of the model replies ``event`` records added."""
    replies = recorded_replies(event)
    if not replies:
        return state
    return state.model_copy(
        update={
            "input_tokens": state.input_tokens + sum(reply.input_tokens for reply in replies),
            "output_tokens": state.output_tokens + sum(reply.output_tokens for reply in replies),
        }
    )
