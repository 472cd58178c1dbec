"""The ops endpoint: health, readiness and metrics over real HTTP, checks against real NATS."""

from __future__ import annotations

import asyncio
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import httpx
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client import CollectorRegistry, Counter

from opspawn_contracts.subjects import Subjects
from opspawn_embedded import EmbeddedNats
from opspawn_observability.ops_server import (
    OpsServer,
    OpsSettings,
    ReadinessCheck,
    consumer_exists,
    nats_connected,
    ops_endpoint,
)


def _constant(value: bool) -> ReadinessCheck:
    async def check() -> bool:
        return value

    return check


async def _raises() -> bool:
    raise RuntimeError("the check itself is broken")


async def _hangs() -> bool:
    await asyncio.Event().wait()
    return True


@pytest.fixture
async def served() -> AsyncIterator[tuple[OpsServer, httpx.AsyncClient, Counter]]:
    registry = CollectorRegistry()
    counter = Counter("opspawn_test_things", "Things counted by the test.", registry=registry)
    server = OpsServer(
        {"good": _constant(True), "bad": _constant(False), "broken": _raises, "slow": _hangs},
        registry=registry,
        check_timeout=0.2,
    )
    port = await server.start("127.0.0.1", 0)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        yield server, client, counter
    await server.stop()


async def test_healthz_answers_alive(
    served: tuple[OpsServer, httpx.AsyncClient, Counter],
) -> None:
    _, client, _ = served
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "alive"}


async def test_readyz_names_each_failing_check_and_answers_503(
    served: tuple[OpsServer, httpx.AsyncClient, Counter],
) -> None:
    _, client, _ = served
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "not ready",
        "checks": {"good": "ok", "bad": "failing", "broken": "failing", "slow": "failing"},
    }


async def test_readyz_is_200_when_every_check_passes() -> None:
    server = OpsServer({"nats": _constant(True), "consumer": _constant(True)})
    port = await server.start("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/readyz")
    finally:
        await server.stop()
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"nats": "ok", "consumer": "ok"}}


async def test_metrics_exposes_the_registry_in_text_format_and_values_move(
    served: tuple[OpsServer, httpx.AsyncClient, Counter],
) -> None:
    _, client, counter = served
    before = await client.get("/metrics")
    assert before.status_code == 200
    assert before.headers["content-type"].startswith("text/plain")
    assert "opspawn_test_things_total 0.0" in before.text
    counter.inc(3)
    after = await client.get("/metrics")
    assert "opspawn_test_things_total 3.0" in after.text


async def test_unknown_paths_and_methods_are_refused(
    served: tuple[OpsServer, httpx.AsyncClient, Counter],
) -> None:
    _, client, _ = served
    assert (await client.get("/nope")).status_code == 404
    assert (await client.post("/readyz")).status_code == 405


async def test_healthz_gets_no_answer_while_the_event_loop_is_blocked() -> None:
    """What makes it a liveness probe: served by the loop, so a stuck loop cannot say 'alive'."""
    server = OpsServer({})
    port = await server.start("127.0.0.1", 0)
    outcome: list[BaseException | int] = []
    probed = threading.Event()

    def probe() -> None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=0.5) as reply:
                outcome.append(reply.status)
        except (urllib.error.URLError, TimeoutError) as error:
            outcome.append(error)
        finally:
            probed.set()

    threading.Thread(target=probe, daemon=True).start()
    # Block the loop (no await) until the probe has given up, as a stuck handler would.
    assert probed.wait(timeout=30)
    await server.stop()
    assert len(outcome) == 1
    assert isinstance(outcome[0], (TimeoutError, urllib.error.URLError)), outcome


async def test_endpoint_is_off_without_a_port() -> None:
    async with ops_endpoint(OpsSettings(), {}, service="test") as server:
        assert server is None


async def test_a_port_in_use_fails_start_naming_the_variables() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = OpsSettings(ops_host="127.0.0.1", ops_port=port)
        with pytest.raises(OSError, match="OPSPAWN_OPS_PORT"):
            async with ops_endpoint(settings, {}, service="test"):
                pass


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSPAWN_OPS_HOST", "0.0.0.0")
    monkeypatch.setenv("OPSPAWN_OPS_PORT", "9090")
    settings = OpsSettings()
    assert (settings.ops_host, settings.ops_port) == ("0.0.0.0", 9090)


async def test_consumer_check_follows_the_consumer_on_a_real_server(
    jetstream: JetStreamContext, subjects: Subjects
) -> None:
    check = consumer_exists(jetstream, subjects.work_stream, "ops-test-consumer")
    assert await check() is False
    await jetstream.add_consumer(
        subjects.work_stream,
        ConsumerConfig(durable_name="ops-test-consumer", ack_policy=AckPolicy.EXPLICIT),
    )
    assert await check() is True
    await jetstream.delete_consumer(subjects.work_stream, "ops-test-consumer")
    assert await check() is False


async def test_nats_check_fails_once_the_connection_is_closed(nats_server: EmbeddedNats) -> None:
    client = NatsClient()
    await client.connect(nats_server.url, connect_timeout=5)
    check = nats_connected(client)
    assert await check() is True
    await client.close()
    assert await check() is False
