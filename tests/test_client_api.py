"""The client API against the whole system (every service its own process, real NATS and
Postgres): cancelling a running task, following it live over SSE and WatchTask, and
submitting exactly once under concurrent retries.

The system runs as ``opspawn up`` runs it, with authentication off; the API-key and tenant
behaviour is covered over real HTTP and gRPC in ``services/gateway/tests/test_auth.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest

from opspawn.v1 import tasks_pb2, tasks_pb2_grpc
from opspawn_cli.demo import wait_terminal
from opspawn_cli.system import LocalSystem

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

TERMINAL = ("TaskCompleted", "TaskFailed", "TaskCancelled")


async def _wait_status(
    rest: httpx.AsyncClient, task_id: str, status: str, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        task: dict[str, Any] = (await rest.get(f"/v1/tasks/{task_id}")).json()
        if task["status"] == status:
            return task
        assert time.monotonic() < deadline, f"task not {status} after {timeout}s: {task}"
        await asyncio.sleep(0.02)


async def test_cancel_of_a_running_task_ends_it_cancelled_within_2_seconds(
    rest: httpx.AsyncClient,
) -> None:
    plan = [{"tool": "util.sleep", "args": {"seconds": 5}}, {"tool": "math.add", "args": {}}]
    submitted = await rest.post(
        "/v1/tasks", json={"task_type": "agent_run", "input_data": {"plan": plan}}
    )
    task_id = submitted.json()["task_id"]
    await _wait_status(rest, task_id, "running", timeout=10)

    asked = time.monotonic()
    accepted = await rest.post(f"/v1/tasks/{task_id}/cancel", json={"reason": "no longer needed"})
    cancelled = await _wait_status(rest, task_id, "cancelled", timeout=2)
    took = time.monotonic() - asked
    again = await rest.post(f"/v1/tasks/{task_id}/cancel")
    events = (await rest.get(f"/v1/tasks/{task_id}/events")).json()

    assert accepted.status_code == 202
    assert accepted.json()["status"] == "running"
    assert took < 2.0
    assert cancelled["error_message"] == "no longer needed"
    assert again.status_code == 409
    cancels = [event for event in events if event["event_type"] == "TaskCancelled"]
    assert len(cancels) == 1
    assert not any(event["event_type"] == "TaskCompleted" for event in events)


async def _sse(
    rest: httpx.AsyncClient, task_id: str, last_event_id: str | None, stop_after: int | None
) -> list[dict[str, str]]:
    """SSE messages of the task's stream, until it ends or ``stop_after`` were read."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    messages: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    async with rest.stream("GET", f"/v1/tasks/{task_id}/stream", headers=headers) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line:
                if "data" in fields:
                    messages.append(fields)
                    if stop_after is not None and len(messages) == stop_after:
                        return messages
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
    return messages


async def _watch(channel: grpc.aio.Channel, task_id: str) -> AsyncIterator[tasks_pb2.TaskEvent]:
    stub = tasks_pb2_grpc.TaskServiceStub(channel)
    first = stub.WatchTask(tasks_pb2.WatchTaskRequest(task_id=task_id))
    seen = 0
    async for event in first:
        yield event
        seen = event.sequence
        break
    first.cancel()
    async for event in stub.WatchTask(
        tasks_pb2.WatchTaskRequest(task_id=task_id, after_sequence=seen)
    ):
        yield event


async def test_sse_and_watch_follow_a_running_task_once_in_order_across_a_reconnect(
    system: LocalSystem, rest: httpx.AsyncClient
) -> None:
    plan = [
        {"tool": "math.add", "args": {"a": 1, "b": 2}},
        {"tool": "util.sleep", "args": {"seconds": 0.5}},
        {"tool": "math.multiply", "args": {"a": 3, "b": 4}},
    ]
    submitted = await rest.post(
        "/v1/tasks", json={"task_type": "agent_run", "input_data": {"plan": plan}}
    )
    task_id = submitted.json()["task_id"]

    async def follow_with_sse() -> list[dict[str, str]]:
        before = await _sse(rest, task_id, None, stop_after=3)
        return before + await _sse(rest, task_id, before[-1]["id"], stop_after=None)

    async def follow_with_grpc() -> list[tasks_pb2.TaskEvent]:
        async with grpc.aio.insecure_channel(system.grpc_target) as channel:
            return [event async for event in _watch(channel, task_id)]

    async with asyncio.timeout(30):
        sse, watched = await asyncio.gather(follow_with_sse(), follow_with_grpc())
    # The streams follow JetStream itself; the read model may still be projecting the last events.
    await wait_terminal(rest, task_id, timeout=10)
    stored = (await rest.get(f"/v1/tasks/{task_id}/events")).json()

    assert stored[-1]["event_type"] == "TaskCompleted"
    assert [json.loads(message["data"]) for message in sse] == stored
    assert [int(message["id"]) for message in sse] == [event["sequence"] for event in stored]
    assert [event.event_id for event in watched] == [event["event_id"] for event in stored]
    assert [event.sequence for event in watched] == [event["sequence"] for event in stored]


async def test_20_concurrent_identical_submissions_are_one_task(rest: httpx.AsyncClient) -> None:
    body = {
        "task_type": "agent_run",
        "input_data": {"plan": [{"tool": "math.add", "args": {"a": 20, "b": 22}}]},
        "options": {"max_attempts": 1, "allowed_tools": ["math.*"]},
    }
    headers = {"Idempotency-Key": "invoice-2026-0042"}

    responses = await asyncio.gather(
        *(rest.post("/v1/tasks", json=body, headers=headers) for _ in range(20))
    )
    task_ids = {response.json()["task_id"] for response in responses}
    task = await wait_terminal(rest, task_ids.pop(), timeout=30)
    listed = (await rest.get("/v1/tasks")).json()
    conflict = await rest.post(
        "/v1/tasks", json={**body, "input_data": {"plan": []}}, headers=headers
    )
    other_body = await rest.post(
        "/v1/tasks",
        json={**body, "input_data": {"plan": [{"tool": "math.add", "args": {"a": 1, "b": 1}}]}},
        headers=headers,
    )

    assert {response.status_code for response in responses} == {202}
    assert not task_ids
    assert task["status"] == "completed"
    assert task["output_data"]["result"] == 42
    assert [item["task_id"] for item in listed["items"]] == [task["task_id"]]
    assert conflict.status_code == 400
    assert other_body.status_code == 409
    events = (await rest.get(f"/v1/tasks/{task['task_id']}/events")).json()
    assert [event["event_type"] for event in events].count("TaskSubmitted") == 1
