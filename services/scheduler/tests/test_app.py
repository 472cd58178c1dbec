"""The whole scheduler: in-process through ``running``/``run``, and as ``python -m scheduler``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from uuid import uuid4

import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy.ext.asyncio import AsyncEngine

from opspawn_contracts.commands import SubmitTask
from opspawn_contracts.events import (
    TaskCompleted,
    TaskCompletedData,
    TaskStarted,
    TaskStartedData,
    TaskSubmitted,
    TaskSubmittedData,
)
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.task import TaskStatus
from opspawn_embedded import EmbeddedNats
from opspawn_messaging.event_log import EventLog
from opspawn_messaging.streams import unsettled_messages
from opspawn_readmodel.queries import ReadModel
from scheduler.app import run, running
from scheduler.settings import SchedulerSettings

SendCommand = Callable[..., Awaitable[int]]
pytestmark = pytest.mark.integration


def _command() -> SubmitTask:
    return SubmitTask(
        task_id=uuid4(), correlation_id=uuid4(), task_type="agent_run", input_data={"goal": "x"}
    )


async def test_a_submitted_command_becomes_a_pending_task_in_the_read_model(
    settings: SchedulerSettings,
    jetstream: JetStreamContext,
    subjects: Subjects,
    engine: AsyncEngine,
    send_command: SendCommand,
) -> None:
    command = _command()
    async with running(settings) as scheduler:
        await send_command(command)
        task = await ReadModel(engine).wait_for_task(command.task_id, timeout=10)
        [stored] = await EventLog(jetstream, subjects).task_history(command.task_id)
        await scheduler.projection.wait_for(stored.sequence, timeout=10)

    assert task is not None
    assert (task.status, task.task_type, task.input_data) == (
        TaskStatus.PENDING,
        "agent_run",
        {"goal": "x"},
    )
    owed = await unsettled_messages(
        jetstream, subjects.events_stream, subjects.runner_submitted_consumer
    )
    assert owed == 1, "the TaskSubmitted is the runners' work"
    assert (await jetstream.stream_info(subjects.work_stream)).state.messages == 0


async def test_the_projection_resumes_from_its_checkpoint_after_a_restart(
    settings: SchedulerSettings,
    jetstream: JetStreamContext,
    subjects: Subjects,
    engine: AsyncEngine,
) -> None:
    log = EventLog(jetstream, subjects)
    task_id, correlation = uuid4(), uuid4()
    async with running(settings) as scheduler:
        first = await log.append(
            TaskSubmitted(
                task_id=task_id,
                correlation_id=correlation,
                data=TaskSubmittedData(task_type="agent_run", input_data={}),
            ),
            expected_version=0,
        )
        second = await log.append(
            TaskStarted(
                task_id=task_id,
                correlation_id=correlation,
                data=TaskStartedData(attempt=1, runner_id="r1"),
            ),
            expected_version=first,
        )
        await scheduler.projection.wait_for(second, timeout=10)
        assert scheduler.projection.start_sequence == 1

    third = await log.append(
        TaskCompleted(
            task_id=task_id,
            correlation_id=correlation,
            data=TaskCompletedData(attempt=1, output_data={"answer": 42}),
        ),
        expected_version=second,
    )
    read_model = ReadModel(engine)
    assert await read_model.checkpoint(subjects.events_stream) == second
    stopped = await read_model.get_task(task_id)
    assert stopped is not None
    assert stopped.status is TaskStatus.RUNNING

    async with running(settings) as scheduler:
        assert scheduler.projection.start_sequence == second + 1
        await scheduler.projection.wait_for(third, timeout=10)

    task = await read_model.get_task(task_id)
    assert task is not None
    assert (task.status, task.output_data) == (TaskStatus.COMPLETED, {"answer": 42})
    assert [record.sequence for record in await read_model.task_events(task_id)] == [
        first,
        second,
        third,
    ]
    assert await read_model.checkpoint(subjects.events_stream) == third


async def test_run_serves_until_stop_is_set(
    settings: SchedulerSettings, engine: AsyncEngine, send_command: SendCommand
) -> None:
    stop = asyncio.Event()
    service = asyncio.create_task(run(settings, stop))
    command = _command()
    await send_command(command)

    task = await ReadModel(engine).wait_for_task(command.task_id, timeout=10)

    assert task is not None
    assert not service.done()
    stop.set()
    await asyncio.wait_for(service, timeout=5)


async def test_the_scheduler_carries_on_after_a_nats_restart(
    settings: SchedulerSettings,
    nats_server: EmbeddedNats,
    nats_client: NatsClient,
    jetstream: JetStreamContext,
    subjects: Subjects,
    engine: AsyncEngine,
    send_command: SendCommand,
) -> None:
    """The ordered consumer lives in server memory: after a restart it must be recreated."""
    read_model = ReadModel(engine)
    before = _command()
    async with running(settings) as scheduler:
        await send_command(before)
        assert await read_model.wait_for_task(before.task_id, timeout=10) is not None

        reconnects = nats_client.stats["reconnects"]
        nats_server.restart()
        deadline = time.monotonic() + 20
        while nats_client.stats["reconnects"] == reconnects or not nats_client.is_connected:
            assert time.monotonic() < deadline, "the test client did not reconnect"
            await asyncio.sleep(0.05)
        after = _command()
        await send_command(after)
        task = await read_model.wait_for_task(after.task_id, timeout=20)
        [stored] = await EventLog(jetstream, subjects).task_history(after.task_id)
        await scheduler.projection.wait_for(stored.sequence, timeout=10)

    assert task is not None
    assert await read_model.checkpoint(subjects.events_stream) == stored.sequence
    assert len(await read_model.list_tasks()) == 2


def _environment(**values: str) -> dict[str, str]:
    inherited = {key: value for key, value in os.environ.items() if not key.startswith("OPSPAWN_")}
    return inherited | values


async def test_the_process_stops_cleanly_on_sigterm(
    nats_server: EmbeddedNats,
    subjects: Subjects,
    database_url: str,
    jetstream: JetStreamContext,
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scheduler",
        env=_environment(
            OPSPAWN_NATS_URL=nats_server.url,
            OPSPAWN_SUBJECT_PREFIX=subjects.prefix,
            OPSPAWN_DATABASE_URL=database_url,
        ),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                await jetstream.consumer_info(
                    subjects.commands_stream, subjects.scheduler_commands_consumer
                )
                break
            except NotFoundError:
                assert process.returncode is None, "the scheduler exited before it was ready"
                assert time.monotonic() < deadline, "the scheduler never became ready"
                await asyncio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    log = stderr.decode()
    assert process.returncode == 0, log
    lines = {
        (record["service"], record["level"], record["logger"], record["message"].split(":")[0])
        for record in map(json.loads, log.splitlines())
    }
    assert ("scheduler", "info", "scheduler.app", "ready") in lines
    assert ("scheduler", "info", "opspawn.service", "stopped") in lines


async def test_the_process_names_a_missing_database_url() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scheduler",
        env=_environment(),
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)

    assert process.returncode == 1
    assert "OPSPAWN_DATABASE_URL: Field required" in stderr.decode()
