"""Work items: what the scheduler puts on the runner work queue.

A work item carries everything a runner needs to start (so a runner never reads the read model),
and the ``attempt`` it is for, which the runner stamps on every event it emits (a fencing token).
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from opspawn_contracts.events import TaskOptions


class TaskAssignment(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = 1
    task_id: UUID
    task_type: str
    input_data: dict[str, JsonValue]
    attempt: int = 1
    correlation_id: UUID
    causation_id: UUID
    """The event (TaskSubmitted, later TaskRetryScheduled) that made the task runnable."""
    options: TaskOptions = Field(default_factory=TaskOptions)
    """The client's per-task settings (deadline, attempts, allowed tools) from TaskSubmitted;
    the scheduler fills in its default ``max_attempts`` where the client chose none."""
    deadline_at: datetime | None = None
    """When the task times out (submission plus ``options.timeout_seconds``), if ever."""

    def msg_id(self) -> str:
        """Dedup key: one work item per task attempt."""
        return f"{self.task_id}:{self.attempt}"
