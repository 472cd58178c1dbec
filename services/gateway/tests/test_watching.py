"""Following a task live: the SSE stream (REST) and WatchTask (gRPC), over real HTTP and gRPC.

The scheduler stand-in appends the task's events to the real events stream while a client
watches, so every test sees history first, then live events, each exactly once and in order.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import grpc
import httpx
import pytest

from opspawn.v1 import tasks_pb2, tasks_pb2_grpc
from opspawn_contracts.commands import SubmitTask
from opspawn_contracts.events import (
    AgentStepCompleted,
    AgentStepCompletedData,
    Event,
    ToolCallCompleted,
    ToolCallCompletedData,
    ToolCallRequested,
    ToolCallRequestedData,
)
from services.gateway.tests.conftest import SchedulerStandIn

pytestmark = pytest.mark.integration

PLAN = {"plan": [{"tool": "math.add", "args": {"a": 1, "b": 2}}]}
EVENT_TIMEOUT = 10.0


def step_events(command: SubmitTask, step_index: int) -> list[Event]:
    """One plan step's events: the call, its result, the finished step."""
    call_id = f"call-{step_index}"
    common: dict[str, Any] = {"task_id": command.task_id, "correlation_id": command.correlation_id}
    return [
        ToolCallRequested(
            **common,
            data=ToolCallRequestedData(
                attempt=1, step_index=step_index, call_id=call_id, tool="math.add", arguments={}
            ),
        ),
        ToolCallCompleted(
            **common,
            data=ToolCallCompletedData(
                attempt=1,
                step_index=step_index,
                call_id=call_id,
                tool="math.add",
                ok=True,
                result=3,
                duration_ms=1.0,
            ),
        ),
        AgentStepCompleted(
            **common,
            data=AgentStepCompletedData(attempt=1, step_index=step_index, tool_call_ids=[call_id]),
        ),
    ]


async def _running_task(http: httpx.AsyncClient, scheduler: SchedulerStandIn) -> SubmitTask:
    async def play_scheduler() -> SubmitTask:
        command, _ = await scheduler.next_command()
        await scheduler.submit_and_start(command)
        return command

    projecting = asyncio.create_task(play_scheduler())
    response = await http.post("/v1/tasks", json={"task_type": "agent_run", "input_data": PLAN})
    assert response.status_code == 202, response.text
    return await projecting


async def sse_messages(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    """The SSE messages of ``response`` (comments skipped), as ``{"id", "event", "data"}``."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if not line:
            if "data" in fields:
                yield fields
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


async def _take(messages: AsyncIterator[dict[str, str]], count: int) -> list[dict[str, str]]:
    taken: list[dict[str, str]] = []
    async with asyncio.timeout(EVENT_TIMEOUT):
        while len(taken) < count:
            taken.append(await anext(messages))
    return taken


async def _rest(messages: AsyncIterator[dict[str, str]]) -> list[dict[str, str]]:
    """Every message until the server closes the stream."""
    async with asyncio.timeout(EVENT_TIMEOUT):
        return [message async for message in messages]


async def test_sse_delivers_history_then_live_events_once_in_order_and_closes_at_the_end(
    http: httpx.AsyncClient, scheduler: SchedulerStandIn
) -> None:
    command = await _running_task(http, scheduler)
    async with http.stream("GET", f"/v1/tasks/{command.task_id}/stream") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        messages = sse_messages(response)
        history = await _take(messages, 2)
        live = step_events(command, 0)
        await scheduler.project(*live)
        await scheduler.complete(command, {"result": 3})
        rest = await _rest(messages)

    received = history + rest
    assert [message["event"] for message in received] == [
        "TaskSubmitted",
        "TaskStarted",
        "ToolCallRequested",
        "ToolCallCompleted",
        "AgentStepCompleted",
        "TaskCompleted",
    ]
    sequences = [int(message["id"]) for message in received]
    assert sequences == sorted(set(sequences))
    documents = [json.loads(message["data"]) for message in received]
    assert [document["sequence"] for document in documents] == sequences
    assert documents[2]["event_id"] == str(live[0].event_id)
    # The stream shows the same documents as the history endpoint.
    history_api = (await http.get(f"/v1/tasks/{command.task_id}/events")).json()
    assert documents == history_api


async def test_sse_resumes_after_a_disconnect_from_last_event_id(
    http: httpx.AsyncClient, scheduler: SchedulerStandIn
) -> None:
    command = await _running_task(http, scheduler)
    first_step, second_step = step_events(command, 0), step_events(command, 1)
    async with http.stream("GET", f"/v1/tasks/{command.task_id}/stream") as response:
        await scheduler.project(*first_step)
        before = await _take(sse_messages(response), 3)
    # Disconnected after ToolCallRequested; more happens meanwhile.
    await scheduler.project(*second_step)

    last_seen = before[-1]["id"]
    async with http.stream(
        "GET", f"/v1/tasks/{command.task_id}/stream", headers={"Last-Event-ID": last_seen}
    ) as response:
        messages = sse_messages(response)
        caught_up = await _take(messages, 5)
        await scheduler.complete(command, {"result": 3})
        after = caught_up + await _rest(messages)

    assert [message["event"] for message in before] == [
        "TaskSubmitted",
        "TaskStarted",
        "ToolCallRequested",
    ]
    assert [message["event"] for message in after] == [
        "ToolCallCompleted",
        "AgentStepCompleted",
        "ToolCallRequested",
        "ToolCallCompleted",
        "AgentStepCompleted",
        "TaskCompleted",
    ]
    sequences = [int(message["id"]) for message in before + after]
    assert sequences == sorted(set(sequences))
    ids = [json.loads(message["data"])["event_id"] for message in before + after]
    assert len(ids) == len(set(ids)) == 9


async def test_sse_of_a_finished_task_replays_its_history_and_closes(
    http: httpx.AsyncClient, scheduler: SchedulerStandIn
) -> None:
    command = await _running_task(http, scheduler)
    completed = await scheduler.complete(command, {"result": 3})

    async with http.stream("GET", f"/v1/tasks/{command.task_id}/stream") as response:
        everything = await _rest(sse_messages(response))
    after_first = everything[0]["id"]
    async with http.stream(
        "GET", f"/v1/tasks/{command.task_id}/stream", params={"after": after_first}
    ) as response:
        resumed = await _rest(sse_messages(response))
    last_id = everything[-1]["id"]
    async with http.stream(
        "GET", f"/v1/tasks/{command.task_id}/stream", headers={"Last-Event-ID": last_id}
    ) as response:
        nothing_left = await _rest(sse_messages(response))

    assert [message["event"] for message in everything] == [
        "TaskSubmitted",
        "TaskStarted",
        "TaskCompleted",
    ]
    assert json.loads(everything[-1]["data"])["event_id"] == str(completed.event_id)
    assert resumed == everything[1:]
    assert nothing_left == []


@pytest.mark.parametrize(
    ("path", "headers", "status", "detail"),
    [
        (f"/v1/tasks/{uuid4()}/stream", {}, 404, "no task with id"),
        ("/v1/tasks/nope/stream", {}, 400, "'nope' is not a UUID"),
        (f"/v1/tasks/{uuid4()}/stream", {"Last-Event-ID": "x"}, 400, "last_event_id"),
    ],
)
async def test_sse_refusals_are_problems_before_any_stream_starts(
    http: httpx.AsyncClient, path: str, headers: dict[str, str], status: int, detail: str
) -> None:
    response = await http.get(path, headers=headers)

    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/problem+json")
    assert detail in response.json()["detail"]


async def _read_events(call: Any, count: int) -> list[tasks_pb2.TaskEvent]:
    events = []
    for _ in range(count):
        event = await call.read()
        assert isinstance(event, tasks_pb2.TaskEvent), event
        events.append(event)
    return events


async def test_watch_task_streams_live_and_resumes_from_a_sequence(
    http: httpx.AsyncClient,
    scheduler: SchedulerStandIn,
    task_stub: tasks_pb2_grpc.TaskServiceAsyncStub,
) -> None:
    command = await _running_task(http, scheduler)
    request = tasks_pb2.WatchTaskRequest(task_id=str(command.task_id))

    call = task_stub.WatchTask(request)
    await scheduler.project(*step_events(command, 0))
    async with asyncio.timeout(EVENT_TIMEOUT):
        before = await _read_events(call, 3)
    call.cancel()
    await scheduler.project(*step_events(command, 1))

    resumed_call = task_stub.WatchTask(
        tasks_pb2.WatchTaskRequest(task_id=str(command.task_id), after_sequence=before[-1].sequence)
    )
    async with asyncio.timeout(EVENT_TIMEOUT):
        caught_up = await _read_events(resumed_call, 5)
        await scheduler.complete(command, {"result": 3})
        after = caught_up + [event async for event in resumed_call]

    assert [event.event_type for event in before] == [
        "TaskSubmitted",
        "TaskStarted",
        "ToolCallRequested",
    ]
    assert [event.event_type for event in after] == [
        "ToolCallCompleted",
        "AgentStepCompleted",
        "ToolCallRequested",
        "ToolCallCompleted",
        "AgentStepCompleted",
        "TaskCompleted",
    ]
    sequences = [event.sequence for event in before + after]
    assert sequences == sorted(set(sequences))
    assert await resumed_call.code() == grpc.StatusCode.OK


async def test_watch_task_of_an_unknown_task_is_not_found(
    task_stub: tasks_pb2_grpc.TaskServiceAsyncStub,
) -> None:
    call = task_stub.WatchTask(tasks_pb2.WatchTaskRequest(task_id=str(uuid4())))

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call.read()

    assert error.value.code() == grpc.StatusCode.NOT_FOUND
