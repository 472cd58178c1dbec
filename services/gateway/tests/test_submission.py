"""Submission: what a valid request is, and read-after-write when the read model is away."""

from __future__ import annotations

from typing import Any

import pytest
from nats.js import JetStreamContext
from pydantic import ValidationError
from sqlalchemy import make_url

from gateway.submission import TaskRequest, TaskSubmitter, describe_validation_error
from opspawn_contracts.commands import decode_command
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.task import TaskStatus
from opspawn_readmodel.database import create_engine
from opspawn_readmodel.queries import ReadModel


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


@pytest.mark.integration
async def test_an_unreachable_read_model_still_answers_with_the_pending_task(
    jetstream: JetStreamContext, subjects: Subjects, database_url: str
) -> None:
    missing = make_url(database_url).set(database="no_such_database")
    engine = create_engine(missing.render_as_string(hide_password=False), pool_size=1)
    submitter = TaskSubmitter(jetstream, subjects, ReadModel(engine), read_after_write_timeout=2)
    try:
        task = await submitter.submit(TaskRequest(task_type="agent_run", input_data={"a": 1}))
    finally:
        await engine.dispose()

    stored = await jetstream.get_last_msg(subjects.commands_stream, subjects.command("submit"))
    command = decode_command(stored.data or b"")
    assert task.task_id == command.task_id
    assert task.status is TaskStatus.PENDING
    assert task.input_data == {"a": 1}
    assert task.created_at == command.issued_at
