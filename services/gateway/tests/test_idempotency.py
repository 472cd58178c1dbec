"""Idempotent submission over real HTTP and gRPC: one task per key and request, 409 otherwise."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import struct_pb2
from nats.js import JetStreamContext

from opspawn.v1 import tasks_pb2, tasks_pb2_grpc
from opspawn_contracts.subjects import Subjects
from services.gateway.tests.conftest import SchedulerStandIn

pytestmark = pytest.mark.integration

BODY: dict[str, Any] = {
    "task_type": "agent_run",
    "input_data": {"plan": [{"tool": "math.add", "args": {"a": 1, "b": 2}}]},
    "options": {"timeout_seconds": 30, "max_attempts": 2, "allowed_tools": ["math.*"]},
}


async def _submissions(jetstream: JetStreamContext, subjects: Subjects) -> int:
    """TaskSubmitted events in the whole stream."""
    info = await jetstream.stream_info(subjects.events_stream, subjects_filter=">")
    return sum(
        count
        for subject, count in (info.state.subjects or {}).items()
        if subject.endswith(".TaskSubmitted")
    )


async def test_20_concurrent_identical_posts_make_one_task(
    http: httpx.AsyncClient,
    accepting_scheduler: SchedulerStandIn,
    jetstream: JetStreamContext,
    subjects: Subjects,
) -> None:
    headers = {"Idempotency-Key": "order-42"}
    responses = await asyncio.gather(
        *(http.post("/v1/tasks", json=BODY, headers=headers) for _ in range(20))
    )
    [command] = accepting_scheduler.accepted

    assert {response.status_code for response in responses} == {202}
    assert {response.json()["task_id"] for response in responses} == {str(command.task_id)}
    assert await _submissions(jetstream, subjects) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 19
    task = responses[0].json()
    assert task["idempotency_key"] == "order-42"
    assert task["options"] == BODY["options"]
    assert command.options.allowed_tools == ["math.*"]
    listed = (await http.get("/v1/tasks")).json()["items"]
    assert [item["task_id"] for item in listed] == [str(command.task_id)]


async def test_a_retry_later_gets_the_task_as_it_is_now_and_another_body_is_409(
    http: httpx.AsyncClient,
    accepting_scheduler: SchedulerStandIn,
    jetstream: JetStreamContext,
    subjects: Subjects,
) -> None:
    headers = {"Idempotency-Key": "nightly-report-2026-11-25"}
    first = await http.post("/v1/tasks", json=BODY, headers=headers)
    [command] = accepting_scheduler.accepted
    await accepting_scheduler.complete(command, {"result": 3})

    retry = await http.post("/v1/tasks", json=BODY, headers=headers)
    reordered = await http.post(
        "/v1/tasks",
        json={
            "options": BODY["options"],
            "input_data": BODY["input_data"],
            "task_type": "agent_run",
        },
        headers=headers,
    )
    other = await http.post("/v1/tasks", json={**BODY, "input_data": {}}, headers=headers)
    bad_key = await http.post("/v1/tasks", json=BODY, headers={"Idempotency-Key": "two words"})

    assert first.status_code == 202
    assert "idempotent-replayed" not in first.headers
    for same in (retry, reordered):
        assert same.status_code == 202
        assert same.headers["idempotent-replayed"] == "true"
        assert same.json()["task_id"] == str(command.task_id)
        assert same.json()["status"] == "completed"
    assert other.status_code == 409
    assert other.headers["content-type"].startswith("application/problem+json")
    assert (
        f"already used for task {command.task_id} with a different request"
        in (other.json()["detail"])
    )
    assert bad_key.status_code == 400
    assert "Idempotency-Key must be" in bad_key.json()["detail"]
    assert await _submissions(jetstream, subjects) == 1


async def test_grpc_create_is_idempotent_and_reports_already_exists(
    task_stub: tasks_pb2_grpc.TaskServiceAsyncStub,
    http: httpx.AsyncClient,
    accepting_scheduler: SchedulerStandIn,
) -> None:
    input_data = struct_pb2.Struct()
    input_data.update(BODY["input_data"])
    request = tasks_pb2.CreateTaskRequest(
        task_type="agent_run",
        input_data=input_data,
        idempotency_key="grpc-1",
        options=tasks_pb2.TaskOptions(timeout_seconds=30, max_attempts=2, allowed_tools=["math.*"]),
    )
    first = await task_stub.CreateTask(request)

    again = await task_stub.CreateTask(request)
    # The same request over REST is the same task: the key is the tenant's, not the API's.
    over_rest = await http.post("/v1/tasks", json=BODY, headers={"Idempotency-Key": "grpc-1"})
    changed = tasks_pb2.CreateTaskRequest()
    changed.CopyFrom(request)
    changed.options.max_attempts = 3
    with pytest.raises(grpc.aio.AioRpcError) as conflict:
        await task_stub.CreateTask(changed)

    assert not first.replayed
    assert again.replayed
    assert again.task.task_id == first.task.task_id
    assert first.task.idempotency_key == "grpc-1"
    assert first.task.options.max_attempts == 2
    assert list(first.task.options.allowed_tools) == ["math.*"]
    assert over_rest.json()["task_id"] == first.task.task_id
    assert conflict.value.code() == grpc.StatusCode.ALREADY_EXISTS
