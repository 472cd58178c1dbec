"""Waiting for new tasks to reach the read model: read-after-write for many requests at once.

Every submission waits (bounded) until the projection shows its task. The projection announces
the tasks each of its transactions inserts when it commits
(:mod:`opspawn_readmodel.announcements`); :class:`TaskArrivals` keeps one session listening and,
on each announcement naming a task someone waits for, reads those rows: no query while nothing
arrives, and no polling delay between the commit and the answer.

A task can be announced before its request begins to wait (the gateway's event loop may run the
announcement before the request resumes from its publish), so the last
:data:`REMEMBERED_ANNOUNCEMENTS` announced ids are remembered and a new waiter checks them first.
Announcements are hints: one made while the listening session was down is never heard. So while
anyone waits, the rows of every waited-for task are also read every :data:`LOOK_ANYWAY_INTERVAL`
seconds, however many announcements arrive meanwhile, and while no session listens (the database
restarting, say) every :data:`POLL_INTERVAL` seconds, as a plain poller would. Each look is one
query for all the tasks it concerns (``task_id = ANY(...)``), however many requests wait, made
through the listening session while there is one (a round trip, where a pooled connection costs
a checkout, a ping and a transaction: most of the gateway's database CPU when tasks trickle in)
and through the engine's pool otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from typing import Any
from uuid import UUID

import asyncpg
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from opspawn_contracts.task import TaskView
from opspawn_readmodel.announcements import AnnouncementsUnavailable, listen_for_new_tasks
from opspawn_readmodel.tables import tasks

logger = logging.getLogger(__name__)

POLL_INTERVAL = 0.005
"""Seconds between looks while no session listens for announcements."""
LOOK_ANYWAY_INTERVAL = 0.05
"""Seconds between looks for every waited-for task while listening (missed announcements)."""
REMEMBERED_ANNOUNCEMENTS = 10_000
LISTEN_RETRY_START = 0.1
LISTEN_RETRY_MAX = 5.0
_READ_TASKS = (
    f"SELECT {', '.join(column.name for column in tasks.columns)} FROM {tasks.name} "
    "WHERE task_id = ANY($1::uuid[])"
)


class TaskArrivals:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        poll_interval: float = POLL_INTERVAL,
        look_anyway_interval: float = LOOK_ANYWAY_INTERVAL,
        listen: bool = True,
    ) -> None:
        """``listen=False`` never listens: every look is a poll every ``poll_interval``."""
        self._engine = engine
        self._poll_interval = poll_interval
        self._look_anyway_interval = look_anyway_interval
        self._listen = listen
        self._waiting: dict[UUID, list[asyncio.Future[TaskView]]] = {}
        self._announced: set[UUID] = set()
        """Waited-for tasks announced since the last look."""
        self._remembered: OrderedDict[UUID, None] = OrderedDict()
        """The latest announced task ids, waited for or not, oldest first."""
        self._look_for_all = False
        self._last_full_look = 0.0
        self._news = asyncio.Event()
        self._listening = False
        self._session: asyncpg.Connection | None = None
        """The listening session, which the looks read through while it lasts."""
        self._listener: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None

    @property
    def listening(self) -> bool:
        """Whether a session listens for announcements now."""
        return self._listening

    async def wait(self, task_id: UUID, timeout: float) -> TaskView | None:
        """The task once the read model has it, or ``None`` after ``timeout`` seconds.

        Raises what the database raised if it cannot be read, so the caller can tell "not yet"
        from "could not look".
        """
        future: asyncio.Future[TaskView] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(task_id, []).append(future)
        if task_id in self._remembered:
            self._announced.add(task_id)
            self._news.set()
        if self._listen and self._listener is None:
            self._listener = asyncio.create_task(self._keep_listening(), name="new-task listener")
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
        for task in (self._poller, self._listener):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _poll(self) -> None:
        while self._waiting:
            ids = self._ids_to_look_for()
            if ids:
                await self._look_for(ids)
            await self._until_next_look()

    def _ids_to_look_for(self) -> list[UUID]:
        if not self._listening or self._look_for_all:
            self._look_for_all = False
            self._announced.clear()
            self._last_full_look = time.monotonic()
            return list(self._waiting)
        ids = [task_id for task_id in self._announced if task_id in self._waiting]
        self._announced.clear()
        return ids

    async def _until_next_look(self) -> None:
        if not self._listening:
            await asyncio.sleep(self._poll_interval)
            return
        if self._announced or self._look_for_all:
            return
        until_full_look = self._last_full_look + self._look_anyway_interval - time.monotonic()
        if until_full_look <= 0:
            self._look_for_all = True
            return
        self._news.clear()
        try:
            async with asyncio.timeout(until_full_look):
                await self._news.wait()
        except TimeoutError:
            self._look_for_all = True

    async def _look_for(self, ids: list[UUID]) -> None:
        rows = await self._read_through_session(ids)
        if rows is None:
            try:
                async with self._engine.connect() as connection:
                    found = await connection.execute(select(tasks).where(tasks.c.task_id.in_(ids)))
                    rows = [row._asdict() for row in found]
            except (SQLAlchemyError, OSError) as error:
                self._fail_all(error)
                return
        for row in rows:
            view = TaskView.model_validate(row)
            for future in self._waiting.pop(view.task_id, []):
                if not future.done():
                    future.set_result(view)

    async def _read_through_session(self, ids: list[UUID]) -> list[dict[str, Any]] | None:
        """The rows of ``ids`` read through the listening session; ``None`` if there is none or
        it failed (then the engine's pool is used: a lost session is the listener's business)."""
        session = self._session
        if session is None or session.is_closed():
            return None
        try:
            records = await session.fetch(_READ_TASKS, ids)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as error:
            logger.info("cannot read through the listening session (%r); using the pool", error)
            return None
        return [dict(record.items()) for record in records]

    def _fail_all(self, error: Exception) -> None:
        logger.warning("read model unavailable while waiting for new tasks: %r", error)
        waiting, self._waiting = self._waiting, {}
        for futures in waiting.values():
            for future in futures:
                if not future.done():
                    future.set_exception(error)

    # --- announcements -----------------------------------------------------------------------

    async def _keep_listening(self) -> None:
        """Listen for announcements for as long as this object lives, reconnecting with backoff
        after the session is lost."""
        delay = LISTEN_RETRY_START
        while True:
            try:
                await listen_for_new_tasks(self._engine, self._announcement, self._now_listening)
            except AnnouncementsUnavailable as error:
                logger.warning("%s; polling every %.3f s meanwhile", error, self._poll_interval)
            else:
                logger.warning("lost the session listening for new tasks; reconnecting")
                delay = LISTEN_RETRY_START
            finally:
                self._listening = False
                self._session = None
                self._news.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, LISTEN_RETRY_MAX)

    def _now_listening(self, session: asyncpg.Connection) -> None:
        self._listening = True
        self._session = session
        self._look_for_all = True  # whatever was announced before this session listened
        self._news.set()

    def _announcement(self, task_ids: frozenset[UUID] | None) -> None:
        if task_ids is None:
            self._look_for_all = True
        else:
            self._remember(task_ids)
            self._announced.update(task_id for task_id in task_ids if task_id in self._waiting)
            if not self._announced:
                return
        self._news.set()

    def _remember(self, task_ids: frozenset[UUID]) -> None:
        remembered = self._remembered
        for task_id in task_ids:
            remembered[task_id] = None
        while len(remembered) > REMEMBERED_ANNOUNCEMENTS:
            remembered.popitem(last=False)
