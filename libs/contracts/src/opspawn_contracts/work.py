"""Work items: what a runner is given to run, one task attempt each.

A work item carries everything a runner needs to start (so a runner never reads the read model),
and the ``attempt`` it is for, which the runner stamps on every event it emits (a fencing token).
A task's first attempt is not stored as a work item: the runner builds it from the task's
TaskSubmitted (:meth:`TaskAssignment.first_attempt`); later attempts (retries) are put on the
work queue by the scheduler.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from opspawn_contracts.events import TaskOptions, TaskSubmitted

WORK_SCHEMA_VERSION = 1
"""The one work-item schema version this code reads and writes. Work items are short-lived (the
history is in the events), so nothing upcasts them: an item in another version is refused (the
runner dead-letters it, to be re-driven once a runner that reads that version runs)."""


class TaskAssignment(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = WORK_SCHEMA_VERSION
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
    after_sequence: int | None = Field(default=None, ge=1)
    """Where the task's history ended (events-stream sequence) when this item was queued. A
    runner on a first delivery appends ``TaskStarted`` expecting exactly this, which holds only
    if nothing happened to the task since, and saves reading the history; on a conflict (or
    without it) the runner decides from the history it reads."""

    @field_validator("schema_version")
    @classmethod
    def _readable_version(cls, version: int) -> int:
        if version != WORK_SCHEMA_VERSION:
            raise ValueError(
                f"work item schema version {version} cannot be read: this code reads version "
                f"{WORK_SCHEMA_VERSION}"
            )
        return version

    @classmethod
    def first_attempt(cls, submitted: TaskSubmitted, *, sequence: int | None) -> TaskAssignment:
        """The first attempt of the task ``submitted`` created (stored at ``sequence``, the
        task's only event then, when known)."""
        data = submitted.data
        options = data.options
        attempts = data.attempts_allowed or options.max_attempts or 1
        if options.max_attempts != attempts:
            options = options.model_copy(update={"max_attempts": attempts})
        return cls(
            task_id=submitted.task_id,
            task_type=data.task_type,
            input_data=data.input_data,
            attempt=1,
            correlation_id=submitted.correlation_id,
            causation_id=submitted.event_id,
            options=options,
            deadline_at=deadline(submitted.occurred_at, options),
            after_sequence=sequence,
        )

    def msg_id(self) -> str:
        """Dedup key: one work item per task attempt."""
        return f"{self.task_id}:{self.attempt}"


def deadline(submitted_at: datetime, options: TaskOptions) -> datetime | None:
    """When a task submitted at ``submitted_at`` times out, if ever."""
    if options.timeout_seconds is None:
        return None
    return submitted_at + timedelta(seconds=options.timeout_seconds)
