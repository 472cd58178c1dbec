"""The committed AsyncAPI document is what the contracts generate, covers every event type in its
current schema version and every subject, and is valid AsyncAPI 3.0.

Adding an event type (or bumping a schema version) without running ``make asyncapi`` fails here:
the throwaway models below stand for such a change without touching the real contracts.
"""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from uuid import uuid4

import pytest
from jsonschema import (  # type: ignore[import-untyped]  # ships no type information
    Draft7Validator,
    Draft202012Validator,
)
from pydantic import BaseModel, create_model

from opspawn_contracts.asyncapi import (
    COMMAND_MODELS,
    EVENT_MODELS,
    PLACEHOLDER_SUBJECTS,
    PLACEHOLDER_TASK_ID,
    asyncapi_document,
    channel_address,
    placeholder,
    render,
    undocumented_event_types,
)
from opspawn_contracts.commands import SubmitTask, encode_command
from opspawn_contracts.dead_letters import DeadLetterSource
from opspawn_contracts.events import (
    CURRENT_SCHEMA_VERSIONS,
    TaskCancelled,
    TaskCancelledData,
    TaskStarted,
    TaskStartedData,
    TaskSubmitted,
    TaskSubmittedData,
    encode_event,
)
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.work import TaskAssignment

REPOSITORY = Path(__file__).resolve().parents[3]
COMMITTED = REPOSITORY / "docs" / "asyncapi.json"
ASYNCAPI_SCHEMA = Path(__file__).parent / "asyncapi_schema" / "asyncapi-3.0.0.json"


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(COMMITTED.read_text())
    return document


def _throwaway_event_type() -> type[BaseModel]:
    """An event type the contracts do not have (as if just added to the ``Event`` union)."""
    tag: Any = Literal["TaskPaused"]
    return create_model("TaskPaused", __base__=TaskCancelled, event_type=(tag, "TaskPaused"))


def test_the_committed_document_is_what_the_contracts_generate() -> None:
    assert COMMITTED.read_text() == render(asyncapi_document()), (
        "docs/asyncapi.json is out of date with the contracts: run `make asyncapi`"
    )


def test_every_event_type_is_documented_in_its_current_schema_version(
    committed: dict[str, Any],
) -> None:
    assert undocumented_event_types(committed) == []
    messages = committed["components"]["messages"]
    schemas = committed["components"]["schemas"]
    for event_type, version in CURRENT_SCHEMA_VERSIONS.items():
        message = messages[event_type]
        assert message["x-schema-version"] == version
        schema = schemas[message["payload"]["$ref"].rsplit("/", 1)[-1]]
        assert schema["properties"]["event_type"]["const"] == event_type
        [channel] = [
            channel
            for channel in committed["channels"].values()
            if event_type in channel["messages"]
        ]
        assert channel["address"] == f"{{prefix}}.events.task.{{task_id}}.{event_type}"
        assert set(channel["parameters"]) == {"prefix", "task_id"}


def test_an_event_type_added_without_regenerating_fails_the_check(
    committed: dict[str, Any],
) -> None:
    paused = _throwaway_event_type()
    with_paused = [*EVENT_MODELS, paused]

    assert undocumented_event_types(committed, with_paused) == ["TaskPaused v1"]
    regenerated = asyncapi_document(with_paused)
    assert render(regenerated) != COMMITTED.read_text()
    assert undocumented_event_types(regenerated, with_paused) == []
    assert regenerated["channels"]["eventTaskPaused"]["address"] == (
        "{prefix}.events.task.{task_id}.TaskPaused"
    )


def test_a_schema_version_raised_without_regenerating_fails_the_check(
    committed: dict[str, Any],
) -> None:
    started_v3 = create_model("TaskStarted", __base__=TaskStarted, schema_version=(int, 3))
    models = [started_v3 if model is TaskStarted else model for model in EVENT_MODELS]

    assert undocumented_event_types(committed, models) == ["TaskStarted v3"]
    regenerated = asyncapi_document(models)
    assert regenerated["components"]["messages"]["TaskStarted"]["x-schema-version"] == 3


def test_the_document_is_valid_asyncapi_3(committed: dict[str, Any]) -> None:
    validator = Draft7Validator(json.loads(ASYNCAPI_SCHEMA.read_text()))

    assert [error.message for error in validator.iter_errors(committed)] == []
    breakages: list[Callable[[dict[str, Any]], None]] = [
        lambda document: document["operations"]["publishTaskStarted"].update(action="publish"),
        lambda document: document["channels"]["work"].update(address=42),
        lambda document: document["components"]["messages"]["TaskStarted"].update(payload=[]),
    ]
    for breakage in breakages:
        broken = copy.deepcopy(committed)
        breakage(broken)
        assert list(validator.iter_errors(broken)), "the schema let a broken document through"


def _payload_validator(document: dict[str, Any], message: str) -> Draft202012Validator:
    payload = document["components"]["messages"][message]["payload"]
    return Draft202012Validator({**payload, "components": document["components"]})


def test_the_payload_schemas_accept_what_the_services_write_and_refuse_what_they_refuse(
    committed: dict[str, Any],
) -> None:
    task, correlation = uuid4(), uuid4()
    written: dict[str, bytes] = {
        "TaskSubmitted": encode_event(
            TaskSubmitted(
                task_id=task,
                correlation_id=correlation,
                data=TaskSubmittedData(task_type="agent_run", input_data={"plan": [{"a": None}]}),
            )
        ),
        "TaskStarted": encode_event(
            TaskStarted(
                task_id=task,
                correlation_id=correlation,
                data=TaskStartedData(attempt=2, runner_id="r", supersedes_attempt=1),
            )
        ),
        "TaskCancelled": encode_event(
            TaskCancelled(task_id=task, correlation_id=correlation, data=TaskCancelledData())
        ),
        "SubmitTask": encode_command(
            SubmitTask(
                task_id=task, correlation_id=correlation, task_type="agent_run", input_data={}
            )
        ),
        "TaskAssignment": TaskAssignment(
            task_id=task,
            task_type="agent_run",
            input_data={},
            correlation_id=correlation,
            causation_id=uuid4(),
        )
        .model_dump_json()
        .encode(),
    }
    for message, payload in written.items():
        validator = _payload_validator(committed, message)
        document = json.loads(payload)
        assert list(validator.iter_errors(document)) == [], message
        del document["task_id"]
        assert list(validator.iter_errors(document)), f"{message} without task_id"


SUBJECTS_LEFT_OUT = {
    "prefix": "the parameter every address starts with",
    "events_stream": "a stream name (each channel's x-opspawn-stream)",
    "commands_stream": "a stream name",
    "work_stream": "a stream name",
    "dead_letters_stream": "a stream name",
    "all_events": "a wildcard over the event channels (in the info description)",
    "task_events": "a wildcard over one task's event channels",
    "events_of_type": "a wildcard over one event channel's tasks",
    "all_commands": "a wildcard over the command channels",
    "all_work": "a wildcard over the work channel",
    "all_dead_letters": "a wildcard over the dead-letter channel",
    "mcp_call_tool_any": "a wildcard over the tool-call channel",
    "task_id_of": "parses a subject",
    "scheduler_commands_consumer": "a durable consumer name",
    "scheduler_queue_group": "a queue group name, not a subject",
    "scheduler_decisions_consumer": "a durable consumer name",
    "runner_work_consumer": "a durable consumer name",
    "runner_submitted_consumer": "a durable consumer name",
    "mcp_proxy_queue_group": "a queue group name",
    "work_max_deliveries_advisory": "JetStream's own advisory, in JetStream's format",
    "submitted_max_deliveries_advisory": "JetStream's own advisory, in JetStream's format",
}
"""Members of :class:`Subjects` that name no channel of their own, and why."""

SUBJECT_CHANNELS: dict[str, Callable[[Subjects], list[str]]] = {
    "event": lambda subjects: [
        subjects.event(PLACEHOLDER_TASK_ID, event_type) for event_type in CURRENT_SCHEMA_VERSIONS
    ],
    "command": lambda subjects: [
        subjects.command(str(model.model_fields["command_type"].default))
        for model in COMMAND_MODELS
    ],
    "work": lambda subjects: [subjects.work(placeholder("task_type"))],
    "dead_letter": lambda subjects: [subjects.dead_letter(placeholder("source"))],
    "mcp_list_tools": lambda subjects: [subjects.mcp_list_tools],
    "mcp_call_tool": lambda subjects: [subjects.mcp_call_tool(placeholder("server"))],
    "mcp_status": lambda subjects: [subjects.mcp_status],
    "scheduler_status": lambda subjects: [subjects.scheduler_status],
    "submit_requests": lambda subjects: [subjects.submit_requests],
}
"""Members of :class:`Subjects` that name channels, and the subjects they name."""


def test_every_subject_the_contracts_define_is_a_channel_or_deliberately_left_out(
    committed: dict[str, Any],
) -> None:
    members = {name for name, _ in inspect.getmembers(Subjects) if not name.startswith("_")}
    unaccounted = members - SUBJECTS_LEFT_OUT.keys() - SUBJECT_CHANNELS.keys()
    assert not unaccounted, (
        f"Subjects gained {sorted(unaccounted)}: give it a channel in opspawn_contracts.asyncapi "
        "(and SUBJECT_CHANNELS here), or say in SUBJECTS_LEFT_OUT why it has none"
    )
    addresses = {channel["address"] for channel in committed["channels"].values()}
    for name, subjects_of in SUBJECT_CHANNELS.items():
        for subject in subjects_of(PLACEHOLDER_SUBJECTS):
            assert channel_address(subject) in addresses, (name, subject)
    dead_letter_channel = committed["channels"]["deadLetters"]
    assert dead_letter_channel["parameters"]["source"]["enum"] == [
        source.value for source in DeadLetterSource
    ]
