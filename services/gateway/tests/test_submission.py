"""Submission: what a valid request is, and what each answer of the scheduler (or none) becomes;
the read model is unreachable throughout, and nothing depends on it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from pydantic import ValidationError
from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api_errors import IdempotencyConflict, InvalidRequest, ServiceUnavailable
from gateway.auth import DEVELOPMENT_PRINCIPAL
from gateway.reading import TaskReader
from gateway.submission import (
    Submission,
    TaskRequest,
    TaskSubmitter,
    describe_validation_error,
    idempotent_task_id,
    parse_idempotency_key,
)
from opspawn_contracts.commands import SubmitAnswer
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.task import TaskStatus
from opspawn_messaging.event_log import EventLog
from opspawn_readmodel.database import create_engine
from services.gateway.tests.conftest import SchedulerStandIn


@pytest.mark.parametrize(
    "input_data",
    [
        {},
        {"goal": "no plan at all", "anything": [1, {"nested": None}]},
        {"plan": [{"tool": "math.add", "args": {"a": 1, "b": 2}}]},
        {"plan": [{"tool": "util.echo"}]},
        {"plan": [{"tool": "time.get_current_time", "args": {}, "timeout_seconds": 0.5}]},
        {"plan": [{"tool": "fs-server.read.file_v2", "args": {}}]},
    ],
)
def test_valid_requests(input_data: dict[str, Any]) -> None:
    request = TaskRequest.model_validate({"task_type": "agent_run", "input_data": input_data})

    assert request.input_data == input_data


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"input_data": {}}, "task_type: Field required"),
        ({"task_type": "a.b"}, "task_type: task_type 'a.b' must be letters, digits, '_' or '-'"),
        ({"task_type": "x" * 65}, "task_type: String should have at most 64 characters"),
        ({"task_type": "t", "input_data": "text"}, "input_data: Input should be a valid dict"),
        ({"task_type": "t", "input_data": {"plan": {}}}, "plan: Input should be a valid list"),
        ({"task_type": "t", "input_data": {"plan": ["math.add"]}}, "plan[0]: Input should be"),
        (
            {"task_type": "t", "input_data": {"plan": [{"tool": "math.add"}, {"tool": ".x"}]}},
            "plan[1].tool: tool '.x' must be '<namespace>.<name>'",
        ),
        (
            {"task_type": "t", "input_data": {"plan": [{"tool": "math.add", "args": None}]}},
            "plan[0].args: Input should be a valid dictionary",
        ),
        (
            {"task_type": "t", "input_data": {"plan": [{"tool": "a.b", "timeout_seconds": 0}]}},
            "plan[0].timeout_seconds: Input should be greater than 0",
        ),
        ({"task_type": "t", "idempotency_key": "k"}, "idempotency_key: Extra inputs are not"),
        ({"task_type": "t", "input_data": {"plan": []}}, "plan: List should have at least 1 item"),
        (
            {"task_type": "t", "input_data": {"plan": [{"tool": "a.b", "note": "x"}]}},
            "plan[0].note: Extra inputs are not permitted",
        ),
    ],
)
def test_invalid_requests_say_which_field_and_why(body: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValidationError) as error:
        TaskRequest.model_validate(body)

    assert expected in describe_validation_error(error.value)


@pytest.mark.parametrize(
    ("options", "input_data", "expected"),
    [
        ({"timeout_seconds": 0}, {}, "options.timeout_seconds: Input should be greater than 0"),
        ({"max_attempts": 0}, {}, "options.max_attempts: Input should be greater than or equal"),
        ({"allowed_tools": []}, {}, "options.allowed_tools: List should have at least 1 item"),
        ({"allowed_tools": ["math"]}, {}, "options.allowed_tools[0]: String should match"),
        ({"retries": 3}, {}, "options.retries: Extra inputs are not permitted"),
    ],
)
def test_invalid_options_say_which_and_why(
    options: dict[str, Any], input_data: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ValidationError) as error:
        TaskRequest.model_validate({"task_type": "t", "input_data": input_data, "options": options})

    assert expected in describe_validation_error(error.value)


def test_allowed_tools_name_tools_or_whole_namespaces() -> None:
    request = TaskRequest.model_validate(
        {
            "task_type": "t",
            "input_data": {"plan": [{"tool": "math.add"}, {"tool": "time.get_current_time"}]},
            "options": {"allowed_tools": ["math.add", "time.*"], "timeout_seconds": 2.5},
        }
    )

    assert request.options.allowed_tools == ["math.add", "time.*"]
    assert request.options.timeout_seconds == 2.5


def test_the_request_hash_ignores_encoding_but_not_content() -> None:
    first = TaskRequest.model_validate_json('{"task_type": "t", "input_data": {"a": 1, "b": [2]}}')
    reordered = TaskRequest.model_validate_json(
        '{"input_data": {"b": [2], "a": 1}, "task_type": "t", "options": {}}'
    )
    other = TaskRequest.model_validate_json('{"task_type": "t", "input_data": {"a": 1, "b": [3]}}')
    limited = TaskRequest.model_validate_json(
        '{"task_type": "t", "input_data": {"a": 1, "b": [2]}, "options": {"max_attempts": 1}}'
    )

    assert first.canonical_hash() == reordered.canonical_hash()
    assert len({first.canonical_hash(), other.canonical_hash(), limited.canonical_hash()}) == 3


def test_idempotency_keys_are_checked_and_scoped_to_the_tenant() -> None:
    assert parse_idempotency_key(None) is None
    assert parse_idempotency_key("order-42:retry/1") == "order-42:retry/1"
    for bad in ("", "has space", "x" * 256, "naïve"):
        with pytest.raises(InvalidRequest, match="Idempotency-Key must be 1-255 printable"):
            parse_idempotency_key(bad)
    assert idempotent_task_id("acme", "k") == idempotent_task_id("acme", "k")
    assert idempotent_task_id("acme", "k") != idempotent_task_id("globex", "k")


@pytest.fixture
async def unreachable_database(database_url: str) -> AsyncIterator[AsyncEngine]:
    missing = make_url(database_url).set(database="no_such_database")
    engine = create_engine(missing.render_as_string(hide_password=False), pool_size=1)
    yield engine
    await engine.dispose()


@pytest.fixture
def submitter(
    nats_client: NatsClient,
    jetstream: JetStreamContext,
    subjects: Subjects,
    unreachable_database: AsyncEngine,
) -> TaskSubmitter:
    """A submitter whose read model is unreachable: nothing it answers may depend on it."""
    reader = TaskReader(unreachable_database, EventLog(jetstream, subjects))
    return TaskSubmitter(nats_client, subjects, reader, request_timeout=1)


async def _submit_while(
    submitter: TaskSubmitter,
    play: Callable[[], Awaitable[object]],
    *,
    idempotency_key: str | None = None,
) -> Submission:
    submitting = asyncio.create_task(
        submitter.submit(
            TaskRequest(task_type="agent_run", input_data={"a": 1}),
            DEVELOPMENT_PRINCIPAL,
            idempotency_key=idempotency_key,
        )
    )
    await play()
    return await submitting


@pytest.mark.integration
async def test_a_submit_is_answered_once_its_task_submitted_is_stored_not_projected(
    submitter: TaskSubmitter, scheduler: SchedulerStandIn
) -> None:
    async def store_it() -> None:
        command, _ = await scheduler.next_command()
        await scheduler.append(scheduler.submitted(command))

    submission = await _submit_while(submitter, store_it)

    task = submission.task
    assert task.status is TaskStatus.PENDING
    assert task.input_data == {"a": 1}
    assert task.tenant == DEVELOPMENT_PRINCIPAL.tenant
    assert not submission.replayed


@pytest.mark.integration
async def test_a_retried_submit_gets_the_task_from_the_events_stream_when_not_projected(
    submitter: TaskSubmitter, scheduler: SchedulerStandIn
) -> None:
    """The read model is unreachable and has never seen the task: the answer comes from the
    task's history, the source of truth."""

    async def first() -> None:
        command, _ = await scheduler.next_command()
        await scheduler.append(scheduler.submitted(command))

    original = await _submit_while(submitter, first, idempotency_key="k-1")

    async def again() -> None:
        command, _ = await scheduler.next_command()
        await scheduler.answer(
            command, SubmitAnswer(outcome="already_submitted", task_id=command.task_id)
        )

    retried = await _submit_while(submitter, again, idempotency_key="k-1")

    assert retried.replayed
    assert retried.task.task_id == original.task.task_id
    assert retried.task.status is TaskStatus.PENDING


@pytest.mark.integration
async def test_a_key_reused_for_another_request_is_a_conflict(
    submitter: TaskSubmitter, scheduler: SchedulerStandIn
) -> None:
    async def conflict() -> None:
        command, _ = await scheduler.next_command()
        await scheduler.answer(
            command,
            SubmitAnswer(outcome="conflict", task_id=command.task_id, detail="another command"),
        )

    with pytest.raises(IdempotencyConflict, match="already used for task"):
        await _submit_while(submitter, conflict, idempotency_key="k-2")


@pytest.mark.integration
async def test_without_a_scheduler_nothing_is_stored_and_the_client_is_told_to_retry(
    submitter: TaskSubmitter, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    with pytest.raises(ServiceUnavailable, match=r"no scheduler is running.*nothing was stored"):
        await submitter.submit(TaskRequest(task_type="agent_run"), DEVELOPMENT_PRINCIPAL)
    assert (await jetstream.stream_info(subjects.events_stream)).state.messages == 0


@pytest.mark.integration
async def test_an_unanswered_submit_says_its_outcome_is_unknown(
    submitter: TaskSubmitter, scheduler: SchedulerStandIn
) -> None:
    async def take_and_stall() -> None:
        await scheduler.next_command()

    with pytest.raises(ServiceUnavailable, match=r"may still be accepted.*same Idempotency-Key"):
        await _submit_while(submitter, take_and_stall, idempotency_key="k-3")
