"""Sessions outside the engine's pool: connected from the engine's URL, with its JSON handling."""

from __future__ import annotations

import pytest

from opspawn_readmodel.database import create_engine, open_session

pytestmark = pytest.mark.integration


async def test_a_session_reads_and_writes_json_as_the_engine_does(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        session = await open_session(
            engine, server_settings={"application_name": "opspawn-test-session"}
        )
        try:
            decoded = await session.fetchval("SELECT $1::jsonb", '{"a": [1, 2.5, null]}')
            name = await session.fetchval("SELECT current_setting('application_name')")
            database = await session.fetchval("SELECT current_database()")
        finally:
            await session.close()
    finally:
        await engine.dispose()
    assert decoded == {"a": [1, 2.5, None]}
    assert name == "opspawn-test-session"
    assert database == engine.url.database
