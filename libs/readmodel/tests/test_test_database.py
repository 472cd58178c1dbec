"""The shared fixture gives every test a database of its own, migrated to the head revision."""

from __future__ import annotations

from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from opspawn_readmodel.migrate import alembic_config


async def test_each_test_gets_its_own_migrated_database(database_url: str) -> None:
    engine = create_async_engine(database_url)
    async with engine.connect() as connection:
        count = await connection.scalar(text("SELECT count(*) FROM tasks"))
        version = await connection.scalar(text("SELECT version_num FROM alembic_version"))
    await engine.dispose()
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert (count, version) == (0, head)
