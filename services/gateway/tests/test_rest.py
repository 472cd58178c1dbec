"""The REST API over real HTTP, against the gateway running on real NATS and Postgres."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from gateway.app import Gateway
from gateway.settings import GatewaySettings
from opspawn_contracts.commands import SubmitTask
from opspawn_contracts.events import Event, TaskStarted, TaskStartedData
from opspawn_contracts.subjects import Subjects
from services.gateway.tests.conftest import TENANT, SchedulerStandIn

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


async def test_submit_answers_202_with_the_pending_task_once_the_scheduler_stored_it(
    http: httpx.AsyncClient, scheduler: SchedulerStandIn, subjects: Subjects
) -> None:
    stored = asyncio.Event()

    async def play_scheduler() -> tuple[SubmitTask, Msg]:
        command, message = await scheduler.next_command()
        await asyncio.sleep(0.2)  # the answer must wait for the event, however long it takes
        await scheduler.append(scheduler.submitted(command, later=0))
        stored.set()
        return command, message

    storing = asyncio.create_task(play_scheduler())
    response = await http.post(
        "/v1/tasks", json={"task_type": "agent_run", "input_data": PLAN_INPUT}
    )
    assert stored.is_set(), "answered before TaskSubmitted was stored"
    command, message = await storing

    assert response.status_code == 202, response.text
    task = response.json()
    assert response.headers["location"] == f"/v1/tasks/{task['task_id']}"
    assert message.subject == subjects.submit_requests
    assert str(command.task_id) == task["task_id"]
    assert (command.task_type, command.input_data) == ("agent_run", PLAN_INPUT)
    assert command.tenant == TENANT
    assert command.idempotency_key is None
    assert command.request_hash is not None
    assert task["status"] == "pending"
    assert task["input_data"] == PLAN_INPUT
    assert task["output_data"] is None
    assert task["error_message"] is None
    assert _parse_time(task["created_at"]) == command.issued_at
    assert abs(datetime.now(UTC) - command.issued_at) < timedelta(minutes=1)
    assert UUID(task["task_id"]).version == 4
    assert task["idempotency_key"] is None
    assert task["options"] == {"timeout_seconds": None, "max_attempts": None, "allowed_tools": None}
    assert "tenant" not in task
    assert "request_hash" not in task
    assert "idempotent-replayed" not in response.headers


async def test_a_task_not_projected_yet_is_read_from_its_events(
    http: httpx.AsyncClient, scheduler: SchedulerStandIn
) -> None:
    """Read-your-writes without waiting for the projection: nothing projects here, yet a GET
    right after the 202 finds the task and its events, in the events stream; as the projection
    will first show it (submitted, not yet started), so that reads never go backwards once the
    read model answers."""

    async def store_only() -> None:
        command, _ = await scheduler.next_command()
        submitted = scheduler.submitted(command, later=0)
        await scheduler.append(submitted)
        started = TaskStarted(
            task_id=command.task_id,
            correlation_id=command.correlation_id,
            causation_id=submitted.event_id,
            data=TaskStartedData(attempt=1, runner_id="runner-test"),
        )
        await scheduler.append(started)

    storing = asyncio.create_task(store_only())
    task = await _submit(http, PLAN_INPUT)
    await storing

    fetched = await http.get(f"/v1/tasks/{task['task_id']}")
    events = await http.get(f"/v1/tasks/{task['task_id']}/events")
    listed = await http.get("/v1/tasks")

    assert fetched.status_code == 200, fetched.text
    assert fetched.json() == task
    assert events.status_code == 200, events.text
    assert [event["event_type"] for event in events.json()] == ["TaskSubmitted"]
    assert listed.json()["items"] == [], "lists are the read model's alone"


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


async def test_list_is_newest_first_filters_by_status_and_refuses_a_limit_above_the_cap(
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
    huge = await http.get("/v1/tasks", params={"limit": 501})

    assert [task["task_id"] for task in listed.json()["items"]] == newest_first
    assert listed.json()["next_cursor"] is None
    assert [task["task_id"] for task in completed.json()["items"]] == [str(commands[1].task_id)]
    assert [task["task_id"] for task in running.json()["items"]] == [str(commands[2].task_id)]
    rest = await http.get(
        "/v1/tasks",
        params={"status": "running", "limit": 1, "cursor": running.json()["next_cursor"]},
    )
    assert [task["task_id"] for task in rest.json()["items"]] == [str(commands[0].task_id)]
    assert rest.json()["next_cursor"] is None
    assert huge.status_code == 422
    assert huge.headers["content-type"].startswith("application/problem+json")
    assert huge.json()["detail"] == "limit must be at most 500, got 501"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"status": "done"}, "status 'done' is not one of: pending, running, completed"),
        ({"limit": "-1"}, "limit must be positive, got -1"),
        ({"limit": "ten"}, "limit"),
        ({"task_type": "a.b"}, "task_type"),
        ({"created_after": "yesterday"}, "created_after"),
        ({"created_after": "2026-01-01T00:00:00"}, "created_after"),
        ({"created_before": "0.5"}, "created_before"),
        ({"cursor": "not/base64"}, "cursor"),
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
    assert first["data"]["input_data"] == PLAN_INPUT
    assert first["data"]["tenant"] == TENANT
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
        "$ref": "#/components/schemas/Task"
    }
    assert {"Location", "Idempotent-Replayed"} <= accepted["headers"].keys()
    assert {"202", "400", "401", "403", "409", "413", "422", "503"} == submit["responses"].keys()
    assert set(spec["paths"]) == {
        "/v1/tasks",
        "/v1/tasks/{task_id}",
        "/v1/tasks/{task_id}/cancel",
        "/v1/tasks/{task_id}/events",
        "/v1/tasks/{task_id}/stream",
        "/healthz",
        "/readyz",
    }
    assert {"Task", "TaskPage", "TaskRequest", "TaskEventView", "Problem"} <= spec["components"][
        "schemas"
    ].keys()
    assert spec["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from `opspawn apikey create --tenant <tenant>`.",
    }
    for path in ("/v1/tasks/{task_id}", "/v1/tasks/{task_id}/events"):
        responses = spec["paths"][path]["get"]["responses"]
        assert {"200", "400", "401", "404", "503"} <= responses.keys()
        assert responses["404"]["content"]["application/problem+json"]
    cancel = spec["paths"]["/v1/tasks/{task_id}/cancel"]["post"]["responses"]
    assert {"202", "403", "404", "409"} <= cancel.keys()
    stream = spec["paths"]["/v1/tasks/{task_id}/stream"]["get"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    assert "security" not in spec["paths"]["/healthz"]["get"]
    assert "security" not in spec
    assert spec["paths"]["/v1/tasks"]["get"]["security"] == [{"ApiKey": []}]


async def test_a_cursor_that_is_not_ours_is_422(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/tasks", params={"cursor": "bm90IGEgY3Vyc29y"})

    assert response.status_code == 422
    assert "cursor is not valid" in response.json()["detail"]


async def test_options_lists_every_method_of_a_path(http: httpx.AsyncClient) -> None:
    tasks = await http.options("/v1/tasks")
    cancel = await http.options(f"/v1/tasks/{uuid4()}/cancel")

    assert tasks.status_code == 204
    assert tasks.headers["allow"] == "GET, OPTIONS, POST"
    assert cancel.headers["allow"] == "OPTIONS, POST"


async def test_events_page_after_a_sequence(
    http: httpx.AsyncClient, scheduler: SchedulerStandIn
) -> None:
    command = await _submit_and_project(http, scheduler, PLAN_INPUT)
    await scheduler.complete(command, {"result": 5})
    everything = (await http.get(f"/v1/tasks/{command.task_id}/events")).json()

    first_two = await http.get(f"/v1/tasks/{command.task_id}/events", params={"limit": 2})
    rest = await http.get(
        f"/v1/tasks/{command.task_id}/events", params={"after": first_two.json()[-1]["sequence"]}
    )
    too_many = await http.get(f"/v1/tasks/{command.task_id}/events", params={"limit": 1001})

    assert first_two.json() + rest.json() == everything
    assert [event["event_type"] for event in rest.json()] == ["TaskCompleted"]
    assert too_many.status_code == 422


async def test_limits_are_413_and_422_saying_which(
    gateway_settings: GatewaySettings,
    accepting_scheduler: SchedulerStandIn,
    api_key: str,
    jetstream: JetStreamContext,
    subjects: Subjects,
) -> None:
    settings = gateway_settings.model_copy(
        update={
            "max_body_bytes": 4096,
            "max_input_bytes": 1024,
        }
    )
    async with (
        Gateway(settings) as gateway,
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{gateway.http_port}",
            headers={"authorization": f"Bearer {api_key}"},
        ) as http,
    ):
        huge_body = await http.post(
            "/v1/tasks", json={"task_type": "agent_run", "input_data": {"blob": "x" * 5000}}
        )
        big_input = await http.post(
            "/v1/tasks", json={"task_type": "agent_run", "input_data": {"blob": "x" * 2000}}
        )
        fits = await http.post(
            "/v1/tasks", json={"task_type": "agent_run", "input_data": {"blob": "x" * 900}}
        )

    assert huge_body.status_code == 413
    assert huge_body.headers["content-type"].startswith("application/problem+json")
    assert big_input.status_code == 422
    assert big_input.json()["detail"] == (
        "input_data is 2011 bytes as JSON; at most 1024 are accepted"
    )
    assert fits.status_code == 202
    assert len(accepting_scheduler.accepted) == 1, "only the one that fits reached the scheduler"


async def test_readyz_checks_nats_and_the_database(http: httpx.AsyncClient) -> None:
    response = await http.get("/readyz", headers={"authorization": ""})

    assert response.status_code == 200
    assert response.json() == {"status": "ready", "nats": "ok", "database": "ok"}


async def test_a_plan_outside_its_allowed_tools_is_422_and_publishes_nothing(
    http: httpx.AsyncClient, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    response = await http.post(
        "/v1/tasks",
        json={
            "task_type": "agent_run",
            "input_data": {"plan": [{"tool": "math.add"}, {"tool": "util.sleep"}]},
            "options": {"allowed_tools": ["math.*"]},
        },
    )

    assert response.status_code == 422
    assert response.json()["detail"] == (
        "plan[1].tool 'util.sleep' is not in options.allowed_tools; allow it, or remove the step"
    )
    assert (await jetstream.stream_info(subjects.commands_stream)).state.messages == 0
