"""Submission: what a valid request is, and read-after-write when the read model is away."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.js import JetStreamContext
from pydantic import ValidationError
from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api_errors import InvalidRequest, ServiceUnavailable
from gateway.arrivals import TaskArrivals
from gateway.auth import DEVELOPMENT_PRINCIPAL
from gateway.reading import TaskReader
from gateway.submission import (
    TaskRequest,
    TaskSubmitter,
    describe_validation_error,
    idempotent_task_id,
    parse_idempotency_key,
)
from opspawn_contracts.commands import decode_command
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.task import TaskStatus
from opspawn_readmodel.database import create_engine


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
async def unreachable_arrivals(unreachable_database: AsyncEngine) -> AsyncIterator[TaskArrivals]:
    """Arrivals on the unreachable read model, closed after the test: its listener would
    otherwise keep retrying the missing database for the rest of the session."""
    arrivals = TaskArrivals(unreachable_database)
    yield arrivals
    await arrivals.close()


@pytest.mark.integration
async def test_an_unreachable_read_model_still_answers_with_the_pending_task(
    jetstream: JetStreamContext,
    subjects: Subjects,
    unreachable_database: AsyncEngine,
    unreachable_arrivals: TaskArrivals,
) -> None:
    submitter = TaskSubmitter(
        jetstream,
        subjects,
        TaskReader(unreachable_database),
        unreachable_arrivals,
        read_after_write_timeout=2,
    )
    submission = await submitter.submit(
        TaskRequest(task_type="agent_run", input_data={"a": 1}), DEVELOPMENT_PRINCIPAL
    )

    stored = await jetstream.get_last_msg(subjects.commands_stream, subjects.command("submit"))
    command = decode_command(stored.data or b"")
    task = submission.task
    assert task.task_id == command.task_id
    assert task.status is TaskStatus.PENDING
    assert task.input_data == {"a": 1}
    assert task.created_at == command.issued_at
    assert task.tenant == DEVELOPMENT_PRINCIPAL.tenant
    assert not submission.replayed


@pytest.mark.integration
async def test_an_idempotent_submit_needs_the_read_model_and_stores_nothing_without_it(
    jetstream: JetStreamContext,
    subjects: Subjects,
    unreachable_database: AsyncEngine,
    unreachable_arrivals: TaskArrivals,
) -> None:
    submitter = TaskSubmitter(
        jetstream,
        subjects,
        TaskReader(unreachable_database),
        unreachable_arrivals,
        read_after_write_timeout=2,
    )

    with pytest.raises(ServiceUnavailable, match="nothing was stored, retry"):
        await submitter.submit(
            TaskRequest(task_type="agent_run"), DEVELOPMENT_PRINCIPAL, idempotency_key="k-1"
        )
    assert (await jetstream.stream_info(subjects.commands_stream)).state.messages == 0
