"""The gateway's lifecycle: in-process ``run``, the real process with signals, and NATS outages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import httpx
import nats
import pytest

from gateway.app import Gateway, StartupError, run
from gateway.settings import GatewaySettings
from opspawn.v1 import tasks_pb2, tasks_pb2_grpc
from opspawn_contracts.subjects import Subjects
from opspawn_embedded import EmbeddedNats, free_port
from opspawn_readmodel.database import create_engine
from services.gateway.tests.conftest import SchedulerStandIn, bearer_auth

pytestmark = pytest.mark.integration


async def _wait_healthy(url: str, process: asyncio.subprocess.Process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=1) as client:
        while True:
            assert process.returncode is None, "the gateway exited during start-up"
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{url} not healthy after {timeout}s"
            await asyncio.sleep(0.05)


async def test_run_serves_until_stop_is_set_then_closes_both_ports(
    gateway_settings: GatewaySettings,
) -> None:
    http_port, grpc_port = free_port(), free_port()
    settings = gateway_settings.model_copy(update={"http_port": http_port, "grpc_port": grpc_port})
    stop = asyncio.Event()

    running = asyncio.create_task(run(settings, stop))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as http:
        deadline = time.monotonic() + 10
        while True:
            try:
                health = await http.get("/healthz")
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(running, timeout=10)

        assert health.json() == {"status": "ok"}
        with pytest.raises(httpx.ConnectError):
            await http.get("/healthz")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await tasks_pb2_grpc.TaskServiceStub(channel).ListTasks(
                tasks_pb2.ListTasksRequest(), timeout=1
            )
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_port_in_use_stops_start_up_naming_the_setting(
    gateway_settings: GatewaySettings,
) -> None:
    async with Gateway(gateway_settings) as first:
        http_taken = gateway_settings.model_copy(update={"http_port": first.http_port})
        grpc_taken = gateway_settings.model_copy(update={"grpc_port": first.grpc_port})
        with pytest.raises(StartupError, match="OPSPAWN_HTTP_PORT"):
            async with Gateway(http_taken):
                pass
        with pytest.raises(StartupError, match="OPSPAWN_GRPC_PORT"):
            async with Gateway(grpc_taken):
                pass


@pytest.mark.parametrize("access_log", [False, True], ids=["default-off", "on"])
async def test_a_line_per_request_only_with_the_access_log_on(
    gateway_settings: GatewaySettings, caplog: pytest.LogCaptureFixture, access_log: bool
) -> None:
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    settings = gateway_settings
    if access_log:
        settings = settings.model_copy(update={"http_access_log": True})
    async with Gateway(settings) as gateway, httpx.AsyncClient() as http:
        for _ in range(3):
            response = await http.get(f"http://127.0.0.1:{gateway.http_port}/healthz")
            assert response.status_code == 200
    lines = [record for record in caplog.records if record.name == "uvicorn.access"]
    assert len(lines) == (3 if access_log else 0)


async def test_an_unreachable_nats_stops_start_up_naming_the_setting(
    gateway_settings: GatewaySettings,
) -> None:
    unreachable = gateway_settings.model_copy(
        update={"nats_url": f"nats://127.0.0.1:{free_port()}", "nats_connect_timeout": 0.5}
    )

    with pytest.raises(StartupError, match="OPSPAWN_NATS_URL"):
        async with Gateway(unreachable):
            pass


@pytest.fixture
def gateway_environment(gateway_settings: GatewaySettings) -> dict[str, str]:
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("OPSPAWN_")
    }
    environment.update(
        OPSPAWN_NATS_URL=gateway_settings.nats_url,
        OPSPAWN_SUBJECT_PREFIX=gateway_settings.subject_prefix,
        OPSPAWN_DATABASE_URL=gateway_settings.database_url,
        OPSPAWN_HTTP_PORT=str(free_port()),
        OPSPAWN_GRPC_PORT=str(free_port()),
    )
    return environment


@pytest.fixture
async def gateway_process(
    gateway_environment: dict[str, str],
) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", env=gateway_environment, stdout=PIPE, stderr=PIPE
    )
    yield process
    if process.returncode is None:
        process.kill()
        await process.wait()


async def test_the_process_shuts_down_cleanly_on_sigterm(
    gateway_process: asyncio.subprocess.Process, gateway_environment: dict[str, str]
) -> None:
    port = gateway_environment["OPSPAWN_HTTP_PORT"]
    await _wait_healthy(f"http://127.0.0.1:{port}/healthz", gateway_process, timeout=30)

    gateway_process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(gateway_process.communicate(), timeout=20)

    log = stderr.decode()
    assert gateway_process.returncode == 0, log
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(record["service"] == "gateway" and record["level"] == "info" for record in records)
    assert "shutting down" in log
    assert "stopped" in log


async def test_the_process_refuses_to_start_without_a_database_url(
    gateway_environment: dict[str, str],
) -> None:
    del gateway_environment["OPSPAWN_DATABASE_URL"]

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", env=gateway_environment, stdout=PIPE, stderr=PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)

    assert process.returncode == 1
    assert "OPSPAWN_DATABASE_URL" in stderr.decode()


@contextlib.asynccontextmanager
async def _accepting_scheduler(
    server: EmbeddedNats, subjects: Subjects, database_url: str
) -> AsyncIterator[SchedulerStandIn]:
    client = await nats.connect(server.url, connect_timeout=5)
    engine = create_engine(database_url, pool_size=1)
    stand_in = SchedulerStandIn(client, client.jetstream(), subjects, engine)
    await stand_in.listen(accept_all=True)
    try:
        yield stand_in
    finally:
        await stand_in.close()
        await engine.dispose()
        await client.drain()


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A nats-server of this test's own, so stopping it disturbs no other test."""
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    yield server
    server.stop()


async def test_nats_outage_is_503_and_unavailable_and_recovers(
    private_nats: EmbeddedNats,
    gateway_settings: GatewaySettings,
    api_key: str,
    subjects: Subjects,
    database_url: str,
) -> None:
    settings = gateway_settings.model_copy(
        update={
            "nats_url": private_nats.url,
            "publish_timeout_seconds": 0.5,
        }
    )
    body = {"task_type": "agent_run", "input_data": {}}
    async with (
        Gateway(settings) as gateway,
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{gateway.http_port}",
            headers={"authorization": f"Bearer {api_key}"},
        ) as http,
        grpc.aio.insecure_channel(
            f"127.0.0.1:{gateway.grpc_port}", interceptors=bearer_auth(api_key)
        ) as channel,
    ):
        stub = tasks_pb2_grpc.TaskServiceStub(channel)
        await asyncio.to_thread(private_nats.stop, kill=True)

        refused = await http.post("/v1/tasks", json=body)
        with pytest.raises(grpc.aio.AioRpcError) as unavailable:
            await stub.CreateTask(tasks_pb2.CreateTaskRequest(task_type="agent_run"))
        healthy_meanwhile = await http.get("/healthz")
        not_ready_meanwhile = await http.get("/readyz")

        await asyncio.to_thread(private_nats.start)
        async with _accepting_scheduler(private_nats, subjects, database_url):
            deadline = time.monotonic() + 15
            while (accepted := await http.post("/v1/tasks", json=body)).status_code == 503:
                assert time.monotonic() < deadline, (
                    "submissions did not recover after NATS returned"
                )

    assert refused.status_code == 503
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert "nothing was stored, retry" in refused.json()["detail"]
    assert refused.headers["retry-after"] == "1"
    assert unavailable.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "nothing was stored, retry" in (unavailable.value.details() or "")
    assert healthy_meanwhile.status_code == 200
    assert not_ready_meanwhile.status_code == 503
    assert not_ready_meanwhile.json() == {
        "status": "not ready",
        "nats": "failing",
        "database": "ok",
    }
    assert accepted.status_code == 202
    assert accepted.json()["status"] == "pending"
