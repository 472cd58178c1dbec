"""Commands in, one TaskSubmitted out (also the first attempt's work), however often they come."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import uuid4

import pytest
from nats.js import JetStreamContext

from opspawn_contracts.commands import SubmitTask
from opspawn_contracts.events import (
    TaskOptions,
    TaskStarted,
    TaskStartedData,
    TaskSubmitted,
    TaskSubmittedData,
)
from opspawn_contracts.streams import scheduler_commands_consumer
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.work import TaskAssignment
from opspawn_messaging.event_log import EventLog, read_event
from opspawn_messaging.streams import unsettled_messages

SendCommand = Callable[..., Awaitable[int]]
WaitSettled = Callable[..., Awaitable[None]]
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("dispatcher")]


def _submit_command(**overrides: Any) -> SubmitTask:
    fields: dict[str, Any] = {
        "task_id": uuid4(),
        "correlation_id": uuid4(),
        "task_type": "agent_run",
        "input_data": {"goal": "add", "plan": [{"tool": "math.add", "args": {"a": 1, "b": 2}}]},
    }
    return SubmitTask(**(fields | overrides))


async def _first_attempts(js: JetStreamContext, subjects: Subjects) -> list[TaskAssignment]:
    """The first attempts owed to the runners, as a runner reads them: every TaskSubmitted, each
    unsettled on the runners' consumer. No work item is stored for them."""
    assert (await js.stream_info(subjects.work_stream)).state.messages == 0
    submitted = subjects.events_of_type("TaskSubmitted")
    info = await js.stream_info(subjects.events_stream, subjects_filter=submitted)
    count = sum((info.state.subjects or {}).values())
    owed = await unsettled_messages(js, subjects.events_stream, subjects.runner_submitted_consumer)
    assert owed == count
    found: list[TaskAssignment] = []
    if count == 0:
        return found
    reader = await js.subscribe(submitted, stream=subjects.events_stream, ordered_consumer=True)
    for _ in range(count):
        message = await reader.next_msg(timeout=5)
        event = read_event(subjects, message.subject, message.data)
        assert isinstance(event, TaskSubmitted)
        found.append(TaskAssignment.first_attempt(event, sequence=message.metadata.sequence.stream))
    await reader.unsubscribe()
    return found


async def test_submit_stores_task_submitted_which_is_the_first_attempts_work(
    jetstream: JetStreamContext,
    subjects: Subjects,
    send_command: SendCommand,
    commands_settled: WaitSettled,
) -> None:
    command = _submit_command()

    await commands_settled(await send_command(command))

    history = await EventLog(jetstream, subjects).task_history(command.task_id)
    assert len(history) == 1
    submitted = history[0].event
    assert isinstance(submitted, TaskSubmitted)
    assert submitted.correlation_id == command.correlation_id
    assert submitted.causation_id == command.command_id
    assert submitted.data == TaskSubmittedData(
        task_type=command.task_type, input_data=command.input_data, attempts_allowed=1
    )
    [assignment] = await _first_attempts(jetstream, subjects)
    assert assignment == TaskAssignment(
        task_id=command.task_id,
        task_type=command.task_type,
        input_data=command.input_data,
        attempt=1,
        correlation_id=command.correlation_id,
        causation_id=submitted.event_id,
        options=TaskOptions(max_attempts=1),
        after_sequence=history[0].sequence,
    )


async def test_the_attempts_a_task_gets_are_fixed_at_submission(
    jetstream: JetStreamContext,
    subjects: Subjects,
    send_command: SendCommand,
    commands_settled: WaitSettled,
) -> None:
    """The client's ``max_attempts`` where it chose one, else the scheduler's default (1 here)."""
    chosen = _submit_command(options=TaskOptions(max_attempts=3))
    default = _submit_command()
    await commands_settled(await send_command(chosen))
    await commands_settled(await send_command(default))

    attempts = {
        a.task_id: a.options.max_attempts for a in await _first_attempts(jetstream, subjects)
    }
    assert attempts == {chosen.task_id: 3, default.task_id: 1}


async def test_a_redelivered_command_adds_no_second_event(
    jetstream: JetStreamContext,
    subjects: Subjects,
    send_command: SendCommand,
    commands_settled: WaitSettled,
) -> None:
    command = _submit_command()
    await commands_settled(await send_command(command))

    # The same command stored again, as after a publisher retry outside the dedup window.
    again = await send_command(command, msg_id=f"retry-{uuid4()}")
    await commands_settled(again)

    assert again == 2
    history = await EventLog(jetstream, subjects).task_history(command.task_id)
    assert [stored.event.event_type for stored in history] == ["TaskSubmitted"]
    assert len(await _first_attempts(jetstream, subjects)) == 1


async def test_a_redelivery_after_its_event_was_stored_stores_nothing_more(
    jetstream: JetStreamContext,
    subjects: Subjects,
    send_command: SendCommand,
    commands_settled: WaitSettled,
) -> None:
    """The first delivery stored TaskSubmitted and died before its ack: that event is already the
    first attempt's work, so the redelivery only acknowledges."""
    command = _submit_command()
    stored = TaskSubmitted(
        task_id=command.task_id,
        correlation_id=command.correlation_id,
        causation_id=command.command_id,
        data=TaskSubmittedData(task_type=command.task_type, input_data=command.input_data),
    )
    await EventLog(jetstream, subjects).append(stored, expected_version=0)

    await commands_settled(await send_command(command))

    [assignment] = await _first_attempts(jetstream, subjects)
    assert assignment.causation_id == stored.event_id
    assert len(await EventLog(jetstream, subjects).task_history(command.task_id)) == 1


async def test_a_redelivery_after_the_task_started_stores_nothing(
    jetstream: JetStreamContext,
    subjects: Subjects,
    send_command: SendCommand,
    commands_settled: WaitSettled,
) -> None:
    """A runner started the task; the redelivered command adds neither an event nor work."""
    command = _submit_command()
    log = EventLog(jetstream, subjects)
    first = await log.append(
        TaskSubmitted(
            task_id=command.task_id,
            correlation_id=command.correlation_id,
            causation_id=command.command_id,
            data=TaskSubmittedData(task_type=command.task_type, input_data=command.input_data),
        ),
        expected_version=0,
    )
    await log.append(
        TaskStarted(
            task_id=command.task_id,
            correlation_id=command.correlation_id,
            data=TaskStartedData(attempt=1, runner_id="runner-1"),
        ),
        expected_version=first,
    )

    await commands_settled(await send_command(command))

    assert (await jetstream.stream_info(subjects.work_stream)).state.messages == 0
    assert len(await log.task_history(command.task_id)) == 2


async def test_invalid_commands_are_terminated_with_the_reason_and_the_next_one_runs(
    jetstream: JetStreamContext,
    subjects: Subjects,
    send_command: SendCommand,
    commands_settled: WaitSettled,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="scheduler")
    valid = _submit_command()
    not_json = await send_command(b"{not json")
    bad_task_type = valid.model_dump(mode="json") | {"task_id": str(uuid4()), "task_type": "a b"}
    wrong_field = await send_command(json.dumps(bad_task_type).encode())
    good = await send_command(valid)

    await commands_settled(good)

    info = await jetstream.consumer_info(
        subjects.commands_stream, subjects.scheduler_commands_consumer
    )
    assert info.num_redelivered == 0
    [assignment] = await _first_attempts(jetstream, subjects)
    assert assignment.task_id == valid.task_id
    refusals = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(refusals) == 2
    assert f"refused command at sequence {not_json}" in refusals[0]
    assert "Invalid JSON" in refusals[0]
    assert f"refused command at sequence {wrong_field}" in refusals[1]
    assert "task_type" in refusals[1]


async def test_a_task_id_submitted_by_another_command_is_refused(
    jetstream: JetStreamContext,
    subjects: Subjects,
    send_command: SendCommand,
    commands_settled: WaitSettled,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="scheduler")
    original = _submit_command()
    await commands_settled(await send_command(original))
    impostor = _submit_command(task_id=original.task_id, input_data={"goal": "something else"})

    await commands_settled(await send_command(impostor))

    [assignment] = await _first_attempts(jetstream, subjects)
    assert assignment.input_data == original.input_data
    history = await EventLog(jetstream, subjects).task_history(original.task_id)
    assert len(history) == 1
    [refusal] = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert f"already submitted by command {original.command_id}" in refusal


async def test_the_durable_consumer_is_the_contract_one(
    jetstream: JetStreamContext, subjects: Subjects
) -> None:
    """The supervisor's readiness check looks for this consumer, configured as in contracts."""
    expected = scheduler_commands_consumer(subjects)
    info = await jetstream.consumer_info(
        subjects.commands_stream, subjects.scheduler_commands_consumer
    )
    assert info.config.durable_name == expected.durable_name
    assert info.config.filter_subject == expected.filter_subject
    assert info.config.ack_policy == expected.ack_policy
    assert (info.config.max_deliver, info.config.ack_wait) == (
        expected.max_deliver,
        expected.ack_wait,
    )
