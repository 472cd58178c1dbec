"""The embedded servers of ``opspawn up`` come back after a crash with their data and address, and
the embedded nats-server fsyncs before it acknowledges unless told otherwise."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import nats
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from opspawn_embedded import EmbeddedNats, EmbeddedPostgres

pytestmark = pytest.mark.integration


async def _execute(url: str, statement: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


async def _query(url: str, statement: str) -> object:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return (await connection.execute(text(statement))).scalar()
    finally:
        await engine.dispose()


async def test_postgres_killed_with_sigkill_starts_again_on_the_same_url_with_its_data(
    tmp_path: Path,
) -> None:
    server = EmbeddedPostgres(tmp_path / "pg", log_file=tmp_path / "postgres.log")
    await asyncio.to_thread(server.start)
    try:
        url = server.url()
        await _execute(url, "CREATE TABLE kept AS SELECT 42 AS answer")
        assert server.exit_code() is None

        server.stop(kill=True)
        assert server.exit_code() == -9
        await asyncio.to_thread(server.start)

        assert server.url() == url
        assert server.exit_code() is None
        assert await _query(url, "SELECT answer FROM kept") == 42
        assert "automatic recovery in progress" in (tmp_path / "postgres.log").read_text()
    finally:
        await asyncio.to_thread(server.stop)
    assert server.exit_code() == 0


async def test_a_postgres_left_running_by_an_earlier_run_is_replaced(tmp_path: Path) -> None:
    """``opspawn up`` killed outright leaves its PostgreSQL running on the data directory; the
    next start stops it (its lock would refuse a second server) rather than failing."""
    earlier = EmbeddedPostgres(tmp_path / "pg")
    await asyncio.to_thread(earlier.start)
    try:
        await _execute(earlier.url(), "CREATE TABLE kept AS SELECT 7 AS answer")
        later = EmbeddedPostgres(tmp_path / "pg")
        await asyncio.to_thread(later.start)
        try:
            assert earlier.exit_code() == 0
            assert await _query(later.url(), "SELECT answer FROM kept") == 7
        finally:
            await asyncio.to_thread(later.stop)
    finally:
        await asyncio.to_thread(earlier.stop)


async def test_postgres_that_cannot_start_says_why(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg", log_file=tmp_path / "postgres.log")
    await asyncio.to_thread(server.start)
    await asyncio.to_thread(server.stop)
    (tmp_path / "pg" / "postgresql.conf").write_text("shared_buffers = 'plenty'\n")
    with pytest.raises(RuntimeError, match="PostgreSQL exited with 1 at start") as failure:
        await asyncio.to_thread(server.start)
    assert "shared_buffers" in str(failure.value)


async def test_nats_killed_with_sigkill_starts_again_on_the_same_port_with_its_streams(
    tmp_path: Path,
) -> None:
    server = EmbeddedNats(tmp_path / "nats", log_file=tmp_path / "nats.log")
    await asyncio.to_thread(server.start)
    try:
        url = server.url
        client = await nats.connect(url)
        js = client.jetstream()
        await js.add_stream(name="KEPT", subjects=["kept.>"])
        acknowledged = await js.publish("kept.one", b"acknowledged before the crash")
        await client.close()

        server.stop(kill=True)
        assert server.exit_code() == -9
        await asyncio.to_thread(server.start)

        assert server.url == url
        client = await nats.connect(url)
        stored = await client.jetstream().get_msg("KEPT", acknowledged.seq)
        await client.close()
        assert stored.data == b"acknowledged before the crash"
    finally:
        await asyncio.to_thread(server.stop)
    assert server.exit_code() == 0


@pytest.mark.parametrize("sync_always", [True, False])
async def test_nats_fsyncs_every_write_unless_told_otherwise(
    tmp_path: Path, sync_always: bool
) -> None:
    """What the running server reports (``/varz``), not what the config file says."""
    server = EmbeddedNats(tmp_path / "nats", sync_always=sync_always)
    await asyncio.to_thread(server.start)
    try:
        async with httpx.AsyncClient() as http:
            varz = await http.get(f"http://127.0.0.1:{server.monitor_port}/varz")
        jetstream = varz.raise_for_status().json()["jetstream"]["config"]
    finally:
        await asyncio.to_thread(server.stop)
    assert jetstream.get("sync_always", False) is sync_always
    assert EmbeddedNats.__dataclass_fields__["sync_always"].default is True
