from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

import pytest
from sqlalchemy import insert
from sqlalchemy.exc import DBAPIError

from gateway.api_errors import InvalidRequest
from gateway.pagination import TaskFilter
from gateway.reading import TaskReader, parse_status, parse_task_id, read_only
from opspawn_contracts.task import TaskStatus
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
async def test_the_read_only_engine_reads_and_refuses_writes(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        reader = TaskReader(read_only(engine))
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
