"""Reading tasks and their events from the read model, the read path REST and gRPC share.

Reads are eventually consistent with the events stream: they show what the scheduler's
projection has applied so far (a just-submitted task may be missing for a moment, see
:mod:`gateway.submission`). Nothing here writes, and :func:`read_only` makes the database
enforce that.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, JsonValue
from sqlalchemy.ext.asyncio import AsyncEngine

from opspawn_contracts.task import TaskStatus, TaskView
from opspawn_readmodel.queries import MAX_PAGE_SIZE, EventRecord, ReadModel

DEFAULT_LIMIT = 50


class TaskNotFound(LookupError):
    def __init__(self, task_id: UUID) -> None:
        super().__init__(f"no task with id {task_id}")
        self.task_id = task_id


class InvalidQuery(ValueError):
    """A read request with an argument out of range; the message says which and why."""


class TaskEventView(BaseModel):
    """A stored event: its envelope as written to the events stream, plus its stream sequence.

    Envelope fields added by later schema versions pass through (``extra="allow"``).
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    sequence: int = Field(description="Position in the events stream; increasing per task.")
    event_id: UUID
    event_type: str = Field(examples=["TaskSubmitted"])
    schema_version: int
    task_id: UUID
    occurred_at: datetime
    correlation_id: UUID
    causation_id: UUID | None = None
    data: dict[str, JsonValue] = Field(description="The event's typed payload.")

    @classmethod
    def from_record(cls, record: EventRecord) -> TaskEventView:
        return cls.model_validate({**record.payload, "sequence": record.sequence})


def read_only(engine: AsyncEngine) -> AsyncEngine:
    """``engine`` with every transaction READ ONLY: Postgres itself refuses a gateway write."""
    return engine.execution_options(postgresql_readonly=True)


def parse_task_id(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise InvalidQuery(f"task_id {value!r} is not a UUID") from None


def parse_status(value: str | None) -> TaskStatus | None:
    """A status filter from text; empty or absent means any status."""
    if not value:
        return None
    try:
        return TaskStatus(value)
    except ValueError:
        allowed = ", ".join(status.value for status in TaskStatus)
        raise InvalidQuery(f"status {value!r} is not one of: {allowed}") from None


def page_size(limit: int | None) -> int:
    """``limit`` within bounds: unset or 0 means the default; above the maximum, the maximum."""
    if limit is None or limit == 0:
        return DEFAULT_LIMIT
    if limit < 0:
        raise InvalidQuery(f"limit must be positive, got {limit}")
    return min(limit, MAX_PAGE_SIZE)


class TaskReader:
    def __init__(self, read_model: ReadModel) -> None:
        self._read_model = read_model

    async def get_task(self, task_id: UUID) -> TaskView:
        task = await self._read_model.get_task(task_id)
        if task is None:
            raise TaskNotFound(task_id)
        return task

    async def list_tasks(
        self, *, status: TaskStatus | None = None, limit: int | None = None
    ) -> list[TaskView]:
        """Newest first; see :func:`page_size` for ``limit``."""
        return await self._read_model.list_tasks(status=status, limit=page_size(limit))

    async def task_events(self, task_id: UUID) -> list[TaskEventView]:
        """The task's events in stream order; :class:`TaskNotFound` if there is no such task."""
        records = await self._read_model.task_events(task_id)
        if not records and await self._read_model.get_task(task_id) is None:
            raise TaskNotFound(task_id)
        return [TaskEventView.from_record(record) for record in records]
