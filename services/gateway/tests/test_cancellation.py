"""Cancelling over real HTTP and gRPC: accepted for pending or running tasks, 409 once finished."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import grpc
import httpx
import pytest
from nats.js import JetStreamContext

from opspawn.v1 import tasks_pb2, tasks_pb2_grpc
from opspawn_contracts.commands import CancelTask, SubmitTask
from opspawn_contracts.events import TaskCancelled, TaskCancelledData
from opspawn_contracts.subjects import Subjects
from services.gateway.tests.conftest import SchedulerStandIn

pytestmark = pytest.mark.integration


async def _running_task(http: httpx.AsyncClient, scheduler: SchedulerStandIn) -> SubmitTask:
    async def play_scheduler() -> SubmitTask:
        command, _ = await scheduler.next_command()
        await scheduler.submit_and_start(command)
        return command

    projecting = asyncio.create_task(play_scheduler())
    response = await http.post("/v1/tasks", json={"task_type": "agent_run"})
    assert response.status_code == 202
    return await projecting


async def test_cancel_of_a_running_task_publishes_the_command_and_answers_202(
    http: httpx.AsyncClient,
    scheduler: SchedulerStandIn,
    subjects: Subjects,
    jetstream: JetStreamContext,
) -> None:
    command = await _running_task(http, scheduler)

    accepted = await http.post(
        f"/v1/tasks/{command.task_id}/cancel", json={"reason": "changed my mind"}
    )
    cancel, message = await scheduler.next_any_command()
    again = await http.post(f"/v1/tasks/{command.task_id}/cancel")

    assert accepted.status_code == 202
    assert accepted.json()["status"] == "running"
    assert isinstance(cancel, CancelTask)
    assert (cancel.task_id, cancel.reason) == (command.task_id, "changed my mind")
    assert cancel.correlation_id == command.correlation_id
    assert message.subject == subjects.command("cancel")
    assert message.headers is not None
    assert message.headers["Nats-Msg-Id"] == str(cancel.command_id)
    # A second cancel before the first took effect is the same message, dropped by JetStream
    # (the submission was a request, never stored on the commands stream).
    assert again.status_code == 202
    assert (await jetstream.stream_info(subjects.commands_stream)).state.messages == 1


async def test_cancel_of_a_finished_task_is_409_and_of_an_unknown_one_404(
    http: httpx.AsyncClient, scheduler: SchedulerStandIn
) -> None:
    completed = await _running_task(http, scheduler)
    await scheduler.complete(completed, {"result": 1})
    cancelled = await _running_task(http, scheduler)
    await scheduler.project(
        TaskCancelled(
            task_id=cancelled.task_id,
            correlation_id=cancelled.correlation_id,
            data=TaskCancelledData(reason="by test"),
        )
    )

    answers = [
        await http.post(f"/v1/tasks/{task.task_id}/cancel") for task in (completed, cancelled)
    ]
    unknown = await http.post(f"/v1/tasks/{uuid4()}/cancel")
    malformed_body = await http.post(
        f"/v1/tasks/{completed.task_id}/cancel", json={"reason": "x", "force": True}
    )
    long_reason = await http.post(
        f"/v1/tasks/{completed.task_id}/cancel", json={"reason": "x" * 1001}
    )
    task = (await http.get(f"/v1/tasks/{cancelled.task_id}")).json()

    assert [answer.status_code for answer in answers] == [409, 409]
    assert (
        "is completed; only pending or running tasks can be cancelled"
        in (answers[0].json()["detail"])
    )
    assert "is cancelled" in answers[1].json()["detail"]
    assert unknown.status_code == 404
    assert malformed_body.status_code == 400
    assert long_reason.status_code == 400
    assert (task["status"], task["error_message"]) == ("cancelled", "by test")


async def test_grpc_cancel(
    http: httpx.AsyncClient,
    scheduler: SchedulerStandIn,
    task_stub: tasks_pb2_grpc.TaskServiceAsyncStub,
) -> None:
    running = await _running_task(http, scheduler)

    response = await task_stub.CancelTask(
        tasks_pb2.CancelTaskRequest(task_id=str(running.task_id), reason="grpc")
    )
    cancel, _ = await scheduler.next_any_command()
    await scheduler.complete(running, {"result": 1})
    with pytest.raises(grpc.aio.AioRpcError) as finished:
        await task_stub.CancelTask(tasks_pb2.CancelTaskRequest(task_id=str(running.task_id)))

    assert response.task.status == tasks_pb2.TASK_STATUS_RUNNING
    assert isinstance(cancel, CancelTask)
    assert cancel.reason == "grpc"
    assert finished.value.code() == grpc.StatusCode.FAILED_PRECONDITION
