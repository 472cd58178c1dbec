"""Read-after-write waiting: many waiters, one look for all of them, woken by the projection's
announcements, and still answered when announcements are missed or the listener is cut off."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from uuid import uuid4

import pytest
from sqlalchemy import event as sqlalchemy_events
from sqlalchemy import make_url, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.arrivals import TaskArrivals
from opspawn_contracts.events import TaskSubmitted, TaskSubmittedData
from opspawn_readmodel.announcements import LISTENER_APPLICATION_NAME
from opspawn_readmodel.database import create_engine
from services.gateway.tests.conftest import SchedulerStandIn

pytestmark = pytest.mark.integration


def _submitted() -> TaskSubmitted:
    task_id = uuid4()
    return TaskSubmitted(
        task_id=task_id,
        correlation_id=task_id,
        occurred_at=datetime.now(UTC),
        data=TaskSubmittedData(task_type="agent_run", input_data={}),
    )


async def test_waiters_wake_when_their_task_arrives_and_time_out_otherwise(
    database_url: str, scheduler: SchedulerStandIn
) -> None:
    engine = create_engine(database_url, pool_size=2)
    arrivals = TaskArrivals(engine)
    events = [_submitted() for _ in range(30)]
    try:
        waiting = [
            asyncio.create_task(arrivals.wait(event.task_id, timeout=10))
            for event in events
            for _ in range(2)
        ]
        never = asyncio.create_task(arrivals.wait(uuid4(), timeout=0.2))
        await asyncio.sleep(0.05)
        await scheduler.project(*events)
        arrived = await asyncio.gather(*waiting)
        missing = await never
    finally:
        await arrivals.close()
        await engine.dispose()

    assert [task.task_id if task else None for task in arrived] == [
        event.task_id for event in events for _ in range(2)
    ]
    assert missing is None


async def test_an_unreadable_read_model_is_raised_to_the_waiter(database_url: str) -> None:
    missing = make_url(database_url).set(database="no_such_database")
    engine = create_engine(missing.render_as_string(hide_password=False), pool_size=1)
    arrivals = TaskArrivals(engine)
    try:
        with pytest.raises((SQLAlchemyError, OSError)):
            await arrivals.wait(uuid4(), timeout=5)
    finally:
        await arrivals.close()
        await engine.dispose()


async def _until_listening(arrivals: TaskArrivals, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not arrivals.listening:
        assert time.monotonic() < deadline, "the arrivals never listened for announcements"
        await asyncio.sleep(0.01)


async def _first_wait(arrivals: TaskArrivals) -> None:
    """Start the listener (it starts with the first wait), let it listen, and let the look for
    everything that listening begins with go by."""
    assert await arrivals.wait(uuid4(), timeout=0.01) is None
    await _until_listening(arrivals)
    assert await arrivals.wait(uuid4(), timeout=0.1) is None


async def test_an_announcement_wakes_its_waiter_without_polling(
    database_url: str, scheduler: SchedulerStandIn
) -> None:
    """With polling set to an hour, only the projection's announcement can answer in time."""
    engine = create_engine(database_url, pool_size=2)
    arrivals = TaskArrivals(engine, poll_interval=3600, look_anyway_interval=3600)
    event = _submitted()
    try:
        await _first_wait(arrivals)
        waiting = asyncio.create_task(arrivals.wait(event.task_id, timeout=10))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await scheduler.project(event)
        arrived = await waiting
        waited = time.monotonic() - started
    finally:
        await arrivals.close()
        await engine.dispose()

    assert arrived is not None
    assert arrived.task_id == event.task_id
    assert waited < 5, f"answered after {waited:.1f} s: not by the announcement"


async def test_while_listening_the_looks_read_through_the_listening_session(
    database_url: str, scheduler: SchedulerStandIn
) -> None:
    """A look through the pool costs a checkout, a ping and a transaction; through the session
    that listens anyway it is one statement. So while it listens, no look takes a pooled
    connection."""
    engine = create_engine(database_url, pool_size=2)
    arrivals = TaskArrivals(engine, poll_interval=3600, look_anyway_interval=3600)
    checkouts: list[object] = []
    sqlalchemy_events.listen(
        engine.sync_engine, "checkout", lambda *connection: checkouts.append(connection)
    )
    submitted = [_submitted() for _ in range(5)]
    try:
        await _first_wait(arrivals)
        checkouts.clear()
        arrived = []
        for one in submitted:
            waiting = asyncio.create_task(arrivals.wait(one.task_id, timeout=10))
            await asyncio.sleep(0.02)
            await scheduler.project(one)
            arrived.append(await waiting)
    finally:
        await arrivals.close()
        await engine.dispose()

    assert [task.task_id if task else None for task in arrived] == [
        one.task_id for one in submitted
    ]
    assert checkouts == []


async def test_a_task_stored_without_announcement_is_still_found(
    database_url: str, scheduler: SchedulerStandIn
) -> None:
    engine = create_engine(database_url, pool_size=2)
    arrivals = TaskArrivals(engine, look_anyway_interval=0.05)
    event = _submitted()
    try:
        await _first_wait(arrivals)
        waiting = asyncio.create_task(arrivals.wait(event.task_id, timeout=10))
        await asyncio.sleep(0.05)
        await scheduler.project(event, announce=False)
        arrived = await waiting
    finally:
        await arrivals.close()
        await engine.dispose()

    assert arrived is not None
    assert arrived.task_id == event.task_id


async def _terminate_listening_session(database_url: str) -> int:
    admin: AsyncEngine = create_engine(database_url, pool_size=1)
    try:
        async with admin.connect() as connection:
            ended = await connection.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = :listener AND datname = current_database()"
                ),
                {"listener": LISTENER_APPLICATION_NAME},
            )
    finally:
        await admin.dispose()
    return int(ended or 0)


async def test_a_lost_listening_session_is_replaced_and_waiters_are_answered_meanwhile(
    database_url: str, scheduler: SchedulerStandIn
) -> None:
    engine = create_engine(database_url, pool_size=2)
    arrivals = TaskArrivals(engine, look_anyway_interval=3600)
    before, during, after = _submitted(), _submitted(), _submitted()
    try:
        await _first_wait(arrivals)
        waiting = asyncio.create_task(arrivals.wait(before.task_id, timeout=10))
        await asyncio.sleep(0.05)
        await scheduler.project(before)
        assert await waiting is not None

        assert await _terminate_listening_session(database_url) == 1
        waiting = asyncio.create_task(arrivals.wait(during.task_id, timeout=10))
        await scheduler.project(during)
        assert await waiting is not None, "not answered while the listener was reconnecting"

        await _until_listening(arrivals)
        waiting = asyncio.create_task(arrivals.wait(after.task_id, timeout=10))
        await asyncio.sleep(0.05)
        await scheduler.project(after)
        assert await waiting is not None
    finally:
        await arrivals.close()
        await engine.dispose()


async def test_a_task_announced_before_its_request_waits_is_answered_at_once(
    database_url: str, scheduler: SchedulerStandIn
) -> None:
    """The gateway's loop can run the announcement before the request resumes from its
    publish; with looks for everything an hour apart, only the remembered announcement helps."""
    engine = create_engine(database_url, pool_size=2)
    arrivals = TaskArrivals(engine, poll_interval=3600, look_anyway_interval=3600)
    event = _submitted()
    try:
        await _first_wait(arrivals)
        await scheduler.project(event)
        await asyncio.sleep(0.2)  # the announcement has been heard, with nobody waiting
        arrived = await arrivals.wait(event.task_id, timeout=5)
    finally:
        await arrivals.close()
        await engine.dispose()

    assert arrived is not None
    assert arrived.task_id == event.task_id


async def test_a_missed_announcement_is_found_while_other_announcements_keep_coming(
    database_url: str, scheduler: SchedulerStandIn
) -> None:
    """Steady traffic must not postpone the look for every waited-for task."""
    engine = create_engine(database_url, pool_size=4)
    arrivals = TaskArrivals(engine, look_anyway_interval=0.05)
    missed = _submitted()
    traffic_for = 3.0
    try:
        await _first_wait(arrivals)
        waiting = asyncio.create_task(arrivals.wait(missed.task_id, timeout=10))
        await asyncio.sleep(0.05)

        async def traffic() -> None:
            until = time.monotonic() + traffic_for
            while time.monotonic() < until:
                other = _submitted()
                answered = asyncio.create_task(arrivals.wait(other.task_id, timeout=10))
                await asyncio.sleep(0.01)
                await scheduler.project(other)
                assert await answered is not None

        steady = asyncio.create_task(traffic())
        await asyncio.sleep(0.1)
        stored = time.monotonic()
        await scheduler.project(missed, announce=False)
        arrived = await waiting
        waited = time.monotonic() - stored
        await steady
    finally:
        await arrivals.close()
        await engine.dispose()

    assert arrived is not None
    assert waited < traffic_for / 2, f"found after {waited:.2f} s, when the traffic stopped"
