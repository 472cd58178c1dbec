"""The shared fixtures give real, isolated servers."""

from __future__ import annotations

from uuid import uuid4

import pytest
from alembic.script import ScriptDirectory
from nats.js import JetStreamContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from opspawn_contracts.event_log import ConcurrencyConflict, EventLog
from opspawn_contracts.events import TaskStarted, TaskStartedData, TaskSubmitted, TaskSubmittedData
from opspawn_contracts.subjects import Subjects
from opspawn_readmodel.migrate import alembic_config


async def test_event_log_appends_in_order_and_rejects_interleaving(
    jetstream: JetStreamContext, subjects: Subjects
) -> None:
    log = EventLog(jetstream, subjects)
    task_id, correlation = uuid4(), uuid4()
    submitted = TaskSubmitted(
        task_id=task_id,
        correlation_id=correlation,
        data=TaskSubmittedData(task_type="agent_run", input_data={"goal": "x"}),
    )
    first = await log.append(submitted, expected_version=0)
    assert await log.append(submitted) == first  # deduplicated by event id
    with pytest.raises(ConcurrencyConflict):  # the stale expectation is checked first
        await log.append(submitted, expected_version=0)
    started = TaskStarted(
        task_id=task_id, correlation_id=correlation, data=TaskStartedData(attempt=1, runner_id="r")
    )
    with pytest.raises(ConcurrencyConflict):
        await log.append(started, expected_version=0)
    second = await log.append(started, expected_version=first)
    history = await log.task_history(task_id)
    assert [(stored.sequence, stored.event) for stored in history] == [
        (first, submitted),
        (second, started),
    ]


async def test_each_test_gets_its_own_migrated_database(database_url: str) -> None:
    engine = create_async_engine(database_url)
    async with engine.connect() as connection:
        count = await connection.scalar(text("SELECT count(*) FROM tasks"))
        version = await connection.scalar(text("SELECT version_num FROM alembic_version"))
    await engine.dispose()
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert (count, version) == (0, head)
