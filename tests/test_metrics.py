"""``/metrics`` on every service, each its own process, with values that move when tasks run.

The gateway serves ``/metrics`` on its REST port; the scheduler, the runner and the MCP proxy on
their operations endpoint (``OPSPAWN_OPS_PORT=0``: each binds a free port and logs its address,
which this test reads from the service's JSON log). Each is scraped before and after a few
tasks (one that completes through a local and an MCP tool, one whose MCP tool fails, one whose
local tool fails) and an invalid command, and the differences are checked.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from nats.js import JetStreamContext
from prometheus_client.parser import text_string_to_metric_families

from opspawn.v1 import tasks_pb2, tasks_pb2_grpc
from opspawn_cli.demo import wait_terminal
from opspawn_cli.system import LocalSystem
from opspawn_contracts.subjects import Subjects
from opspawn_embedded import EmbeddedNats
from tests.conftest import SystemSettings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

PLANS: list[list[dict[str, Any]]] = [
    [
        {"tool": "math.add", "args": {"a": 2, "b": 3}},
        {"tool": "toolbox.word_count", "args": {"text": "metrics move"}},
    ],
    [{"tool": "toolbox.fail", "args": {"message": "refused on purpose"}}],
    [{"tool": "math.divide", "args": {"a": 1, "b": 0}}],
]
OPS_ADDRESS = re.compile(r"^ops endpoint on (http://[^ ]+)")


@pytest.fixture
async def metered_system(
    nats_server: EmbeddedNats,
    system_settings: SystemSettings,
) -> AsyncIterator[LocalSystem]:
    settings = system_settings(nats_server.url, runners=1)
    environment = {"OPSPAWN_OPS_PORT": "0", "OPSPAWN_LOG_FORMAT": "json"}
    async with LocalSystem(settings, service_env=environment) as running:
        yield running


def ops_url(system: LocalSystem, process: str) -> str:
    """The ops endpoint the process logged (it binds a free port)."""
    log = system.settings.data_dir / "logs" / f"{process}.log"
    for line in log.read_text().splitlines():
        found = OPS_ADDRESS.match(json.loads(line)["message"])
        if found:
            return found.group(1)
    raise AssertionError(f"{process} logged no ops endpoint:\n{log.read_text()}")


async def scrape(http: httpx.AsyncClient, url: str) -> Samples:
    response = await http.get(f"{url}/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_metrics_of_every_service_move_when_tasks_run(
    metered_system: LocalSystem, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    urls = {
        "gateway": metered_system.rest_url,
        **{
            process: ops_url(metered_system, process)
            for process in ("scheduler", "agent-runner-1", "mcp-proxy")
        },
    }
    async with httpx.AsyncClient(timeout=10) as http:
        before = {process: await scrape(http, url) for process, url in urls.items()}

        task_ids = []
        for plan in PLANS:
            response = await http.post(
                f"{urls['gateway']}/v1/tasks",
                json={"task_type": "agent_run", "input_data": {"plan": plan}},
            )
            assert response.status_code == 202, response.text
            task_ids.append(response.json()["task_id"])
        await jetstream.publish(
            subjects.command("submit"), b"not a command", stream=subjects.commands_stream
        )
        async with httpx.AsyncClient(base_url=urls["gateway"], timeout=10) as rest:
            finished = [await wait_terminal(rest, task_id) for task_id in task_ids]
        assert [task["status"] for task in finished] == ["completed", "failed", "failed"]
        async with grpc.aio.insecure_channel(metered_system.grpc_target) as channel:
            grpc_tasks = tasks_pb2_grpc.TaskServiceStub(channel)
            await grpc_tasks.GetTask(tasks_pb2.GetTaskRequest(task_id=task_ids[0]))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await grpc_tasks.GetTask(tasks_pb2.GetTaskRequest(task_id="not-a-uuid"))
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT

        # The projection counts right after its commit, the dead letter follows its own path:
        # poll the scheduler until both show, then take every service's numbers.
        deadline = time.monotonic() + 20
        while True:
            scheduler = await scrape(http, urls["scheduler"])
            if (
                moved(before["scheduler"], scheduler, "opspawn_tasks_total", status="failed") >= 2
                and value(scheduler, "opspawn_dead_letters_total", source="commands") >= 1
            ) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        after = {process: await scrape(http, url) for process, url in urls.items()}

    gateway_before, gateway = before["gateway"], after["gateway"]
    submit = {"method": "POST", "route": "/v1/tasks"}
    assert (
        moved(gateway_before, gateway, "opspawn_http_requests_total", **submit, status="202") == 3
    )
    assert (
        moved(gateway_before, gateway, "opspawn_http_request_duration_seconds_count", **submit) == 3
    )
    polled = {"method": "GET", "route": "/v1/tasks/{task_id}", "status": "200"}
    assert moved(gateway_before, gateway, "opspawn_http_requests_total", **polled) >= 3
    get_task = {"method": "opspawn.v1.TaskService/GetTask"}
    for code in ("OK", "INVALID_ARGUMENT"):
        assert (
            moved(gateway_before, gateway, "opspawn_grpc_requests_total", **get_task, code=code)
            == 1
        )
    grpc_latency = "opspawn_grpc_request_duration_seconds_count"
    assert moved(gateway_before, gateway, grpc_latency, **get_task) == 2

    scheduler_before, scheduler = before["scheduler"], after["scheduler"]
    for status, count in (("pending", 3), ("running", 3), ("completed", 1), ("failed", 2)):
        assert moved(scheduler_before, scheduler, "opspawn_tasks_total", status=status) == count
    assert moved(scheduler_before, scheduler, "opspawn_dead_letters_total", source="commands") == 1
    events = {"stream": subjects.events_stream}
    assert ("opspawn_projection_lag_events", frozenset(events.items())) in scheduler
    assert value(scheduler, "opspawn_projection_lag_events", **events) == 0
    work = {"stream": subjects.work_stream, "consumer": subjects.runner_work_consumer}
    assert ("opspawn_consumer_pending_messages", frozenset(work.items())) in scheduler
    first = {"stream": subjects.events_stream, "consumer": subjects.runner_submitted_consumer}
    assert ("opspawn_consumer_pending_messages", frozenset(first.items())) in scheduler

    runner_before, runner = before["agent-runner-1"], after["agent-runner-1"]
    calls = "opspawn_tool_call_duration_seconds_count"
    for tool, outcome in (
        ("math.add", "ok"),
        ("toolbox.word_count", "ok"),
        ("toolbox.fail", "error"),
        ("math.divide", "error"),
    ):
        assert moved(runner_before, runner, calls, tool=tool, outcome=outcome) == 1, tool
    steps = "opspawn_agent_step_duration_seconds_count"
    assert moved(runner_before, runner, steps, outcome="ok") == 2
    assert moved(runner_before, runner, steps, outcome="error") == 2
    assert moved(runner_before, runner, "opspawn_work_items_total", disposition="ack") == 3

    proxy_before, proxy = before["mcp-proxy"], after["mcp-proxy"]
    errors = {"server": "toolbox", "kind": "tool_error"}
    assert moved(proxy_before, proxy, "opspawn_mcp_call_errors_total", **errors) == 1
    answered = {"server": "toolbox", "outcome": "ok"}
    assert moved(proxy_before, proxy, "opspawn_mcp_call_duration_seconds_count", **answered) == 1
