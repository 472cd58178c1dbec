"""Announcements reach listeners at commit only, and a batch too large to name says "look"."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from uuid import UUID, uuid4

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from opspawn_readmodel.announcements import (
    announce_new_tasks,
    announced_task_ids,
    listen_for_new_tasks,
)
from opspawn_readmodel.database import create_engine

pytestmark = pytest.mark.integration


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, pool_size=2)
    yield engine
    await engine.dispose()


@contextlib.asynccontextmanager
async def _listening(engine: AsyncEngine) -> AsyncIterator[list[frozenset[UUID] | None]]:
    heard: list[frozenset[UUID] | None] = []
    ready = asyncio.Event()
    listener = asyncio.create_task(
        listen_for_new_tasks(engine, heard.append, lambda _session: ready.set())
    )
    try:
        await asyncio.wait_for(ready.wait(), 10)
        yield heard
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener


async def _settle() -> None:
    await asyncio.sleep(0.2)


async def test_listeners_hear_committed_announcements_and_not_rolled_back_ones(
    engine: AsyncEngine,
) -> None:
    committed, rolled_back = [uuid4(), uuid4()], [uuid4()]
    async with _listening(engine) as heard:
        async with engine.begin() as connection:
            await announce_new_tasks(connection, committed)
            await _settle()
            assert heard == [], "heard before the commit"
        async with engine.connect() as connection:
            await announce_new_tasks(connection, rolled_back)
            await connection.rollback()
        async with engine.begin() as connection:
            await announce_new_tasks(connection, [])
        await _settle()

    assert heard == [frozenset(committed)]


async def test_too_many_ids_for_one_notification_announce_look_for_all(
    engine: AsyncEngine,
) -> None:
    many = [uuid4() for _ in range(300)]  # 300 x 37 bytes > PostgreSQL's 8000
    async with _listening(engine) as heard:
        async with engine.begin() as connection:
            await announce_new_tasks(connection, many)
        await _settle()

    assert heard == [None]


def test_a_payload_that_is_not_ids_means_look_for_all() -> None:
    task_id = uuid4()
    assert announced_task_ids(str(task_id)) == frozenset({task_id})
    assert announced_task_ids("") is None
    assert announced_task_ids("not-a-uuid") is None
