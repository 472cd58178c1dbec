"""One agent task through all four services, on a real nats-server and PostgreSQL.

Each service runs as its own process. The plan calls a built-in local tool (run in the runner's
sandbox) and a tool of an MCP server written with the SDK, which the proxy started over stdio.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any
from uuid import UUID

import grpc
import httpx
import pytest
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct
from nats.js import JetStreamContext

from opspawn.v1 import tasks_pb2, tasks_pb2_grpc
from opspawn_cli.demo import wait_terminal
from opspawn_cli.system import LocalSystem
from opspawn_contracts.events import StepStarted, TaskStarted
from opspawn_contracts.subjects import Subjects
from opspawn_messaging.event_log import EventLog

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

PLAN: list[dict[str, Any]] = [
    {"tool": "math.add", "args": {"a": 2, "b": 3}},
    {"tool": "toolbox.word_count", "args": {"text": "event sourcing all the way"}},
]
EXPECTED_ORDER = [
    "TaskSubmitted",
    "TaskStarted",
    "StepCompleted",
    "StepStarted",
    "TaskCompleted",
]


async def _submit(rest: httpx.AsyncClient, input_data: dict[str, Any]) -> dict[str, Any]:
    response = await rest.post(
        "/v1/tasks", json={"task_type": "agent_run", "input_data": input_data}
    )
    assert response.status_code == 202, response.text
    task: dict[str, Any] = response.json()
    assert task["status"] in ("pending", "running", "completed", "failed")
    assert response.headers["location"] == f"/v1/tasks/{task['task_id']}"
    return task


async def test_rest_task_completes_through_every_service(
    system: LocalSystem, rest: httpx.AsyncClient, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    submitted = await _submit(rest, {"goal": "add, then count words", "plan": PLAN})

    task = await wait_terminal(rest, submitted["task_id"])

    assert task["status"] == "completed", task
    steps = task["output_data"]["steps"]
    assert [(step["tool"], step["result"]) for step in steps] == [
        ("math.add", 5),
        ("toolbox.word_count", 5),
    ]
    assert task["error_message"] is None

    from_api = (await rest.get(f"/v1/tasks/{task['task_id']}/events")).json()
    from_stream = await EventLog(jetstream, subjects).task_history(UUID(task["task_id"]))
    assert [event["event_type"] for event in from_api] == EXPECTED_ORDER
    assert [stored.event.event_type for stored in from_stream] == EXPECTED_ORDER
    assert [event["sequence"] for event in from_api] == [stored.sequence for stored in from_stream]
    assert [event["event_id"] for event in from_api] == [
        str(stored.event.event_id) for stored in from_stream
    ]
    intents = [
        stored.event.data.first_step
        if isinstance(stored.event, TaskStarted)
        else stored.event.data.step
        for stored in from_stream
        if isinstance(stored.event, TaskStarted | StepStarted)
    ]
    intended = [call.tool for step in intents if step is not None for call in step.calls]
    assert intended == ["math.add", "toolbox.word_count"]


@pytest.mark.parametrize(
    ("plan", "message_parts"),
    [
        ([{"tool": "nope.missing", "args": {}}], ["step 1", "nope.missing"]),
        ([{"tool": "math.divide", "args": {"a": 1, "b": 0}}], ["step 1", "ZeroDivisionError"]),
        (
            [
                {"tool": "math.add", "args": {"a": 1, "b": 1}},
                {"tool": "toolbox.fail", "args": {"message": "kaput"}},
            ],
            ["step 2", "toolbox.fail", "kaput"],
        ),
        (
            [{"tool": "util.sleep", "args": {"seconds": 5}, "timeout_seconds": 0.5}],
            ["step 1", "util.sleep", "timed out"],
        ),
    ],
    ids=["unknown-tool", "tool-raises", "mcp-tool-raises", "timeout"],
)
async def test_failing_steps_end_failed_with_a_clear_message(
    system: LocalSystem,
    rest: httpx.AsyncClient,
    plan: list[dict[str, Any]],
    message_parts: list[str],
) -> None:
    submitted = await _submit(rest, {"plan": plan})

    task = await wait_terminal(rest, submitted["task_id"])

    assert task["status"] == "failed", task
    for part in message_parts:
        assert part in task["error_message"]
    healthy = await _submit(rest, {"plan": [{"tool": "math.subtract", "args": {"a": 9, "b": 4}}]})
    assert (await wait_terminal(rest, healthy["task_id"]))["output_data"]["result"] == 5
    assert system.supervisor is not None
    assert all(system.supervisor.restarts(name) == 0 for name in system.supervisor.pids)


async def test_malformed_requests_get_a_4xx_with_a_message_and_nothing_crashes(
    system: LocalSystem, rest: httpx.AsyncClient
) -> None:
    bad_bodies: list[tuple[str, dict[str, str]]] = [
        ("{not json", {"content-type": "application/json"}),
        ('{"input_data": {}}', {"content-type": "application/json"}),
        ('{"task_type": "agent_run", "input_data": [1, 2]}', {"content-type": "application/json"}),
        (
            '{"task_type": "agent_run", "input_data": {"plan": "add"}}',
            {"content-type": "application/json"},
        ),
        ('{"task_type": "bad type!", "input_data": {}}', {"content-type": "application/json"}),
    ]
    for body, headers in bad_bodies:
        response = await rest.post("/v1/tasks", content=body, headers=headers)
        assert 400 <= response.status_code < 500, (body, response.status_code)
        assert response.text
    assert (await rest.get("/v1/tasks/not-a-uuid")).status_code in (400, 404, 422)
    assert (await rest.get("/v1/tasks/00000000-0000-0000-0000-000000000000")).status_code == 404

    task = await _submit(rest, {"plan": [{"tool": "math.add", "args": {"a": 1, "b": 2}}]})
    assert (await wait_terminal(rest, task["task_id"]))["status"] == "completed"
    assert system.supervisor is not None
    assert all(system.supervisor.restarts(name) == 0 for name in system.supervisor.pids)


async def test_grpc_task_completes_through_every_service(
    system: LocalSystem, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    input_data = Struct()
    input_data.update({"goal": "add, then count words", "plan": PLAN})
    async with grpc.aio.insecure_channel(system.grpc_target) as channel:
        tasks = tasks_pb2_grpc.TaskServiceStub(channel)
        created = await tasks.CreateTask(
            tasks_pb2.CreateTaskRequest(task_type="agent_run", input_data=input_data)
        )
        task_id = created.task.task_id
        deadline = time.monotonic() + 30
        while True:
            task = (await tasks.GetTask(tasks_pb2.GetTaskRequest(task_id=task_id))).task
            if task.status not in (tasks_pb2.TASK_STATUS_PENDING, tasks_pb2.TASK_STATUS_RUNNING):
                break
            assert time.monotonic() < deadline, f"task {task_id} still {task.status}"
            await asyncio.sleep(0.05)
        events = (
            await tasks.ListTaskEvents(tasks_pb2.ListTaskEventsRequest(task_id=task_id))
        ).events
        listed = (await tasks.ListTasks(tasks_pb2.ListTasksRequest(limit=5))).tasks

    assert task.status == tasks_pb2.TASK_STATUS_COMPLETED, task
    output = MessageToDict(task.output_data)
    assert [(step["tool"], step["result"]) for step in output["steps"]] == [
        ("math.add", 5),
        ("toolbox.word_count", 5),
    ]
    assert [event.event_type for event in events] == EXPECTED_ORDER
    from_stream = await EventLog(jetstream, subjects).task_history(UUID(task_id))
    assert [event.sequence for event in events] == [stored.sequence for stored in from_stream]
    assert task_id in [listed_task.task_id for listed_task in listed]


async def test_cli_submits_waits_and_shows_events(system: LocalSystem) -> None:
    env = {**os.environ, "OPSPAWN_GATEWAY_URL": system.rest_url}
    plan = json.dumps([{"tool": "math.multiply", "args": {"a": 6, "b": 7}}])

    async def opspawn(*args: str) -> Any:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from opspawn_cli.main import main; main()", *args,
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()
        return json.loads(stdout)

    task = await opspawn("submit", "--plan", plan, "--wait")
    assert (task["status"], task["output_data"]["result"]) == ("completed", 42)
    assert (await opspawn("get", task["task_id"]))["status"] == "completed"
    events = await opspawn("events", task["task_id"])
    assert [event["event_type"] for event in events][0 :: len(events) - 1] == [
        "TaskSubmitted",
        "TaskCompleted",
    ]
