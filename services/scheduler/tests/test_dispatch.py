"""Commands in, one TaskSubmitted and one work item out, however often a command arrives."""

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
from opspawn_messaging.event_log import EventLog

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


async def _queued(js: JetStreamContext, subjects: Subjects) -> list[tuple[str, TaskAssignment]]:
    """Every work item on the queue: its Nats-Msg-Id and the assignment."""
    info = await js.stream_info(subjects.work_stream)
    items: list[tuple[str, TaskAssignment]] = []
    if info.state.messages == 0:
        return items
    for sequence in range(info.state.first_seq, info.state.last_seq + 1):
        stored = await js.get_msg(subjects.work_stream, seq=sequence)
        assert stored.data is not None
        msg_id = (stored.headers or {}).get("Nats-Msg-Id", "")
        items.append((msg_id, TaskAssignment.model_validate_json(stored.data)))
    assert len(items) == info.state.messages
    return items


async def test_submit_stores_task_submitted_and_queues_the_first_attempt(
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
        task_type=command.task_type, input_data=command.input_data
    )
    [(msg_id, assignment)] = await _queued(jetstream, subjects)
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
    assert msg_id == assignment.msg_id()
    work = await jetstream.stream_info(subjects.work_stream, subjects_filter=subjects.all_work)
    assert work.state.subjects == {subjects.work(command.task_type): 1}


async def test_a_redelivered_command_adds_no_second_event_nor_assignment(
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
    assert len(await _queued(jetstream, subjects)) == 1


async def test_after_a_crash_between_append_and_queue_the_stored_event_is_queued(
    jetstream: JetStreamContext,
    subjects: Subjects,
    send_command: SendCommand,
    commands_settled: WaitSettled,
) -> None:
    """The first delivery stored TaskSubmitted and died; the redelivery must finish its work."""
    command = _submit_command()
    stored = TaskSubmitted(
        task_id=command.task_id,
        correlation_id=command.correlation_id,
        causation_id=command.command_id,
        data=TaskSubmittedData(task_type=command.task_type, input_data=command.input_data),
    )
    await EventLog(jetstream, subjects).append(stored, expected_version=0)

    await commands_settled(await send_command(command))

    [(_, assignment)] = await _queued(jetstream, subjects)
    assert assignment.causation_id == stored.event_id
    assert len(await EventLog(jetstream, subjects).task_history(command.task_id)) == 1


async def test_a_redelivery_after_the_task_started_queues_nothing(
    jetstream: JetStreamContext,
    subjects: Subjects,
    send_command: SendCommand,
    commands_settled: WaitSettled,
) -> None:
    """A runner started the task, so its work item arrived; another copy would run it twice."""
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

    assert await _queued(jetstream, subjects) == []
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
    [(_, assignment)] = await _queued(jetstream, subjects)
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

    [(_, assignment)] = await _queued(jetstream, subjects)
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
