"""The REST API over real HTTP, against the gateway running on real NATS and Postgres."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from nats.js import JetStreamContext

from gateway.app import Gateway
from gateway.settings import GatewaySettings
from opspawn_contracts.commands import SubmitTask
from opspawn_contracts.events import Event
from opspawn_contracts.subjects import Subjects
from services.gateway.tests.conftest import SchedulerStandIn

pytestmark = pytest.mark.integration

PLAN_INPUT: dict[str, Any] = {
    "goal": "add two numbers",
    "plan": [{"tool": "math.add", "args": {"a": 2, "b": 3}}],
}


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def _submit(http: httpx.AsyncClient, input_data: dict[str, Any]) -> dict[str, Any]:
    response = await http.post(
        "/v1/tasks", json={"task_type": "agent_run", "input_data": input_data}
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def _submit_and_project(
    http: httpx.AsyncClient, scheduler: SchedulerStandIn, input_data: dict[str, Any]
) -> SubmitTask:
    """Submit while the scheduler stand-in projects the task (submitted, then started)."""

    async def play_scheduler() -> SubmitTask:
        command, _ = await scheduler.next_command()
        await scheduler.submit_and_start(command)
        return command

    projecting = asyncio.create_task(play_scheduler())
    task = await _submit(http, input_data)
    command = await projecting
    assert task["task_id"] == str(command.task_id)
    return command


async def test_submit_publishes_the_command_and_answers_202_with_the_pending_task(
    gateway_settings: GatewaySettings, scheduler: SchedulerStandIn, subjects: Subjects
) -> None:
    settings = gateway_settings.model_copy(update={"read_after_write_timeout_seconds": 0.2})
    async with (
        Gateway(settings) as gateway,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.http_port}") as http,
    ):
        response = await http.post(
            "/v1/tasks", json={"task_type": "agent_run", "input_data": PLAN_INPUT}
        )

    assert response.status_code == 202, response.text
    task = response.json()
    assert response.headers["location"] == f"/v1/tasks/{task['task_id']}"
    command, message = await scheduler.next_command()
    assert message.subject == subjects.command("submit")
    assert message.headers is not None
    assert message.headers["Nats-Msg-Id"] == str(command.command_id)
    assert str(command.task_id) == task["task_id"]
    assert (command.task_type, command.input_data) == ("agent_run", PLAN_INPUT)
    # Nothing projected it within the bound, so the answer is the task built from the command.
    assert task["status"] == "pending"
    assert task["input_data"] == PLAN_INPUT
    assert task["output_data"] is None
    assert task["error_message"] is None
    assert _parse_time(task["created_at"]) == command.issued_at
    assert abs(datetime.now(UTC) - command.issued_at) < timedelta(minutes=1)
    assert UUID(task["task_id"]).version == 4


async def test_submit_answers_with_the_read_model_once_the_projection_shows_the_task(
    http: httpx.AsyncClient, scheduler: SchedulerStandIn
) -> None:
    async def play_scheduler() -> SubmitTask:
        command, _ = await scheduler.next_command()
        await scheduler.submit_and_start(command)
        return command

    projecting = asyncio.create_task(play_scheduler())
    task = await _submit(http, PLAN_INPUT)
    command = await projecting

    # 'running' and the event times can only have come from the read model.
    assert task["task_id"] == str(command.task_id)
    assert task["status"] == "running"
    assert _parse_time(task["created_at"]) == command.issued_at + timedelta(seconds=1)
    assert _parse_time(task["updated_at"]) == command.issued_at + timedelta(seconds=2)


async def test_get_returns_the_task_as_projected(
    http: httpx.AsyncClient, scheduler: SchedulerStandIn
) -> None:
    command = await _submit_and_project(http, scheduler, PLAN_INPUT)
    await scheduler.complete(command, {"result": 5})

    response = await http.get(f"/v1/tasks/{command.task_id}")

    assert response.status_code == 200
    task = response.json()
    assert task["task_id"] == str(command.task_id)
    assert task["task_type"] == "agent_run"
    assert task["status"] == "completed"
    assert task["input_data"] == PLAN_INPUT
    assert task["output_data"] == {"result": 5}
    assert task["error_message"] is None


async def test_unknown_and_malformed_task_ids(http: httpx.AsyncClient) -> None:
    unknown = uuid4()
    for path in (f"/v1/tasks/{unknown}", f"/v1/tasks/{unknown}/events"):
        response = await http.get(path)
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["detail"] == f"no task with id {unknown}"

    for path in ("/v1/tasks/not-a-uuid", "/v1/tasks/not-a-uuid/events"):
        response = await http.get(path)
        assert response.status_code == 400
        assert "'not-a-uuid' is not a UUID" in response.json()["detail"]


async def test_list_is_newest_first_filters_by_status_and_caps_the_limit(
    http: httpx.AsyncClient, scheduler: SchedulerStandIn
) -> None:
    commands = [
        await _submit_and_project(http, scheduler, {"goal": f"task {index}"}) for index in range(3)
    ]
    await scheduler.complete(commands[1], {"done": True})
    newest_first = [str(command.task_id) for command in reversed(commands)]

    listed = await http.get("/v1/tasks")
    completed = await http.get("/v1/tasks", params={"status": "completed"})
    running = await http.get("/v1/tasks", params={"status": "running", "limit": 1})
    huge = await http.get("/v1/tasks", params={"limit": 1_000_000})

    assert [task["task_id"] for task in listed.json()] == newest_first
    assert [task["task_id"] for task in completed.json()] == [str(commands[1].task_id)]
    assert [task["task_id"] for task in running.json()] == [str(commands[2].task_id)]
    assert huge.status_code == 200
    assert len(huge.json()) == 3


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"status": "done"}, "status 'done' is not one of: pending, running, completed"),
        ({"limit": "0"}, "limit"),
        ({"limit": "ten"}, "limit"),
    ],
)
async def test_bad_list_queries_are_400_saying_why(
    http: httpx.AsyncClient, query: dict[str, str], expected: str
) -> None:
    response = await http.get("/v1/tasks", params=query)

    assert response.status_code == 400
    assert expected in response.json()["detail"]


async def test_events_are_the_stored_envelopes_with_their_stream_sequences(
    http: httpx.AsyncClient, scheduler: SchedulerStandIn
) -> None:
    async def play_scheduler() -> tuple[SubmitTask, list[Event]]:
        command, _ = await scheduler.next_command()
        return command, await scheduler.submit_and_start(command)

    projecting = asyncio.create_task(play_scheduler())
    await _submit(http, PLAN_INPUT)
    command, (submitted, started) = await projecting
    completed = await scheduler.complete(command, {"result": 5})

    response = await http.get(f"/v1/tasks/{command.task_id}/events")

    assert response.status_code == 200
    events = response.json()
    assert [event["event_type"] for event in events] == [
        "TaskSubmitted",
        "TaskStarted",
        "TaskCompleted",
    ]
    assert [event["event_id"] for event in events] == [
        str(event.event_id) for event in (submitted, started, completed)
    ]
    sequences = [event["sequence"] for event in events]
    assert sequences == sorted(sequences)
    assert len(set(sequences)) == 3
    first = events[0]
    assert first == {"sequence": sequences[0], **submitted.model_dump(mode="json")} | {
        "occurred_at": first["occurred_at"]
    }
    assert _parse_time(first["occurred_at"]) == submitted.occurred_at
    assert first["data"] == {"task_type": "agent_run", "input_data": PLAN_INPUT}
    assert first["causation_id"] == str(command.command_id)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("{not json", "JSON is malformed"),
        ("", "the request body is empty"),
        ('["agent_run"]', "valid dictionary"),
        ('{"input_data": {}}', "task_type: Field required"),
        ('{"task_type": "bad type!"}', "task_type 'bad type!' must be letters, digits"),
        ('{"task_type": "agent_run", "input_data": [1, 2]}', "input_data: Input should be"),
        ('{"task_type": "agent_run", "input_data": {"plan": "add"}}', "plan: Input should be"),
        (
            '{"task_type": "agent_run", "input_data": {"plan": [{"args": {}}]}}',
            "plan[0].tool: Field required",
        ),
        (
            '{"task_type": "agent_run", "input_data": {"plan": [{"tool": "add", "args": {}}]}}',
            "plan[0].tool: tool 'add' must be '<namespace>.<name>'",
        ),
        (
            '{"task_type": "agent_run", "input_data": {"plan": [{"tool": "math.add", "args": 1}]}}',
            "plan[0].args: Input should be a valid dictionary",
        ),
        ('{"task_type": "agent_run", "priority": 1}', "priority: Extra inputs are not permitted"),
    ],
)
async def test_malformed_submissions_are_400_with_a_message_and_publish_nothing(
    http: httpx.AsyncClient,
    jetstream: JetStreamContext,
    subjects: Subjects,
    body: str,
    expected: str,
) -> None:
    response = await http.post(
        "/v1/tasks", content=body, headers={"content-type": "application/json"}
    )

    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == 400
    assert problem["title"] == "Bad Request"
    assert expected in problem["detail"]
    info = await jetstream.stream_info(subjects.commands_stream)
    assert info.state.messages == 0


async def test_healthz(http: httpx.AsyncClient) -> None:
    response = await http.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_openapi_documents_the_routes_their_models_and_the_read_after_write_contract(
    http: httpx.AsyncClient,
) -> None:
    spec = (await http.get("/schema/openapi.json")).json()

    submit = spec["paths"]["/v1/tasks"]["post"]
    assert "Read-after-write" in submit["description"]
    accepted = submit["responses"]["202"]
    assert accepted["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TaskView"
    }
    assert "Location" in accepted["headers"]
    assert {"400", "503"} <= submit["responses"].keys()
    assert set(spec["paths"]) >= {
        "/v1/tasks",
        "/v1/tasks/{task_id}",
        "/v1/tasks/{task_id}/events",
        "/healthz",
    }
    assert {"TaskView", "TaskRequest", "TaskEventView", "Problem"} <= spec["components"][
        "schemas"
    ].keys()
    get_task = spec["paths"]["/v1/tasks/{task_id}"]["get"]
    assert get_task["responses"]["404"]["content"]["application/problem+json"]
