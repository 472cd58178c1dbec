"""SubmitTask as a request: answered once TaskSubmitted is stored, with what became of it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from opspawn_contracts.commands import SubmitAnswer, SubmitTask, encode_command
from opspawn_contracts.subjects import Subjects
from opspawn_messaging.event_log import EventLog
from opspawn_messaging.streams import unsettled_messages
from scheduler.dispatch import CommandDispatcher
from scheduler.submit_requests import SubmitRequests

pytestmark = pytest.mark.integration


@pytest.fixture
async def requests(
    nats_client: NatsClient, jetstream: JetStreamContext, subjects: Subjects
) -> AsyncIterator[SubmitRequests]:
    responder = SubmitRequests(nats_client, subjects, CommandDispatcher(jetstream, subjects))
    await responder.start()
    yield responder
    await responder.stop()


def _command(**overrides: object) -> SubmitTask:
    fields: dict[str, object] = {
        "task_id": uuid4(),
        "correlation_id": uuid4(),
        "task_type": "agent_run",
        "input_data": {"plan": [{"tool": "util.noop"}]},
    }
    return SubmitTask.model_validate(fields | overrides)


async def _ask(client: NatsClient, subjects: Subjects, payload: bytes) -> SubmitAnswer:
    reply = await client.request(subjects.submit_requests, payload, timeout=5)
    return SubmitAnswer.model_validate_json(reply.data)


@pytest.mark.usefixtures("requests")
async def test_the_answer_comes_once_the_task_is_stored_which_is_its_first_attempts_work(
    nats_client: NatsClient, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    command = _command()

    answer = await _ask(nats_client, subjects, encode_command(command))

    assert answer == SubmitAnswer(outcome="submitted", task_id=command.task_id)
    history = await EventLog(jetstream, subjects).task_history(command.task_id)
    assert [stored.event.event_type for stored in history] == ["TaskSubmitted"]
    assert history[0].event.occurred_at == command.issued_at
    owed = await unsettled_messages(
        jetstream, subjects.events_stream, subjects.runner_submitted_consumer
    )
    assert owed == 1
    assert (await jetstream.stream_info(subjects.work_stream)).state.messages == 0


@pytest.mark.usefixtures("requests")
async def test_a_repeated_command_is_already_submitted_and_another_for_its_task_a_conflict(
    nats_client: NatsClient, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    command = _command()
    other = _command(task_id=command.task_id, input_data={})

    first = await _ask(nats_client, subjects, encode_command(command))
    again = await _ask(nats_client, subjects, encode_command(command))
    conflict = await _ask(nats_client, subjects, encode_command(other))

    assert (first.outcome, again.outcome) == ("submitted", "already_submitted")
    assert conflict.outcome == "conflict"
    assert conflict.detail is not None
    assert str(command.command_id) in conflict.detail
    history = await EventLog(jetstream, subjects).task_history(command.task_id)
    assert [stored.event.event_type for stored in history] == ["TaskSubmitted"]


@pytest.mark.usefixtures("requests")
async def test_a_request_that_is_no_command_is_refused_saying_why(
    nats_client: NatsClient, subjects: Subjects
) -> None:
    answer = await _ask(nats_client, subjects, b'{"command_type": "submit", "task_id": "x"}')

    assert answer.outcome == "refused"
    assert answer.task_id is None
    assert answer.detail is not None
    assert "not a valid SubmitTask" in answer.detail
    assert "task_id" in answer.detail
