"""Deadlines: an open task past its deadline is timed out; a finished one is left alone."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import uuid4

import pytest
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from opspawn_contracts.events import (
    Event,
    TaskCompleted,
    TaskCompletedData,
    TaskOptions,
    TaskStarted,
    TaskStartedData,
    TaskSubmitted,
    TaskSubmittedData,
    TaskTimedOut,
    utc_now,
)
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.task import TaskStatus
from opspawn_messaging.event_log import EventLog
from opspawn_readmodel.queries import ReadModel
from scheduler.deadlines import DeadlineWatch
from scheduler.projection import Projection

pytestmark = pytest.mark.integration


async def _store(log: EventLog, events: list[Event]) -> int:
    after = 0
    for event in events:
        after = await log.append(event, expected_version=after)
    return after


def _task(timeout: float, *, started: bool, completed: bool = False) -> list[Event]:
    submitted = TaskSubmitted(
        task_id=uuid4(),
        correlation_id=uuid4(),
        data=TaskSubmittedData(
            task_type="agent_run", input_data={}, options=TaskOptions(timeout_seconds=timeout)
        ),
    )
    common: dict[str, Any] = {
        "task_id": submitted.task_id,
        "correlation_id": submitted.correlation_id,
    }
    story: list[Event] = [submitted]
    if started:
        story.append(TaskStarted(**common, data=TaskStartedData(attempt=1, runner_id="r")))
    if completed:
        story.append(TaskCompleted(**common, data=TaskCompletedData(attempt=1, output_data={})))
    return story


async def test_open_tasks_past_their_deadline_time_out_and_others_do_not(
    jetstream: JetStreamContext, subjects: Subjects, engine: AsyncEngine, projection: Projection
) -> None:
    log = EventLog(jetstream, subjects)
    waiting = _task(5, started=False)
    running = _task(5, started=True)
    finished = _task(5, started=True, completed=True)
    patient = _task(3600, started=True)
    last = 0
    for story in (waiting, running, finished, patient):
        last = max(last, await _store(log, story))
    await projection.wait_for(last, timeout=10)
    later = utc_now() + timedelta(seconds=10)
    watch = DeadlineWatch(engine, log, subjects, clock=lambda: later)

    assert await watch.sweep() == 2
    assert await watch.sweep() == 0  # nothing twice

    for story, expected in ((waiting, 0), (running, 1)):
        history = await log.task_history(story[0].task_id)
        timed_out = history[-1].event
        assert isinstance(timed_out, TaskTimedOut)
        assert timed_out.data.attempt == expected
        assert timed_out.data.timeout_seconds == 5
        assert "deadline of 5s exceeded" in timed_out.data.reason
    for story in (finished, patient):
        assert len(await log.task_history(story[0].task_id)) == len(story)
    await projection.wait_for(last + 2, timeout=10)
    task = await ReadModel(engine).get_task(running[0].task_id)
    assert task is not None
    assert task.status is TaskStatus.FAILED
    assert task.error_message == "deadline of 5s exceeded during attempt 1"
