"""Waiting for new tasks to reach the read model: read-after-write for many requests at once.

Every submission waits (bounded) until the projection shows its task. Polling the read model per
request would cost each waiting request a query every few milliseconds, so under load most of
the database's work would be asking "is it there yet?". Instead, one poller asks for all the
tasks waited on at once (``task_id = ANY(...)``) every :data:`POLL_INTERVAL` seconds and wakes
each waiter whose task has arrived: one query per interval, however many requests wait.
The poller runs only while someone waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from opspawn_contracts.task import TaskView
from opspawn_readmodel.tables import tasks

logger = logging.getLogger(__name__)

POLL_INTERVAL = 0.005


class TaskArrivals:
    def __init__(self, engine: AsyncEngine, *, poll_interval: float = POLL_INTERVAL) -> None:
        self._engine = engine
        self._poll_interval = poll_interval
        self._waiting: dict[UUID, list[asyncio.Future[TaskView]]] = {}
        self._poller: asyncio.Task[None] | None = None

    async def wait(self, task_id: UUID, timeout: float) -> TaskView | None:
        """The task once the read model has it, or ``None`` after ``timeout`` seconds.

        Raises what the database raised if it cannot be read, so the caller can tell "not yet"
        from "could not look".
        """
        future: asyncio.Future[TaskView] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(task_id, []).append(future)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="read-after-write poller")
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            return None
        finally:
            waiters = self._waiting.get(task_id, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiting.pop(task_id, None)

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    async def _poll(self) -> None:
        while self._waiting:
            ids = list(self._waiting)
            try:
                async with self._engine.connect() as connection:
                    rows = (
                        await connection.execute(select(tasks).where(tasks.c.task_id.in_(ids)))
                    ).all()
            except (SQLAlchemyError, OSError) as error:
                self._fail_all(error)
            else:
                for row in rows:
                    view = TaskView.model_validate(row._asdict())
                    for future in self._waiting.pop(view.task_id, []):
                        if not future.done():
                            future.set_result(view)
            await asyncio.sleep(self._poll_interval)

    def _fail_all(self, error: Exception) -> None:
        logger.warning("read model unavailable while waiting for new tasks: %r", error)
        waiting, self._waiting = self._waiting, {}
        for futures in waiting.values():
            for future in futures:
                if not future.done():
                    future.set_exception(error)
