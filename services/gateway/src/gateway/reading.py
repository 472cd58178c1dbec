"""Reading tasks and their events from the read model, the read path REST and gRPC share.

Every read is scoped to the caller's tenant: a task of another tenant is answered exactly like a
task that does not exist (:class:`TaskNotFound`), so ids cannot be probed across tenants.

Reads come from the read model, which shows what the scheduler's projection has applied so far.
A task it does not show yet is looked up in the events stream, the source of truth: its
TaskSubmitted folded into the same :class:`TaskView` (the row the projection will first write;
only that, so a task's reads never go backwards). That keeps read-your-writes true without the
submission waiting for the projection: a 202 means TaskSubmitted is stored
(:mod:`gateway.submission`), so a GET right after it finds the task, from one place or the
other. Lists (and the statuses in them) are the read model's alone, eventually consistent.
Nothing here writes, and :func:`read_only` makes the database enforce that.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, JsonValue
from sqlalchemy import select, tuple_
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api_errors import InvalidRequest, TaskNotFound
from gateway.pagination import (
    PagePosition,
    TaskFilter,
    decode_cursor,
    encode_cursor,
    page_size,
)
from opspawn_contracts.events import TaskOptions, upcast_stored
from opspawn_contracts.task import TaskStatus, TaskView
from opspawn_messaging.event_log import EventLog, TaskHistory
from opspawn_readmodel.tables import task_events, tasks

logger = logging.getLogger(__name__)

MAX_EVENTS_PAGE = 1000
MAX_SEQUENCE = 2**63 - 1
"""The largest stream sequence a client may name (PostgreSQL's bigint, JetStream's uint64 cut
to what the read model stores)."""


class TokenTotals(BaseModel):
    """Tokens of the model replies the task recorded (a task without a model: zero)."""

    model_config = ConfigDict(frozen=True)

    input_tokens: int = Field(default=0, description="Read by the model (the prompts).")
    output_tokens: int = Field(default=0, description="Written by the model (the completions).")


class Task(BaseModel):
    """A task as clients see it."""

    model_config = ConfigDict(frozen=True)

    task_id: UUID
    task_type: str = Field(examples=["agent_run"])
    status: TaskStatus
    input_data: dict[str, JsonValue]
    output_data: dict[str, JsonValue] | None = Field(
        default=None, description="What the task produced; null until it completed."
    )
    error_message: str | None = Field(
        default=None, description="Why the task failed or was cancelled."
    )
    created_at: datetime
    updated_at: datetime
    idempotency_key: str | None = Field(
        default=None, description="The Idempotency-Key it was submitted with, if any."
    )
    options: TaskOptions = Field(
        default_factory=TaskOptions, description="The per-task settings it was submitted with."
    )
    usage: TokenTotals = Field(
        default_factory=TokenTotals,
        description="Tokens of its model replies so far; per step in its events' model_reply.",
    )

    @classmethod
    def from_view(cls, view: TaskView) -> Task:
        return cls(
            task_id=view.task_id,
            task_type=view.task_type,
            status=view.status,
            input_data=view.input_data,
            output_data=view.output_data,
            error_message=view.error_message,
            created_at=view.created_at,
            updated_at=view.updated_at,
            idempotency_key=view.idempotency_key,
            options=view.options,
            usage=TokenTotals(input_tokens=view.input_tokens, output_tokens=view.output_tokens),
        )


class TaskPage(BaseModel):
    items: list[Task] = Field(description="Newest first.")
    next_cursor: str | None = Field(
        description="Pass as 'cursor' for the next page; null on the last page."
    )


class TaskEventView(BaseModel):
    """A stored event: its envelope as written to the events stream, plus its stream sequence,
    in its type's current schema version (one stored in an older version is upcast).

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
    def from_payload(cls, sequence: int, payload: dict[str, Any]) -> TaskEventView:
        return cls.model_validate({**upcast_stored(payload), "sequence": sequence})


def read_only(engine: AsyncEngine) -> AsyncEngine:
    """``engine`` with every transaction READ ONLY: Postgres itself refuses a gateway write."""
    return engine.execution_options(postgresql_readonly=True)


def parse_task_id(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise InvalidRequest(f"task_id {value!r} is not a UUID") from None


def parse_status(value: str | None, *, allow_any: bool = True) -> TaskStatus | None:
    """A status filter from text; absent (or, with ``allow_any``, empty) means any status."""
    if value is None or (allow_any and not value):
        return None
    try:
        return TaskStatus(value)
    except ValueError:
        allowed = ", ".join(status.value for status in TaskStatus)
        raise InvalidRequest(f"status {value!r} is not one of: {allowed}") from None


class TaskReader:
    def __init__(self, engine: AsyncEngine, events: EventLog) -> None:
        """``events`` answers for tasks the read model does not show yet."""
        self._engine = engine
        self._events = events

    async def find(self, task_id: UUID) -> TaskView | None:
        """The task whoever owns it (for idempotency checks, whose ids embed the tenant)."""
        projected = await self._projected(task_id)
        if projected is not None:
            return projected
        return (await self._submission(task_id)).state()

    async def get_task(self, tenant: str, task_id: UUID) -> TaskView:
        """The tenant's task; :class:`TaskNotFound` if it has none with this id."""
        task = await self.find(task_id)
        if task is None or task.tenant != tenant:
            raise TaskNotFound(task_id)
        return task

    async def _submission(self, task_id: UUID) -> TaskHistory:
        """The task's history in the events stream up to its TaskSubmitted (empty for a task
        that does not exist): the task as the projection will first show it. Not further, so
        that reads never go backwards: a later read from a lagging read model shows at least
        this much, while a fuller history read now could show ``running`` and the row a moment
        later still ``pending``."""
        history = await self._events.task_history(task_id)
        return history.until(sequence=history[0].sequence) if history else history

    async def _projected(self, task_id: UUID) -> TaskView | None:
        """The task's row; ``None`` when the read model does not show it, or cannot be read
        (then the events stream answers: one task's state is cheap to fold)."""
        try:
            async with self._engine.connect() as connection:
                query = select(tasks).where(tasks.c.task_id == task_id)
                row = (await connection.execute(query)).first()
        except (SQLAlchemyError, OSError) as error:
            logger.warning("read model unavailable, reading task %s from the stream: %r",
                           task_id, error)  # fmt: skip
            return None
        return None if row is None else TaskView.model_validate(row._asdict())

    async def list_tasks(
        self,
        tenant: str,
        task_filter: TaskFilter,
        *,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> tuple[list[TaskView], str | None]:
        """One page, newest first, and the cursor of the next (``None`` on the last page)."""
        size = page_size(limit)
        query = select(tasks).where(tasks.c.tenant == tenant)
        if task_filter.status is not None:
            query = query.where(tasks.c.status == task_filter.status.value)
        if task_filter.task_type is not None:
            query = query.where(tasks.c.task_type == task_filter.task_type)
        if task_filter.created_after is not None:
            query = query.where(tasks.c.created_at > task_filter.created_after)
        if task_filter.created_before is not None:
            query = query.where(tasks.c.created_at < task_filter.created_before)
        if cursor:
            position = decode_cursor(cursor, task_filter)
            query = query.where(
                tuple_(tasks.c.created_at, tasks.c.task_id)
                < tuple_(position.created_at, position.task_id)
            )
        query = query.order_by(tasks.c.created_at.desc(), tasks.c.task_id.desc()).limit(size + 1)
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        page = [TaskView.model_validate(row._asdict()) for row in rows[:size]]
        if len(rows) <= size:
            return page, None
        last = page[-1]
        return page, encode_cursor(PagePosition(last.created_at, last.task_id), task_filter)

    async def task_events(
        self, tenant: str, task_id: UUID, *, after: int = 0, limit: int | None = None
    ) -> list[TaskEventView]:
        """The tenant's task's events with a sequence above ``after``, in stream order."""
        if not 0 <= after <= MAX_SEQUENCE:
            raise InvalidRequest(f"after must be 0 or a sequence up to {MAX_SEQUENCE}, got {after}")
        size = page_size(limit, MAX_EVENTS_PAGE) if limit else MAX_EVENTS_PAGE
        projected = await self._projected(task_id)
        if projected is not None and projected.tenant != tenant:
            raise TaskNotFound(task_id)
        if projected is None:
            history = await self._submission(task_id)
            state = history.state()
            if state is None or state.tenant != tenant:
                raise TaskNotFound(task_id)
            return [
                TaskEventView.from_payload(stored.sequence, stored.event.model_dump(mode="json"))
                for stored in history
                if stored.sequence > after
            ][:size]
        query = (
            select(task_events.c.sequence, task_events.c.payload)
            .where(task_events.c.task_id == task_id, task_events.c.sequence > after)
            .order_by(task_events.c.sequence)
            .limit(size)
        )
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [TaskEventView.from_payload(row.sequence, row.payload) for row in rows]
