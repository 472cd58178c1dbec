"""Start-up against a NATS that is not there fails fast, naming the variable."""

from __future__ import annotations

import time

import pytest

from opspawn_embedded import EmbeddedNats, free_port
from opspawn_messaging.nats_connection import NatsUnavailable, connect
from opspawn_messaging.settings import ServiceSettings


async def test_first_connect_is_bounded_and_names_the_variable() -> None:
    settings = ServiceSettings(nats_url=f"nats://127.0.0.1:{free_port()}", nats_connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(NatsUnavailable, match="OPSPAWN_NATS_URL"):
        await connect(settings, name="test")
    assert time.monotonic() - started < 3


async def test_connects_to_a_live_server(nats_server: EmbeddedNats) -> None:
    client = await connect(ServiceSettings(nats_url=nats_server.url), name="test")
    assert client.is_connected
    await client.close()
