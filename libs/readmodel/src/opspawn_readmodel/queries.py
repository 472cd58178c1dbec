"""Read access to the read model, shared by the gateway, the CLI and tests.

Read-your-writes: the gateway answers a submit only after the task is visible here, by waiting
(bounded) with :meth:`ReadModel.wait_for_task`. The projection is the only writer; these queries
never write.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import JsonValue
from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncEngine

from opspawn_contracts.events import upcast_stored
from opspawn_contracts.task import TaskStatus, TaskView
from opspawn_readmodel.tables import projection_checkpoints, task_events, tasks

MAX_PAGE_SIZE = 500


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An event as indexed by the projection: its stream position and the stored envelope, in
    its type's current schema version."""

    sequence: int
    event_id: UUID
    event_type: str
    occurred_at: datetime
    payload: dict[str, JsonValue]


def _task_view(row: Row[Any]) -> TaskView:
    return TaskView(
        task_id=row.task_id,
        task_type=row.task_type,
        status=TaskStatus(row.status),
        input_data=row.input_data,
        output_data=row.output_data,
        error_message=row.error_message,
        created_at=row.created_at,
        updated_at=row.updated_at,
        tenant=row.tenant,
        idempotency_key=row.idempotency_key,
        request_hash=row.request_hash,
        options=row.options,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
    )


class ReadModel:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def get_task(self, task_id: UUID) -> TaskView | None:
        async with self._engine.connect() as connection:
            result = await connection.execute(select(tasks).where(tasks.c.task_id == task_id))
            row = result.first()
        return None if row is None else _task_view(row)

    async def list_tasks(
        self, *, status: TaskStatus | None = None, limit: int = 50
    ) -> list[TaskView]:
        """Newest first."""
        query = select(tasks).order_by(tasks.c.created_at.desc(), tasks.c.task_id.desc())
        if status is not None:
            query = query.where(tasks.c.status == status.value)
        query = query.limit(max(1, min(limit, MAX_PAGE_SIZE)))
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [_task_view(row) for row in rows]

    async def task_events(self, task_id: UUID, *, after: int = 0) -> list[EventRecord]:
        """The task's events in stream order, those with a sequence above ``after``."""
        query = (
            select(task_events)
            .where(task_events.c.task_id == task_id, task_events.c.sequence > after)
            .order_by(task_events.c.sequence)
        )
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [
            EventRecord(
                row.sequence,
                row.event_id,
                row.event_type,
                row.occurred_at,
                upcast_stored(row.payload),
            )
            for row in rows
        ]

    async def checkpoint(self, projection: str) -> int:
        """The last stream sequence ``projection`` applied (0 before the first)."""
        query = select(projection_checkpoints.c.last_sequence).where(
            projection_checkpoints.c.projection == projection
        )
        async with self._engine.connect() as connection:
            value = await connection.scalar(query)
        return int(value or 0)

    async def wait_for_task(
        self, task_id: UUID, *, timeout: float, poll_interval: float = 0.01
    ) -> TaskView | None:
        """Poll until the projection has the task, or ``timeout`` passes (then ``None``)."""
        deadline = time.monotonic() + timeout
        interval = poll_interval
        while True:
            task = await self.get_task(task_id)
            if task is not None or time.monotonic() >= deadline:
                return task
            await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            interval = min(interval * 2, 0.1)
