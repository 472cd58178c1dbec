"""The event log: optimistic appends per task, and a task's history read back and folded."""

from __future__ import annotations

from datetime import timedelta
from uuid import uuid4

import pytest
from nats.js import JetStreamContext

from opspawn_contracts.events import TaskStarted, TaskStartedData, TaskSubmitted, TaskSubmittedData
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.task import TaskStatus, fold
from opspawn_messaging.event_log import ConcurrencyConflict, EventLog


async def test_event_log_appends_in_order_and_rejects_interleaving(
    jetstream: JetStreamContext, subjects: Subjects
) -> None:
    log = EventLog(jetstream, subjects)
    task_id, correlation = uuid4(), uuid4()
    submitted = TaskSubmitted(
        task_id=task_id,
        correlation_id=correlation,
        data=TaskSubmittedData(task_type="agent_run", input_data={"goal": "x"}),
    )
    first = await log.append(submitted, expected_version=0)
    assert await log.append(submitted) == first  # deduplicated by event id
    with pytest.raises(ConcurrencyConflict):  # the stale expectation is checked first
        await log.append(submitted, expected_version=0)
    started = TaskStarted(
        task_id=task_id, correlation_id=correlation, data=TaskStartedData(attempt=1, runner_id="r")
    )
    with pytest.raises(ConcurrencyConflict):
        await log.append(started, expected_version=0)
    second = await log.append(started, expected_version=first)
    history = await log.task_history(task_id)
    assert [(stored.sequence, stored.event) for stored in history] == [
        (first, submitted),
        (second, started),
    ]


async def test_a_history_folds_into_the_task_state_as_of_any_point(
    jetstream: JetStreamContext, subjects: Subjects
) -> None:
    log = EventLog(jetstream, subjects)
    task_id, correlation = uuid4(), uuid4()
    submitted = TaskSubmitted(
        task_id=task_id,
        correlation_id=correlation,
        data=TaskSubmittedData(task_type="agent_run", input_data={"goal": "x"}),
    )
    first = await log.append(submitted, expected_version=0)
    started = TaskStarted(
        task_id=task_id,
        correlation_id=correlation,
        occurred_at=submitted.occurred_at + timedelta(seconds=5),
        data=TaskStartedData(attempt=1, runner_id="r"),
    )
    second = await log.append(started, expected_version=first)

    history = await log.task_history(task_id)
    state = history.state()
    assert state is not None
    assert (state.status, state.attempt, state.updated_at) == (
        TaskStatus.RUNNING,
        1,
        started.occurred_at,
    )
    assert history.last_sequence == second

    before_start = history.until(sequence=first)
    assert [stored.event for stored in before_start] == [submitted]
    assert before_start.last_sequence == first
    then = before_start.state()
    assert then is not None
    assert then.status is TaskStatus.PENDING
    assert history.until(at=submitted.occurred_at).state() == then
    assert history.until(sequence=first - 1).state() is None
    assert fold(stored.event for stored in history) == state
