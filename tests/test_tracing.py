"""One task, one trace: the spans of gateway, scheduler, runner and MCP proxy, each its own
process, reach an OTLP/HTTP receiver with a single trace id, and the services' JSON log lines
name the task and that trace.

The services are configured only by the standard ``OTEL_*`` variables (the endpoint of the
receiver this test runs), as a collector would be configured in a deployment.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.struct_pb2 import Struct

from opspawn.v1 import tasks_pb2, tasks_pb2_grpc
from opspawn_cli.demo import wait_terminal
from opspawn_cli.system import LocalSystem
from opspawn_embedded import EmbeddedNats
from opspawn_observability.testing import OtlpReceiver, ReceivedSpan
from tests.conftest import SystemSettings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

PLAN: list[dict[str, Any]] = [
    {"tool": "math.add", "args": {"a": 2, "b": 3}},
    {"tool": "toolbox.word_count", "args": {"text": "one trace per task"}},
]
SERVICES = {"gateway", "scheduler", "agent-runner", "mcp-proxy"}
LOG_FILES = {
    "gateway": "gateway.log",
    "scheduler": "scheduler.log",
    "agent-runner": "agent-runner-1.log",
    "mcp-proxy": "mcp-proxy.log",
}


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture
async def traced_system(
    nats_server: EmbeddedNats,
    system_settings: SystemSettings,
    receiver: OtlpReceiver,
) -> AsyncIterator[LocalSystem]:
    settings = system_settings(nats_server.url, runners=1)
    environment = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # milliseconds: export promptly, the test waits for it
        "OPSPAWN_LOG_FORMAT": "json",
        # A task's own lifecycle line is the runner's; the per-message lines of the gateway and
        # the scheduler are DEBUG. Every line about the task must name its trace, so see them all.
        "OPSPAWN_LOG_LEVEL": "DEBUG",
    }
    async with LocalSystem(settings, service_env=environment) as running:
        yield running


def _named(spans: list[ReceivedSpan], service: str, name: str) -> list[ReceivedSpan]:
    return [span for span in spans if span.service == service and span.name == name]


FULL_PLAN_SPANS = {
    ("scheduler", "SubmitTask"),
    ("agent-runner", "task attempt"),
    ("agent-runner", "execute_tool math.add"),
    ("agent-runner", "execute_tool toolbox.word_count"),
    ("agent-runner", "agent final answer"),
    ("mcp-proxy", "tools/call toolbox"),
}


class TaskTrace:
    """The spans of one task's trace, found from the gateway span that submitted it."""

    def __init__(
        self,
        task_id: str,
        *,
        request: str = "POST /v1/tasks",
        expected: set[tuple[str, str]] = FULL_PLAN_SPANS,
    ) -> None:
        self.task_id = task_id
        self.request = request
        self.expected = expected
        self.trace_id: str | None = None
        self.spans: list[ReceivedSpan] = []

    def complete(self, received: list[ReceivedSpan]) -> bool:
        """Whether every span the task should have produced has arrived."""
        submissions = [
            span
            for span in _named(received, "gateway", self.request)
            if span.attributes.get("opspawn.task_id") == self.task_id
        ]
        if not submissions:
            return False
        self.trace_id = submissions[0].trace_id
        self.spans = [span for span in received if span.trace_id == self.trace_id]
        return self.expected <= {(span.service, span.name) for span in self.spans}

    def one(self, service: str, name: str) -> ReceivedSpan:
        [span] = _named(self.spans, service, name)
        return span


async def test_a_tasks_spans_from_all_four_services_share_one_trace(
    traced_system: LocalSystem, receiver: OtlpReceiver
) -> None:
    async with httpx.AsyncClient(base_url=traced_system.rest_url, timeout=10) as rest:
        response = await rest.post(
            "/v1/tasks", json={"task_type": "agent_run", "input_data": {"plan": PLAN}}
        )
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        task = await wait_terminal(rest, task_id)
    assert task["status"] == "completed", task

    trace = TaskTrace(task_id)
    await receiver.wait_for_async(trace.complete, timeout=60)

    assert {span.service for span in trace.spans} == SERVICES
    tagged = [span for span in receiver.spans if span.attributes.get("opspawn.task_id") == task_id]
    assert {span.service for span in tagged} == SERVICES
    assert {span.trace_id for span in tagged} == {trace.trace_id}, "the task spans two traces"

    request = trace.one("gateway", "POST /v1/tasks")
    assert (request.kind, request.parent_span_id) == ("SERVER", None)
    assert request.attributes["http.response.status_code"] == 202
    decision = trace.one("scheduler", "SubmitTask")
    assert (decision.kind, decision.parent_span_id) == ("CONSUMER", request.span_id)
    attempt = trace.one("agent-runner", "task attempt")
    assert attempt.parent_span_id == decision.span_id, "the work item did not carry the trace"
    assert attempt.attributes["opspawn.attempt"] == 1

    steps = sorted(
        _named(trace.spans, "agent-runner", "agent step"),
        key=lambda span: span.attributes["opspawn.step_index"],
    )
    assert [step.attributes["opspawn.step_index"] for step in steps] == [0, 1]
    assert all(step.parent_span_id == attempt.span_id for step in steps)
    local = trace.one("agent-runner", "execute_tool math.add")
    remote = trace.one("agent-runner", "execute_tool toolbox.word_count")
    assert (local.parent_span_id, remote.parent_span_id) == (steps[0].span_id, steps[1].span_id)
    assert remote.attributes["gen_ai.tool.name"] == "toolbox.word_count"

    proxied = trace.one("mcp-proxy", "tools/call toolbox")
    assert (proxied.kind, proxied.parent_span_id) == ("SERVER", remote.span_id)
    assert proxied.attributes["opspawn.mcp.server"] == "toolbox"
    assert proxied.attributes["gen_ai.tool.name"] == "word_count"
    assert proxied.status != "ERROR"
    assert {span.resource["service.namespace"] for span in trace.spans} == {"opspawn"}
    assert attempt.resource["service.instance.id"] == "runner-1"

    # The logs: every line is a JSON object naming its service; lines about the task name the
    # task and its trace.
    logs = traced_system.settings.data_dir / "logs"
    for service, file_name in LOG_FILES.items():
        lines = [line for line in (logs / file_name).read_text().splitlines() if line.strip()]
        records = [json.loads(line) for line in lines]
        assert records, f"{file_name} is empty"
        assert all(record["service"] == service for record in records), file_name
        about_task = [record for record in records if record.get("task_id") == task_id]
        assert about_task, f"no line of {file_name} names task {task_id}"
        assert {record.get("trace_id") for record in about_task} == {trace.trace_id}, file_name


async def test_a_task_submitted_over_grpc_is_traced_from_the_call(
    traced_system: LocalSystem, receiver: OtlpReceiver
) -> None:
    input_data = Struct()
    input_data.update({"plan": [{"tool": "math.multiply", "args": {"a": 6, "b": 7}}]})
    async with grpc.aio.insecure_channel(traced_system.grpc_target) as channel:
        tasks = tasks_pb2_grpc.TaskServiceStub(channel)
        created = await tasks.CreateTask(
            tasks_pb2.CreateTaskRequest(task_type="agent_run", input_data=input_data)
        )
    trace = TaskTrace(
        created.task.task_id,
        request="opspawn.v1.TaskService/CreateTask",
        expected={
            ("scheduler", "SubmitTask"),
            ("agent-runner", "task attempt"),
            ("agent-runner", "execute_tool math.multiply"),
            ("agent-runner", "agent final answer"),
        },
    )
    await receiver.wait_for_async(trace.complete, timeout=60)

    call = trace.one("gateway", "opspawn.v1.TaskService/CreateTask")
    assert (call.kind, call.parent_span_id) == ("SERVER", None)
    assert call.attributes["rpc.grpc.status_code"] == "OK"
    assert trace.one("scheduler", "SubmitTask").parent_span_id == call.span_id
