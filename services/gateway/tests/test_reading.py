from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

import pytest
from nats.js import JetStreamContext
from sqlalchemy import insert
from sqlalchemy.exc import DBAPIError

from gateway.api_errors import InvalidRequest
from gateway.pagination import TaskFilter
from gateway.reading import TaskEventView, TaskReader, parse_status, parse_task_id, read_only
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.task import TaskStatus
from opspawn_messaging.event_log import EventLog
from opspawn_readmodel.database import create_engine
from opspawn_readmodel.tables import projection_checkpoints


def test_parse_status_names_the_allowed_values() -> None:
    assert parse_status(None) is None
    assert parse_status("") is None
    assert parse_status("running") is TaskStatus.RUNNING
    with pytest.raises(InvalidRequest) as error:
        parse_status("RUNNING")
    assert str(error.value) == (
        "status 'RUNNING' is not one of: pending, running, completed, failed, cancelled"
    )


def test_parse_task_id() -> None:
    assert parse_task_id("00000000-0000-0000-0000-000000000001") == UUID(int=1)
    with pytest.raises(InvalidRequest, match="task_id '42' is not a UUID"):
        parse_task_id("42")


@pytest.mark.integration
async def test_the_read_only_engine_reads_and_refuses_writes(
    database_url: str, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        reader = TaskReader(read_only(engine), EventLog(jetstream, subjects))
        assert await reader.list_tasks("acme", TaskFilter()) == ([], None)
        with pytest.raises(DBAPIError, match="read-only transaction"):
            async with read_only(engine).begin() as connection:
                await connection.execute(
                    insert(projection_checkpoints).values(
                        projection="gateway", last_sequence=1, updated_at=datetime.now(UTC)
                    )
                )
    finally:
        await engine.dispose()


def test_an_event_stored_in_an_older_schema_version_is_served_in_the_current_one() -> None:
    """``task_events`` keeps events as stored; the API shows each in its type's current version."""
    stored = {
        "event_id": "6a3f2f4e-8f1e-4a55-9a4e-1f6a4c1b2d3e",
        "event_type": "TaskStarted",
        "schema_version": 1,
        "task_id": "0b7c8d9e-1f2a-4b3c-8d4e-5f6a7b8c9d0e",
        "occurred_at": "2026-12-01T12:00:00Z",
        "correlation_id": "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
        "data": {"attempt": 1, "runner_id": "r1"},
    }

    served = TaskEventView.from_payload(7, stored)

    assert (served.sequence, served.schema_version) == (7, 2)
    assert served.data == {"attempt": 1, "runner_id": "r1"}
    assert stored["schema_version"] == 1  # the stored document is left as it was
