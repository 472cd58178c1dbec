"""API keys and tenants over real HTTP and gRPC: who may call, and what each tenant can see."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest

from gateway.app import Gateway
from gateway.settings import GatewaySettings
from opspawn.v1 import tasks_pb2, tasks_pb2_grpc
from opspawn_contracts.commands import SubmitTask
from opspawn_readmodel.api_keys import ApiKeyStore, hash_secret, parse_key
from opspawn_readmodel.database import create_engine
from opspawn_readmodel.tables import api_keys
from services.gateway.tests.conftest import (
    OTHER_TENANT,
    TENANT,
    SchedulerStandIn,
    bearer_auth,
    create_key,
)

pytestmark = pytest.mark.integration


async def _task_of_tenant_a(http: httpx.AsyncClient, scheduler: SchedulerStandIn) -> SubmitTask:
    async def play_scheduler() -> SubmitTask:
        command, _ = await scheduler.next_command()
        await scheduler.submit_and_start(command)
        return command

    projecting = asyncio.create_task(play_scheduler())
    response = await http.post(
        "/v1/tasks",
        json={"task_type": "agent_run", "input_data": {"goal": "a secret"}},
        headers={"Idempotency-Key": "shared-key"},
    )
    assert response.status_code == 202, response.text
    return await projecting


@pytest.fixture
async def other_http(gateway: Gateway, other_key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{gateway.http_port}",
        headers={"authorization": f"Bearer {other_key}"},
        timeout=10,
    ) as client:
        yield client


@pytest.fixture
async def other_stub(
    gateway: Gateway, other_key: str
) -> AsyncIterator[tasks_pb2_grpc.TaskServiceAsyncStub]:
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{gateway.grpc_port}", interceptors=bearer_auth(other_key)
    ) as channel:
        yield tasks_pb2_grpc.TaskServiceStub(channel)


async def test_another_tenant_cannot_see_or_touch_the_task_by_any_endpoint(
    http: httpx.AsyncClient,
    other_http: httpx.AsyncClient,
    other_stub: tasks_pb2_grpc.TaskServiceAsyncStub,
    scheduler: SchedulerStandIn,
) -> None:
    command = await _task_of_tenant_a(http, scheduler)
    task_id = str(command.task_id)
    not_found = f"no task with id {task_id}"

    rest_answers = [
        await other_http.get(f"/v1/tasks/{task_id}"),
        await other_http.get(f"/v1/tasks/{task_id}/events"),
        await other_http.get(f"/v1/tasks/{task_id}/stream"),
        await other_http.post(f"/v1/tasks/{task_id}/cancel"),
    ]
    listed = await other_http.get("/v1/tasks")
    grpc_errors = []
    for call in (
        other_stub.GetTask(tasks_pb2.GetTaskRequest(task_id=task_id)),
        other_stub.ListTaskEvents(tasks_pb2.ListTaskEventsRequest(task_id=task_id)),
        other_stub.CancelTask(tasks_pb2.CancelTaskRequest(task_id=task_id)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        grpc_errors.append(error.value)
    with pytest.raises(grpc.aio.AioRpcError) as watch_error:
        await other_stub.WatchTask(tasks_pb2.WatchTaskRequest(task_id=task_id)).read()
    grpc_errors.append(watch_error.value)
    grpc_listed = await other_stub.ListTasks(tasks_pb2.ListTasksRequest())
    owner_view = await http.get(f"/v1/tasks/{task_id}")

    for answer in rest_answers:
        assert answer.status_code == 404, answer.text
        assert answer.json()["detail"] == not_found
    assert listed.json() == {"items": [], "next_cursor": None}
    for rpc_error in grpc_errors:
        assert rpc_error.code() == grpc.StatusCode.NOT_FOUND
        assert rpc_error.details() == not_found
    assert list(grpc_listed.tasks) == []
    assert owner_view.status_code == 200
    assert owner_view.json()["status"] == "running"


async def test_the_same_idempotency_key_in_another_tenant_is_another_task(
    http: httpx.AsyncClient, other_http: httpx.AsyncClient, scheduler: SchedulerStandIn
) -> None:
    mine = await _task_of_tenant_a(http, scheduler)

    async def play_scheduler() -> SubmitTask:
        command, _ = await scheduler.next_command()
        await scheduler.submit_and_start(command)
        return command

    projecting = asyncio.create_task(play_scheduler())
    theirs_response = await other_http.post(
        "/v1/tasks",
        json={"task_type": "agent_run", "input_data": {"goal": "a secret"}},
        headers={"Idempotency-Key": "shared-key"},
    )
    theirs = await projecting

    assert theirs_response.status_code == 202
    assert "idempotent-replayed" not in theirs_response.headers
    assert theirs.task_id != mine.task_id
    assert (mine.tenant, theirs.tenant) == (TENANT, OTHER_TENANT)


@pytest.mark.parametrize(
    ("authorization", "detail"),
    [
        (None, "needs an API key: send 'Authorization: Bearer <key>'"),
        ("Basic dXNlcjpwYXNz", "must be 'Bearer <key>'"),
        ("Token abc", "must be 'Bearer <key>'"),
        ("Bearer not-a-key", "the API key is not valid"),
        (
            "Bearer opsk_0123456789abcdef_" + "A" * 43,
            "the API key is not valid (unknown, malformed or revoked)",
        ),
    ],
)
async def test_calls_without_a_valid_key_are_401_and_unauthenticated(
    gateway: Gateway, authorization: str | None, detail: str
) -> None:
    headers = {"authorization": authorization} if authorization else {}
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{gateway.http_port}", headers=headers
    ) as client:
        answers = [
            await client.post("/v1/tasks", json={"task_type": "agent_run"}),
            await client.get("/v1/tasks"),
            await client.get("/v1/tasks/00000000-0000-0000-0000-000000000001"),
        ]
        open_answers = [await client.get(path) for path in ("/healthz", "/schema/openapi.json")]
    metadata = (("authorization", authorization),) if authorization else None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        stub = tasks_pb2_grpc.TaskServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.ListTasks(tasks_pb2.ListTasksRequest(), metadata=metadata)

    for answer in answers:
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == 'Bearer realm="opspawn"'
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert detail in answer.json()["detail"]
    assert [answer.status_code for answer in open_answers] == [200, 200]
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert detail in (error.value.details() or "")


async def test_a_read_only_key_reads_but_cannot_write(
    gateway: Gateway,
    database_url: str,
    http: httpx.AsyncClient,
    scheduler: SchedulerStandIn,
) -> None:
    command = await _task_of_tenant_a(http, scheduler)
    reader_key = await create_key(database_url, TENANT, read_only=True)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{gateway.http_port}",
        headers={"authorization": f"Bearer {reader_key}"},
    ) as reader:
        got = await reader.get(f"/v1/tasks/{command.task_id}")
        submit = await reader.post("/v1/tasks", json={"task_type": "agent_run"})
        cancel = await reader.post(f"/v1/tasks/{command.task_id}/cancel")
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{gateway.grpc_port}", interceptors=bearer_auth(reader_key)
    ) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await tasks_pb2_grpc.TaskServiceStub(channel).CreateTask(
                tasks_pb2.CreateTaskRequest(task_type="agent_run")
            )

    assert got.status_code == 200
    for refused in (submit, cancel):
        assert refused.status_code == 403
        assert "is read-only" in refused.json()["detail"]
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_revoked_key_is_refused_once_the_cache_period_ends(
    gateway_settings: GatewaySettings, database_url: str
) -> None:
    settings = gateway_settings.model_copy(update={"auth_cache_seconds": 0.0})
    engine = create_engine(database_url, pool_size=1)
    store = ApiKeyStore(engine)
    issued = await store.create(TENANT, name="ci")
    try:
        async with (
            Gateway(settings) as gateway,
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{gateway.http_port}",
                headers={"authorization": f"Bearer {issued.key}"},
            ) as client,
        ):
            before = await client.get("/v1/tasks")
            assert await store.revoke(issued.api_key.key_id)
            after = await client.get("/v1/tasks")
        assert not await store.revoke(issued.api_key.key_id)
    finally:
        await engine.dispose()

    assert before.status_code == 200
    assert after.status_code == 401


async def test_keys_are_stored_hashed(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        issued = await ApiKeyStore(engine).create(TENANT, name="hashing")
        async with engine.connect() as connection:
            row = (await connection.execute(api_keys.select())).one()
    finally:
        await engine.dispose()

    parsed = parse_key(issued.key)
    assert parsed is not None
    key_id, secret = parsed
    assert row.key_id == key_id
    assert secret not in str(tuple(row))
    assert row.secret_hash == hash_secret(secret)
    assert (row.tenant, row.name, row.read_only, row.revoked_at) == (TENANT, "hashing", False, None)


async def test_development_mode_needs_no_key_and_says_so(
    gateway_settings: GatewaySettings,
    scheduler: SchedulerStandIn,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = gateway_settings.model_copy(update={"dev_disable_auth": True})
    caplog.set_level(logging.WARNING, logger="gateway.app")

    async def play_scheduler() -> Any:
        command, _ = await scheduler.next_command()
        await scheduler.submit_and_start(command)
        return command

    async with (
        Gateway(settings) as gateway,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.http_port}") as client,
    ):
        projecting = asyncio.create_task(play_scheduler())
        response = await client.post("/v1/tasks", json={"task_type": "agent_run"})
        command = await projecting

    assert response.status_code == 202
    assert command.tenant == "default"
    assert "authentication is OFF (OPSPAWN_DEV_DISABLE_AUTH" in caplog.text
