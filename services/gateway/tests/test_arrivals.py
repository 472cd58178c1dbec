"""Read-after-write waiting: many waiters, one poller, bounded waits."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from uuid import uuid4

import pytest
from sqlalchemy import make_url
from sqlalchemy.exc import SQLAlchemyError

from gateway.arrivals import TaskArrivals
from opspawn_contracts.events import TaskSubmitted, TaskSubmittedData
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
