"""The migrations build the event-derived tables exactly as ``tables.py`` describes them.

A shadow rebuild (``opspawn replay --schema``) creates its tables from ``tables.py`` and is then
swapped in for the migrated ones, so the two must agree: columns, types, indexes, comments.
"""

from __future__ import annotations

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from opspawn_readmodel.database import create_engine
from opspawn_readmodel.tables import metadata

pytestmark = pytest.mark.integration


EVENT_DERIVED = {"tasks", "task_events", "projection_checkpoints"}


def _event_derived(item: Any, name: str | None, kind: str, reflected: bool, other: Any) -> bool:
    table = item if kind == "table" else getattr(item, "table", None)
    return getattr(table, "name", name) in EVENT_DERIVED


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={"compare_server_default": False, "include_object": _event_derived},
    )
    return list(compare_metadata(context, metadata))


async def test_the_migrated_database_matches_the_table_definitions(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            differences = await connection.run_sync(_differences)
    finally:
        await engine.dispose()
    assert differences == []
