"""How the runner consumes the work queue: heartbeats, concurrency, shutdown, redelivery, fencing.

Runs the runner in-process with ``app.running`` on a real nats-server; some tests shorten the
consumer's ``ack_wait`` to make redelivery happen within a test's time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID, uuid4

import pytest
from nats.js import JetStreamContext
from pydantic import JsonValue

from agent_runner.app import running
from agent_runner.settings import RunnerSettings
from opspawn_contracts.events import (
    TERMINAL_EVENT_TYPES,
    StepCompleted,
    TaskCompleted,
    TaskCompletedData,
    TaskStarted,
    TaskStartedData,
    TaskSubmitted,
    TaskSubmittedData,
)
from opspawn_contracts.streams import runner_submitted_consumer
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.work import TaskAssignment
from opspawn_embedded import EmbeddedNats
from opspawn_messaging.event_log import EventLog, StoredEvent
from opspawn_messaging.streams import unsettled_runner_work

pytestmark = pytest.mark.integration


async def _eventually(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
    return value


def _settings(
    nats: EmbeddedNats, subjects: Subjects, runner_id: str, **values: Any
) -> RunnerSettings:
    return RunnerSettings(
        nats_url=nats.url, subject_prefix=subjects.prefix, runner_id=runner_id, **values
    )


SHORT_ACK_WAIT = 1.0


async def _submit(
    js: JetStreamContext, subjects: Subjects, plan: list[JsonValue]
) -> tuple[UUID, TaskAssignment]:
    """Append TaskSubmitted, as the scheduler does: the first attempt's work; and that attempt."""
    submitted = TaskSubmitted(
        task_id=uuid4(),
        correlation_id=uuid4(),
        data=TaskSubmittedData(task_type="agent_run", input_data={"plan": plan}),
    )
    sequence = await EventLog(js, subjects).append(submitted, expected_version=0)
    return submitted.task_id, TaskAssignment.first_attempt(submitted, sequence=sequence)


async def _history_with(
    js: JetStreamContext, subjects: Subjects, task_id: UUID, predicate: Callable[[list[str]], bool]
) -> list[StoredEvent]:
    log = EventLog(js, subjects)

    async def matching() -> list[StoredEvent] | None:
        history = await log.task_history(task_id)
        return history if predicate([stored.event.event_type for stored in history]) else None

    history: list[StoredEvent] = await _eventually(matching, f"task {task_id}'s history")
    return history


def _finished(types: list[str]) -> bool:
    return bool(types) and types[-1] in TERMINAL_EVENT_TYPES


async def _work_acked(js: JetStreamContext, subjects: Subjects) -> None:
    async def empty() -> bool:
        return await _unsettled_work(js, subjects) == 0

    await _eventually(empty, "every work item to be acknowledged")


def _sleep_plan(seconds: float) -> list[JsonValue]:
    return [{"tool": "util.sleep", "args": {"seconds": seconds}, "timeout_seconds": 30}]


async def test_heartbeats_keep_a_long_task_from_being_redelivered(
    nats_server: EmbeddedNats, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    """The task outlives ack_wait (1 s) more than twice; only heartbeats keep it delivered once."""
    settings = _settings(nats_server, subjects, "runner-a", work_ack_wait_seconds=SHORT_ACK_WAIT)
    async with running(settings):
        task_id, _ = await _submit(jetstream, subjects, _sleep_plan(2.5))
        history = await _history_with(jetstream, subjects, task_id, _finished)
        await _work_acked(jetstream, subjects)
    assert [stored.event.event_type for stored in history].count("TaskStarted") == 1
    assert history[-1].event.event_type == "TaskCompleted"
    info = await jetstream.consumer_info(subjects.events_stream, subjects.runner_submitted_consumer)
    assert info.config.ack_wait == SHORT_ACK_WAIT
    assert info.num_redelivered == 0


async def test_tasks_run_concurrently_up_to_the_limit(
    nats_server: EmbeddedNats, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    settings = _settings(nats_server, subjects, "runner-a", max_concurrent_tasks=2)
    async with running(settings):
        first, _ = await _submit(jetstream, subjects, _sleep_plan(1.5))
        second, _ = await _submit(jetstream, subjects, _sleep_plan(1.5))
        histories = [
            await _history_with(jetstream, subjects, task_id, _finished)
            for task_id in (first, second)
        ]
    started_at = [history[1].event.occurred_at for history in histories]
    finished_at = [history[-1].event.occurred_at for history in histories]
    assert max(started_at) < min(finished_at)


async def test_shutdown_lets_a_running_task_finish_within_the_grace_period(
    nats_server: EmbeddedNats, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    settings = _settings(nats_server, subjects, "runner-a", shutdown_grace_seconds=10)
    async with running(settings):
        task_id, _ = await _submit(jetstream, subjects, _sleep_plan(1))
        await _history_with(jetstream, subjects, task_id, lambda types: "TaskStarted" in types)
    history = await EventLog(jetstream, subjects).task_history(task_id)
    assert history[-1].event.event_type == "TaskCompleted"
    assert await _unsettled_work(jetstream, subjects) == 0


async def test_shutdown_releases_an_unfinished_task_to_another_runner(
    nats_server: EmbeddedNats, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    leaving = _settings(nats_server, subjects, "runner-a", shutdown_grace_seconds=0.2)
    async with running(leaving):
        task_id, _ = await _submit(jetstream, subjects, _sleep_plan(2))
        await _history_with(jetstream, subjects, task_id, lambda types: "TaskStarted" in types)
        stopping_at = time.monotonic()
    assert time.monotonic() - stopping_at < 3
    async with running(_settings(nats_server, subjects, "runner-b")):
        history = await _history_with(jetstream, subjects, task_id, _finished)
        await _work_acked(jetstream, subjects)
    rows = [
        (stored.event.event_type, getattr(stored.event.data, "runner_id", None))
        for stored in history
    ]
    assert rows == [
        ("TaskSubmitted", None),
        ("TaskStarted", "runner-a"),
        ("StepCompleted", None),
        ("TaskStarted", "runner-b"),
        ("TaskCompleted", None),
    ]
    interrupted = history[2].event
    assert isinstance(interrupted, StepCompleted)
    [outcome] = interrupted.data.outcomes
    assert (outcome.ok, outcome.error) == (False, "cancelled")


async def test_a_redelivered_attempt_that_already_finished_is_acked_without_running(
    nats_server: EmbeddedNats, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    """As if a runner stored TaskCompleted and died before acking: the redelivery is dropped."""
    config = dataclasses.replace(runner_submitted_consumer(subjects), ack_wait=SHORT_ACK_WAIT)
    await jetstream.add_consumer(subjects.events_stream, config)
    crashed_runner = await jetstream.pull_subscribe(
        subjects.events_of_type("TaskSubmitted"),
        durable=config.durable_name,
        stream=subjects.events_stream,
    )
    task_id, assignment = await _submit(jetstream, subjects, _sleep_plan(0))
    (message,) = await crashed_runner.fetch(1, timeout=5)
    log = EventLog(jetstream, subjects)
    started = TaskStarted(
        task_id=task_id,
        correlation_id=assignment.correlation_id,
        causation_id=assignment.causation_id,
        data=TaskStartedData(attempt=1, runner_id="crashed"),
    )
    await log.append(started)
    await log.append(
        TaskCompleted(
            task_id=task_id,
            correlation_id=assignment.correlation_id,
            causation_id=started.event_id,
            data=TaskCompletedData(attempt=1, output_data={"steps": [], "result": None}),
        )
    )
    runner = _settings(nats_server, subjects, "runner-a", work_ack_wait_seconds=SHORT_ACK_WAIT)
    async with running(runner):
        await _work_acked(jetstream, subjects)
    await crashed_runner.unsubscribe()
    history = await log.task_history(task_id)
    assert [stored.event.event_type for stored in history] == [
        "TaskSubmitted",
        "TaskStarted",
        "TaskCompleted",
    ]
    assert message.metadata.num_delivered == 1


async def test_a_runner_stops_writing_when_another_writer_appends_to_its_task(
    nats_server: EmbeddedNats, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    """The runner leaves the message alone; as the intruder never finishes, it is run again."""
    settings = _settings(nats_server, subjects, "runner-a", work_ack_wait_seconds=SHORT_ACK_WAIT)
    async with running(settings):
        task_id, assignment = await _submit(jetstream, subjects, _sleep_plan(1))
        await _history_with(jetstream, subjects, task_id, lambda types: "TaskStarted" in types)
        intruder = TaskStarted(
            task_id=task_id,
            correlation_id=assignment.correlation_id,
            causation_id=assignment.causation_id,
            data=TaskStartedData(attempt=1, runner_id="intruder"),
        )
        await EventLog(jetstream, subjects).append(intruder)
        history = await _history_with(jetstream, subjects, task_id, _finished)
        await _work_acked(jetstream, subjects)
    assert [stored.event.event_type for stored in history] == [
        "TaskSubmitted",
        "TaskStarted",
        "TaskStarted",
        "TaskStarted",
        "TaskCompleted",
    ]
    assert history[2].event == intruder
    assert history[3].event.data.runner_id == "runner-a"  # type: ignore[union-attr]


async def _unsettled_work(js: JetStreamContext, subjects: Subjects) -> int:
    return await unsettled_runner_work(js, subjects)
