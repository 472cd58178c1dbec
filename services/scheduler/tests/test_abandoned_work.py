"""A task whose work no runner survives is dead-lettered and failed, not left running for ever."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from uuid import uuid4

import pytest
from nats.js import JetStreamContext

from opspawn_contracts.dead_letters import DeadLetterSource
from opspawn_contracts.events import (
    TaskFailed,
    TaskStarted,
    TaskStartedData,
    TaskSubmitted,
    TaskSubmittedData,
)
from opspawn_contracts.streams import runner_submitted_consumer, runner_work_consumer
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.work import TaskAssignment
from opspawn_messaging.dead_letters import DeadLetters
from opspawn_messaging.event_log import EventLog
from scheduler.app import running
from scheduler.settings import SchedulerSettings

pytestmark = pytest.mark.integration


async def _nothing_delivered(subscription: JetStreamContext.PullSubscription) -> bool:
    try:
        await subscription.fetch(1, timeout=1.5)
    except TimeoutError:
        return True
    return False


async def test_work_that_reaches_max_deliver_is_dead_lettered_and_its_task_failed(
    settings: SchedulerSettings, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    config = dataclasses.replace(runner_work_consumer(subjects), ack_wait=0.5, max_deliver=2)
    dying_runners = await jetstream.pull_subscribe(
        subjects.all_work, durable=config.durable_name, stream=subjects.work_stream, config=config
    )
    log = EventLog(jetstream, subjects)
    submitted = TaskSubmitted(
        task_id=uuid4(),
        correlation_id=uuid4(),
        data=TaskSubmittedData(task_type="agent_run", input_data={"plan": []}),
    )
    await log.append(submitted, expected_version=0)
    assignment = TaskAssignment(
        task_id=submitted.task_id,
        task_type="agent_run",
        input_data={"plan": []},
        correlation_id=submitted.correlation_id,
        causation_id=submitted.event_id,
    )
    async with running(settings) as scheduler:
        work = await jetstream.publish(
            subjects.work("agent_run"),
            assignment.model_dump_json().encode(),
            stream=subjects.work_stream,
        )
        for attempt in (1, 2):  # each runner starts the task, then dies without a word
            (message,) = await dying_runners.fetch(1, timeout=5)
            assert message.metadata.num_delivered == attempt
            await log.append(
                TaskStarted(
                    task_id=submitted.task_id,
                    correlation_id=submitted.correlation_id,
                    data=TaskStartedData(attempt=attempt, runner_id=f"runner-{attempt}"),
                )
            )
        # A live runner keeps pulling: JetStream notices the exhausted item while serving it.
        assert await _nothing_delivered(dying_runners)
        deadline = time.monotonic() + 10
        while not isinstance((await log.task_history(submitted.task_id))[-1].event, TaskFailed):
            assert time.monotonic() < deadline, "the task was never failed"
            await asyncio.sleep(0.05)
        assert scheduler.abandoned.tasks_failed == 1
    await dying_runners.unsubscribe()

    failed = (await log.task_history(submitted.task_id))[-1].event
    assert isinstance(failed, TaskFailed)
    assert failed.data.attempt == 2
    assert "delivered 2 times" in failed.data.error_message
    [letter] = await DeadLetters(jetstream, subjects, service="test").entries()
    assert (letter.source, letter.source_sequence, letter.deliveries) == (
        DeadLetterSource.WORK,
        work.seq,
        2,
    )
    assert letter.payload == assignment.model_dump_json().encode()
    assert (await jetstream.stream_info(subjects.work_stream)).state.messages == 0


async def test_a_first_attempt_that_reaches_max_deliver_fails_its_task_and_its_event_stays(
    settings: SchedulerSettings, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    """A first attempt's work is the task's TaskSubmitted: a copy is dead-lettered, the task
    failed, and the event itself stays in the events stream like every event."""
    config = dataclasses.replace(runner_submitted_consumer(subjects), ack_wait=0.5, max_deliver=2)
    await jetstream.add_consumer(subjects.events_stream, config)
    dying_runners = await jetstream.pull_subscribe(
        subjects.events_of_type("TaskSubmitted"),
        durable=config.durable_name,
        stream=subjects.events_stream,
    )
    log = EventLog(jetstream, subjects)
    submitted = TaskSubmitted(
        task_id=uuid4(),
        correlation_id=uuid4(),
        data=TaskSubmittedData(task_type="agent_run", input_data={"plan": []}),
    )
    async with running(settings) as scheduler:
        sequence = await log.append(submitted, expected_version=0)
        for attempt in (1, 2):  # each runner starts the task, then dies without a word
            (message,) = await dying_runners.fetch(1, timeout=5)
            assert message.metadata.num_delivered == attempt
            await log.append(
                TaskStarted(
                    task_id=submitted.task_id,
                    correlation_id=submitted.correlation_id,
                    data=TaskStartedData(attempt=attempt, runner_id=f"runner-{attempt}"),
                )
            )
        assert await _nothing_delivered(dying_runners)
        deadline = time.monotonic() + 10
        while not isinstance((await log.task_history(submitted.task_id))[-1].event, TaskFailed):
            assert time.monotonic() < deadline, "the task was never failed"
            await asyncio.sleep(0.05)
        assert scheduler.abandoned.tasks_failed == 1
    await dying_runners.unsubscribe()

    history = await log.task_history(submitted.task_id)
    assert history[0].sequence == sequence
    assert history[0].event == submitted
    failed = history[-1].event
    assert isinstance(failed, TaskFailed)
    assert "delivered 2 times" in failed.data.error_message
    [letter] = await DeadLetters(jetstream, subjects, service="test").entries()
    assert (letter.source, letter.source_sequence, letter.deliveries) == (
        DeadLetterSource.EVENTS,
        sequence,
        2,
    )
