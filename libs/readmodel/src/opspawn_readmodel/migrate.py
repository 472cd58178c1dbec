"""Running the Alembic migrations programmatically (the scheduler at start, ``opspawn migrate``).

An advisory lock serialises concurrent migrators, so several schedulers may start at once.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import create_async_engine

from opspawn_readmodel.database import asyncpg_url

MIGRATIONS = Path(__file__).parent / "migrations"
_LOCK_KEY = 0x0795_A11E


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    command.upgrade(alembic_config(connection), "head")


async def migrate(database_url: str) -> None:
    """Bring the database at ``database_url`` to the newest schema."""
    engine = create_async_engine(asyncpg_url(database_url))
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_upgrade)
    finally:
        await engine.dispose()
