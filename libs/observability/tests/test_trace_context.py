"""Tracing: configured by ``OTEL_*`` only and off by default; the trace context travels in the
headers of real NATS messages (an appended event, a published work item) and the handler of a
message continues the sender's trace."""

from __future__ import annotations

from collections.abc import Iterator
from uuid import uuid4

import pytest
from nats.js import JetStreamContext
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from opspawn_contracts.events import TaskSubmitted, TaskSubmittedData
from opspawn_contracts.subjects import Subjects
from opspawn_messaging.event_log import EventLog
from opspawn_observability.task_context import current_task_id
from opspawn_observability.tracing import (
    TelemetryConfigError,
    handling,
    inject_context,
    requested_exporters,
    service_resource,
    span,
    tracer_provider_from_environment,
    tracing_enabled,
    tracing_to,
)

ENDPOINT = "http://127.0.0.1:4318"


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    """Tracing on, for this test only, into memory (the global provider stays untouched)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=service_resource("test-service"))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with tracing_to(provider):
        yield exporter
    provider.shutdown()


def _by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {finished.name: finished for finished in exporter.get_finished_spans()}


def _submitted() -> TaskSubmitted:
    return TaskSubmitted(
        task_id=uuid4(),
        correlation_id=uuid4(),
        data=TaskSubmittedData(task_type="agent_run", input_data={}),
    )


@pytest.mark.parametrize(
    ("environment", "exporters"),
    [
        ({}, []),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{ENDPOINT}/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console, otlp"}, ["console", "otlp"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, []),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, []),
    ],
)
def test_tracing_is_off_unless_the_environment_asks_for_an_exporter(
    environment: dict[str, str], exporters: list[str]
) -> None:
    assert requested_exporters(environment) == exporters
    provider = tracer_provider_from_environment("scheduler", environ=environment)
    assert (provider is not None) == bool(exporters)
    if provider is not None:
        provider.shutdown()


@pytest.mark.parametrize(
    ("environment", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER: unknown exporter jaeger"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL='grpc'",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL='http/json'",
        ),
    ],
)
def test_a_setting_that_cannot_be_honoured_stops_the_service_naming_it(
    environment: dict[str, str], named: str
) -> None:
    with pytest.raises(TelemetryConfigError, match=named.replace("(", r"\(")):
        tracer_provider_from_environment("scheduler", environ=environment)


def test_the_resource_names_the_service_unless_otel_variables_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    ours = service_resource("agent-runner", "runner-7").attributes
    assert ours["service.name"] == "agent-runner"
    assert ours["service.instance.id"] == "runner-7"
    assert ours["service.namespace"] == "opspawn"

    monkeypatch.setenv("OTEL_SERVICE_NAME", "runner-blue")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod")
    chosen = service_resource("agent-runner").attributes
    assert chosen["service.name"] == "runner-blue"
    assert chosen["deployment.environment"] == "prod"


async def test_an_appended_event_carries_the_trace_to_its_handler(
    exported: InMemorySpanExporter, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    event = _submitted()
    with handling("POST /v1/tasks", None, kind=SpanKind.SERVER) as request:
        request.task(event.task_id)
        sequence = await EventLog(jetstream, subjects).append(event, expected_version=0)
    stored = await jetstream.get_msg(subjects.events_stream, seq=sequence)
    headers = stored.headers or {}
    assert headers["Nats-Msg-Id"] == str(event.event_id)

    with handling("decide", headers) as reaction:
        reaction.task(event.task_id)
        assert current_task_id() == str(event.task_id)
        with span("inner step"):
            pass
    assert current_task_id() is None

    spans = _by_name(exported)
    sender, handler, inner = spans["POST /v1/tasks"], spans["decide"], spans["inner step"]
    assert sender.context is not None
    assert handler.context is not None
    assert inner.context is not None
    trace_id = sender.context.trace_id
    assert headers["traceparent"].split("-")[1:3] == [
        format(trace_id, "032x"),
        format(sender.context.span_id, "016x"),
    ]
    assert handler.context.trace_id == inner.context.trace_id == trace_id
    assert handler.parent is not None
    assert handler.parent.span_id == sender.context.span_id
    assert inner.parent is not None
    assert inner.parent.span_id == handler.context.span_id
    assert handler.kind is SpanKind.CONSUMER
    assert dict(handler.attributes or {})["opspawn.task_id"] == str(event.task_id)


async def test_a_published_work_item_carries_the_trace(
    exported: InMemorySpanExporter, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    with handling("SubmitTask", None) as scheduling:
        headers = {"Nats-Msg-Id": "task-1:1"}
        inject_context(headers)
        ack = await jetstream.publish(
            subjects.work("agent_run"), b"{}", stream=subjects.work_stream, headers=headers
        )
    delivered = await jetstream.get_msg(subjects.work_stream, seq=ack.seq)
    with handling("task attempt", delivered.headers):
        pass
    spans = _by_name(exported)
    assert scheduling.span is not None
    attempt = spans["task attempt"]
    assert attempt.parent is not None
    assert attempt.parent.span_id == scheduling.span.get_span_context().span_id
    assert attempt.parent.trace_id == scheduling.span.get_span_context().trace_id


def test_a_message_without_trace_context_starts_a_new_trace(
    exported: InMemorySpanExporter,
) -> None:
    with handling("first", None), handling("second", {"Nats-Msg-Id": "x"}):
        pass
    first, second = _by_name(exported)["first"], _by_name(exported)["second"]
    assert first.parent is None
    assert second.parent is None
    assert first.context is not None
    assert second.context is not None
    assert first.context.trace_id != second.context.trace_id


def test_a_failed_handler_marks_its_span_failed(exported: InMemorySpanExporter) -> None:
    with pytest.raises(ZeroDivisionError), handling("raises", None):
        _ = 1 / 0
    with handling("answers with an error", None) as scope:
        scope.fail("unknown_tool: no tool named x")
    spans = _by_name(exported)
    assert spans["raises"].status.status_code is StatusCode.ERROR
    assert spans["answers with an error"].status.status_code is StatusCode.ERROR
    assert spans["answers with an error"].status.description == "unknown_tool: no tool named x"


async def test_tracing_off_adds_no_headers_and_still_names_the_task(
    jetstream: JetStreamContext, subjects: Subjects
) -> None:
    assert not tracing_enabled()
    event = _submitted()
    with handling("SubmitTask", None) as scope:
        assert scope.span is None
        scope.task(event.task_id)
        assert current_task_id() == str(event.task_id)
        headers = {"Nats-Msg-Id": "x"}
        inject_context(headers)
        sequence = await EventLog(jetstream, subjects).append(event)
    assert headers == {"Nats-Msg-Id": "x"}
    assert current_task_id() is None
    stored = await jetstream.get_msg(subjects.events_stream, seq=sequence)
    assert "traceparent" not in (stored.headers or {})


def test_scopes_in_one_asyncio_task_do_not_leak_a_task_into_the_next() -> None:
    with handling("first", None) as first:
        first.task("task-a")
        with handling("nested", None) as nested:
            assert current_task_id() is None
            nested.task("task-b")
            assert current_task_id() == "task-b"
        assert current_task_id() == "task-a"
    with handling("second", None):
        assert current_task_id() is None
