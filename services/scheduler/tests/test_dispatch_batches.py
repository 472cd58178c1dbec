"""A fetched batch of commands is decided concurrently, each task's commands still in order."""

from __future__ import annotations

import asyncio
import time
from uuid import uuid4

import pytest
from nats.js import JetStreamContext

from opspawn_contracts.commands import CancelTask, Command, SubmitTask, encode_command
from opspawn_contracts.subjects import Subjects
from opspawn_messaging.event_log import EventLog
from opspawn_messaging.streams import unsettled_messages
from scheduler.dispatch import CommandDispatcher

pytestmark = pytest.mark.integration

TASKS = 60


async def _publish(js: JetStreamContext, subjects: Subjects, command: Command) -> None:
    await js.publish(
        subjects.command(command.command_type),
        encode_command(command),
        stream=subjects.commands_stream,
        headers={"Nats-Msg-Id": str(command.command_id)},
    )


async def test_submits_and_cancels_in_one_batch_keep_each_tasks_order(
    jetstream: JetStreamContext, subjects: Subjects
) -> None:
    """Every task's SubmitTask and CancelTask are stored before the dispatcher starts, so they
    arrive in one batch and are decided concurrently; each cancel still sees its submission."""
    dispatcher = CommandDispatcher(jetstream, subjects, poll_interval=0.2)
    await dispatcher.start()
    task_ids = [uuid4() for _ in range(TASKS)]
    for task_id in task_ids:
        correlation_id = uuid4()
        await _publish(
            jetstream,
            subjects,
            SubmitTask(
                task_id=task_id,
                correlation_id=correlation_id,
                task_type="agent_run",
                input_data={"plan": [{"tool": "math.add", "args": {"a": 1, "b": 2}}]},
            ),
        )
        await _publish(
            jetstream,
            subjects,
            CancelTask(task_id=task_id, correlation_id=correlation_id, reason="at once"),
        )
    stop = asyncio.Event()
    loop = asyncio.create_task(dispatcher.run(stop))
    try:
        deadline = time.monotonic() + 30
        while True:
            info = await jetstream.consumer_info(
                subjects.commands_stream, subjects.scheduler_commands_consumer
            )
            if not info.num_pending and not info.num_ack_pending:
                break
            assert time.monotonic() < deadline, f"commands not settled: {info}"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await loop

    log = EventLog(jetstream, subjects)
    histories = await asyncio.gather(*(log.task_history(task_id) for task_id in task_ids))
    for task_id, history in zip(task_ids, histories, strict=True):
        assert [stored.event.event_type for stored in history] == [
            "TaskSubmitted",
            "TaskCancelled",
        ], task_id
    owed = await unsettled_messages(
        jetstream, subjects.events_stream, subjects.runner_submitted_consumer
    )
    assert owed == TASKS
