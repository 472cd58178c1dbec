"""Deadlines: a task still open past its deadline gets TaskTimedOut, which fails it.

A task's deadline is its submission time plus ``options.timeout_seconds`` (the fold keeps it in
``tasks.deadline_at``). Every ``interval`` seconds the watch asks the read model for open tasks
past their deadline (a partial index keeps that cheap however many tasks finished) and, for
each, decides from the task's history in the events stream: if it is still open, TaskTimedOut is
appended at the version read (:mod:`scheduler.task_decisions`). The read model only nominates
candidates; the stream decides, so a lagging projection can delay a timeout by its lag but never
time out a task that finished.

A runner working on the task sees TaskTimedOut and stops (its own deadline usually fires first;
both write the same event id, so whichever comes second finds the task finished). The watch
covers what no runner can: a task waiting in the queue, between retries, or whose runner died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import nats.errors
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from opspawn_contracts.deadlines import timed_out
from opspawn_contracts.events import Event, utc_now
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.task import TaskStatus, TaskView
from opspawn_messaging.event_log import EventLog, StoredEvent
from opspawn_readmodel.tables import tasks
from scheduler.task_decisions import HistoryKeptMoving, append_decision

logger = logging.getLogger(__name__)

SWEEP_LIMIT = 200


@dataclass
class DeadlineStats:
    timeouts: int = 0
    sweeps: int = 0


class DeadlineWatch:
    def __init__(
        self,
        engine: AsyncEngine,
        log: EventLog,
        subjects: Subjects,
        *,
        interval: float = 1.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.stats = DeadlineStats()
        self._engine = engine
        self._log = log
        self._subjects = subjects
        self._interval = interval
        self._clock = clock

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sweep()
            except (SQLAlchemyError, OSError, nats.errors.Error, TimeoutError) as error:
                logger.warning("deadline sweep failed, trying again: %r", error)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await stop.wait()

    async def sweep(self) -> int:
        """Time out every open task past its deadline; how many were timed out now."""
        self.stats.sweeps += 1
        now = self._clock()
        async with self._engine.connect() as connection:
            overdue = (
                await connection.scalars(
                    select(tasks.c.task_id)
                    .where(
                        tasks.c.status.in_([TaskStatus.PENDING.value, TaskStatus.RUNNING.value]),
                        tasks.c.deadline_at.is_not(None),
                        tasks.c.deadline_at <= now,
                    )
                    .order_by(tasks.c.deadline_at)
                    .limit(SWEEP_LIMIT)
                )
            ).all()
        count = 0
        for task_id in overdue:
            try:
                count += await self.time_out(task_id, now)
            except HistoryKeptMoving as error:
                logger.warning("%s; trying again at the next sweep", error)
        return count

    async def time_out(self, task_id: UUID, now: datetime) -> bool:
        def decide(state: TaskView | None, history: list[StoredEvent]) -> Event | None:
            if state is None or state.status.is_terminal:
                return None
            if state.deadline_at is None or state.deadline_at > now:
                return None
            return timed_out(
                state.task_id,
                attempt=state.attempt,
                timeout_seconds=state.options.timeout_seconds or 0.0,
                correlation_id=history[0].event.correlation_id,
                causation_id=history[-1].event.event_id,
            )

        if await append_decision(self._log, task_id, decide) is None:
            return False
        self.stats.timeouts += 1
        logger.info("task %s timed out", task_id)
        return True
