"""New tasks announced at commit: how a reader learns, without polling, that the read model now
shows a task it waits for (the gateway's read-after-write).

The projection, the read model's only writer, calls :func:`announce_new_tasks` inside the
transaction that inserts the tasks. PostgreSQL delivers a ``NOTIFY`` to every session listening
on :data:`NEW_TASKS_CHANNEL` when, and only if, that transaction commits: a listener that hears a
task id can read its row at once. The payload is the ids, comma-separated; where they would not
fit in one notification (PostgreSQL's limit is 8000 bytes) it is empty, meaning "new tasks
arrived: look for every task you wait for".

Announcements are a hint, not a log: a listener that was disconnected misses them, so it must
also look by itself now and then (see ``gateway.arrivals``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any
from uuid import UUID

import asyncpg
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from opspawn_readmodel.database import KEY_LOOKUP_SETTINGS

NEW_TASKS_CHANNEL = "opspawn_new_tasks"
LISTENER_APPLICATION_NAME = "opspawn-new-task-listener"
"""How a listening session shows in ``pg_stat_activity``."""
MAX_PAYLOAD_BYTES = 7999
"""PostgreSQL refuses a notification payload of 8000 bytes or more."""
SESSION_CHECK_INTERVAL = 1.0
"""Seconds between two looks at whether the listening session is still open (its loss is
usually reported at once; this catches the rest)."""


class AnnouncementsUnavailable(Exception):
    """The listening session could not be opened or kept; the cause is chained."""


def announcement_payload(task_ids: Iterable[UUID]) -> str | None:
    """The payload announcing ``task_ids`` (``None``: nothing to announce)."""
    payload = ",".join(str(task_id) for task_id in task_ids)
    if not payload:
        return None
    return "" if len(payload) > MAX_PAYLOAD_BYTES else payload


async def announce_new_tasks(connection: AsyncConnection, task_ids: Iterable[UUID]) -> None:
    """Announce ``task_ids`` on :data:`NEW_TASKS_CHANNEL` when ``connection``'s transaction
    commits; nothing if there are none. (:class:`~opspawn_readmodel.projector.TaskProjector`
    made with ``announce=True`` does this in its own write statement.)"""
    payload = announcement_payload(task_ids)
    if payload is not None:
        await connection.execute(select(func.pg_notify(NEW_TASKS_CHANNEL, payload)))


def announced_task_ids(payload: str) -> frozenset[UUID] | None:
    """The task ids an announcement names; ``None`` for "look for all" (an empty payload, or one
    that is not a list of ids)."""
    if not payload:
        return None
    try:
        return frozenset(UUID(part) for part in payload.split(","))
    except ValueError:
        return None


async def listen_for_new_tasks(
    engine: AsyncEngine,
    on_announcement: Callable[[frozenset[UUID] | None], None],
    on_listening: Callable[[asyncpg.Connection], None],
) -> None:
    """Hold one session of ``engine`` listening on :data:`NEW_TASKS_CHANNEL`, calling
    ``on_announcement`` with :func:`announced_task_ids` of each announcement, until the session
    is lost (then return) or the caller is cancelled. ``on_listening`` is called with the session
    once it listens: announcements made before it are not heard. The listener may read through
    it meanwhile (one statement at a time, no transaction left open: it stays in autocommit),
    which costs a round trip instead of a pooled connection's checkout, ping and transaction.
    The session never returns to the pool; it runs with
    :data:`~opspawn_readmodel.database.KEY_LOOKUP_SETTINGS`.

    Raises :class:`AnnouncementsUnavailable` if the session cannot be opened or set up.
    """

    def announced(_connection: Any, _pid: int, _channel: str, payload: str) -> None:
        on_announcement(announced_task_ids(payload))

    try:
        async with engine.connect() as connection:
            try:
                session = (await connection.get_raw_connection()).driver_connection
                assert session is not None, "an open session has its driver connection"
                lost = asyncio.Event()
                session.add_termination_listener(lambda _session: lost.set())
                settings = {**KEY_LOOKUP_SETTINGS, "application_name": LISTENER_APPLICATION_NAME}
                await session.execute(
                    "; ".join(f"SET {name} = '{value}'" for name, value in settings.items())
                )
                await session.add_listener(NEW_TASKS_CHANNEL, announced)
                on_listening(session)
                while not session.is_closed():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(SESSION_CHECK_INTERVAL):
                            await lost.wait()
            finally:
                # Still LISTENing (or broken): not a session to lend to anyone else.
                await connection.invalidate()
    except (SQLAlchemyError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        raise AnnouncementsUnavailable(f"cannot listen for new tasks: {error!r}") from error
