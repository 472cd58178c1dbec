"""Retry decisions: a failed attempt becomes TaskRetryScheduled or TaskFailed; due retries are
queued."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from uuid import UUID, uuid4

import pytest
from nats.js import JetStreamContext

from opspawn_contracts.events import (
    Event,
    TaskAttemptFailed,
    TaskAttemptFailedData,
    TaskFailed,
    TaskOptions,
    TaskRetryScheduled,
    TaskStarted,
    TaskStartedData,
    TaskSubmitted,
    TaskSubmittedData,
)
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.work import TaskAssignment
from opspawn_messaging.event_log import EventLog, StoredEvent
from scheduler.retries import Retries, RetryPolicy

pytestmark = pytest.mark.integration


@pytest.fixture
async def retries(jetstream: JetStreamContext, subjects: Subjects) -> AsyncIterator[Retries]:
    retries = Retries(
        jetstream, subjects, policy=RetryPolicy(0.3, 1.0), default_max_attempts=1, poll_interval=0.1
    )
    await retries.start()
    stop = asyncio.Event()
    loop = asyncio.create_task(retries.run(stop))
    yield retries
    stop.set()
    await loop


async def _failed_attempt(
    log: EventLog, *, max_attempts: int | None, attempt: int = 1
) -> list[Event]:
    submitted = TaskSubmitted(
        task_id=uuid4(),
        correlation_id=uuid4(),
        data=TaskSubmittedData(
            task_type="agent_run",
            input_data={"plan": []},
            options=TaskOptions(max_attempts=max_attempts),
        ),
    )
    common = {"task_id": submitted.task_id, "correlation_id": submitted.correlation_id}
    story: list[Event] = [
        submitted,
        TaskStarted(**common, data=TaskStartedData(attempt=attempt, runner_id="r")),
        TaskAttemptFailed(
            **common, data=TaskAttemptFailedData(attempt=attempt, error_message="tool broke")
        ),
    ]
    after = 0
    for event in story:
        after = await log.append(event, expected_version=after)
    return story


async def _history_ending_with(
    log: EventLog, task_id: UUID, event_type: str, timeout: float = 10
) -> list[StoredEvent]:
    deadline = time.monotonic() + timeout
    while True:
        history = await log.task_history(task_id)
        if history[-1].event.event_type == event_type:
            return history
        assert time.monotonic() < deadline, [stored.event.event_type for stored in history]
        await asyncio.sleep(0.02)


async def _queued(js: JetStreamContext, subjects: Subjects) -> list[TaskAssignment]:
    info = await js.stream_info(subjects.work_stream)
    found = []
    for sequence in range(info.state.first_seq, info.state.last_seq + 1):
        if info.state.messages == 0:
            break
        stored = await js.get_msg(subjects.work_stream, seq=sequence)
        found.append(TaskAssignment.model_validate_json(stored.data or b""))
    return found


async def test_a_failed_attempt_with_attempts_left_is_retried_after_a_backoff(
    jetstream: JetStreamContext, subjects: Subjects, retries: Retries
) -> None:
    log = EventLog(jetstream, subjects)
    story = await _failed_attempt(log, max_attempts=3)
    failed = story[-1]

    history = await _history_ending_with(log, failed.task_id, "TaskRetryScheduled")
    retry = history[-1].event
    assert isinstance(retry, TaskRetryScheduled)
    assert retry.causation_id == failed.event_id
    assert retry.data.attempt == 2
    assert retry.data.reason == "attempt 1 failed: tool broke"
    assert 0.15 <= retry.data.delay_seconds <= 0.3
    waited = (retry.data.not_before - retry.occurred_at).total_seconds()
    assert abs(waited - retry.data.delay_seconds) < 0.05
    assert await _queued(jetstream, subjects) == []

    deadline = time.monotonic() + 10
    while not (queued := await _queued(jetstream, subjects)):
        assert time.monotonic() < deadline, "the retry was never queued"
        await asyncio.sleep(0.02)
    [assignment] = queued
    assert (assignment.task_id, assignment.attempt) == (failed.task_id, 2)
    assert assignment.causation_id == retry.event_id
    assert assignment.options.max_attempts == 3
    assert retries.stats.retries_scheduled == 1
    assert retries.stats.retries_queued == 1


async def test_the_last_attempt_failing_fails_the_task(
    jetstream: JetStreamContext, subjects: Subjects, retries: Retries
) -> None:
    log = EventLog(jetstream, subjects)
    story = await _failed_attempt(log, max_attempts=2, attempt=2)

    history = await _history_ending_with(log, story[0].task_id, "TaskFailed")

    failed = history[-1].event
    assert isinstance(failed, TaskFailed)
    assert failed.data.error_message == "tool broke (gave up after 2 attempts)"
    assert failed.data.attempt == 2
    assert retries.stats.attempts_exhausted == 1


async def test_deciding_again_on_the_same_failure_adds_nothing(
    jetstream: JetStreamContext, subjects: Subjects, retries: Retries
) -> None:
    """A redelivered TaskAttemptFailed (a scheduler crashed before acking) decides nothing new."""
    log = EventLog(jetstream, subjects)
    story = await _failed_attempt(log, max_attempts=3)
    await _history_ending_with(log, story[0].task_id, "TaskRetryScheduled")

    assert await retries.react(story[-1]) is None

    history = await log.task_history(story[0].task_id)
    assert [stored.event.event_type for stored in history].count("TaskRetryScheduled") == 1


def test_backoff_doubles_per_attempt_with_jitter_and_a_ceiling() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=5.0)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)]:
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert max(delays) - min(delays) > ceiling / 4
