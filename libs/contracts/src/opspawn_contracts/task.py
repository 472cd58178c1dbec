"""The task as clients see it, and the pure fold that derives it from events.

Live projection and replay call the same :func:`evolve`, so a rebuilt read model cannot drift from
the live one by construction.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import assert_never
from uuid import UUID

from pydantic import BaseModel, ConfigDict, JsonValue

from opspawn_contracts.events import (
    AgentStepCompleted,
    Event,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskStarted,
    TaskSubmitted,
    ToolCallCompleted,
    ToolCallRequested,
)


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


def evolve(state: TaskView | None, event: Event) -> TaskView | None:
    """Apply one event to a task's state; ``None`` is the state before TaskSubmitted.

    Events that arrive for a task that was never submitted, or after it finished, leave the state
    as it is: history is immutable, and a late event from a slow runner must not reopen a task.
    """
    if isinstance(event, TaskSubmitted):
        if state is not None:
            return state
        return TaskView(
            task_id=event.task_id,
            task_type=event.data.task_type,
            status=TaskStatus.PENDING,
            input_data=event.data.input_data,
            created_at=event.occurred_at,
            updated_at=event.occurred_at,
        )
    if state is None or state.status.is_terminal:
        return state
    match event:
        case TaskStarted():
            return state.model_copy(
                update={"status": TaskStatus.RUNNING, "updated_at": event.occurred_at}
            )
        case AgentStepCompleted() | ToolCallRequested() | ToolCallCompleted():
            return state.model_copy(update={"updated_at": event.occurred_at})
        case TaskCompleted():
            return state.model_copy(
                update={
                    "status": TaskStatus.COMPLETED,
                    "output_data": event.data.output_data,
                    "updated_at": event.occurred_at,
                }
            )
        case TaskFailed():
            return state.model_copy(
                update={
                    "status": TaskStatus.FAILED,
                    "error_message": event.data.error_message,
                    "output_data": event.data.output_data,
                    "updated_at": event.occurred_at,
                }
            )
        case TaskCancelled():
            return state.model_copy(
                update={
                    "status": TaskStatus.CANCELLED,
                    "error_message": event.data.reason,
                    "updated_at": event.occurred_at,
                }
            )
        case _:
            assert_never(event)
