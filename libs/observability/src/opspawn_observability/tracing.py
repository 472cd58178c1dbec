"""Tracing: OpenTelemetry spans, one trace per task, its context carried in NATS message headers.

A task's trace starts at the gateway (a span per REST request or gRPC call). Each hop carries the
W3C trace context (``traceparent``, ``tracestate``) in the headers of the message it sends — the
command, the events appended while handling it, the work item, the MCP proxy request — and the
receiving service continues the trace in a span of its own (:func:`handling`). Headers are
written and read by OpenTelemetry's configured propagators (``OTEL_PROPAGATORS``, by default
W3C trace context and baggage), never by hand.

Configuration is the standard ``OTEL_*`` environment only, and tracing is **off** unless asked
for: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, ``none``) or an OTLP endpoint
(``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) turns it on;
``OTEL_SDK_DISABLED=true`` keeps it off. The OTLP exporter speaks HTTP/protobuf and reads its own
variables (endpoint, headers, timeout, compression, certificates); ``OTEL_BSP_*`` tune batching,
``OTEL_TRACES_SAMPLER`` sampling, ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` the
resource (``service.name`` defaults to the service's own name).

Off costs next to nothing on the hot paths: :func:`handling` then only binds the task id for the
logs, :func:`inject_context` returns at once, and no span, context or carrier is created.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar
from types import TracebackType
from typing import Any
from uuid import UUID

from nats.aio.msg import Msg
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from opspawn_messaging.settlement import Failed, Handler, Outcome, Refused
from opspawn_observability.task_context import (
    TASK_ID_ATTRIBUTE,
    name_task,
    task_scope_enter,
    task_scope_exit,
)

__all__ = [
    "SpanKind",
    "Status",
    "StatusCode",
    "TelemetryConfigError",
    "TraceHandling",
    "annotate_span",
    "configure_tracing",
    "handling",
    "handling_scope",
    "inject_context",
    "span",
    "tracer_provider_from_environment",
    "tracing_enabled",
    "tracing_to",
]

INSTRUMENTATION_NAME = "opspawn"
OUTCOME_ATTRIBUTE = "opspawn.outcome"
SUPPORTED_EXPORTERS = ("otlp", "console")
SUPPORTED_OTLP_PROTOCOL = "http/protobuf"


class TelemetryConfigError(SystemExit):
    """An ``OTEL_*`` variable asks for something this service cannot do; the message names it."""


class _State:
    """Whether this process traces, and with which tracer (module state, set at start-up)."""

    enabled = False
    tracer: trace.Tracer = trace.NoOpTracer()


def tracing_enabled() -> bool:
    return _State.enabled


def requested_exporters(environ: Mapping[str, str]) -> list[str]:
    """The span exporters the environment asks for; empty means tracing stays off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if names:
        chosen = [name.strip().lower() for name in names.split(",") if name.strip()]
        if "none" in chosen:
            return []
        unknown = sorted(set(chosen) - set(SUPPORTED_EXPORTERS))
        if unknown:
            raise TelemetryConfigError(
                f"OTEL_TRACES_EXPORTER: unknown exporter {', '.join(unknown)}; "
                f"use {', '.join(SUPPORTED_EXPORTERS)} or none"
            )
        return chosen
    endpoint_set = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    return ["otlp"] if endpoint_set else []


def _check_protocol(environ: Mapping[str, str]) -> None:
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = environ.get(variable, "").strip()
        if protocol:
            if protocol != SUPPORTED_OTLP_PROTOCOL:
                raise TelemetryConfigError(
                    f"{variable}={protocol!r}: Opspawn exports OTLP over HTTP only; set it to "
                    f"{SUPPORTED_OTLP_PROTOCOL} (collectors listen for it on port 4318)"
                )
            return


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def service_resource(service: str, instance: str | None = None) -> Resource:
    """The resource of ``service``'s spans; ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``
    win over the defaults given here (``service.name`` = ``service``, ``service.namespace`` =
    ``opspawn``, ``service.instance.id`` = ``instance`` when given)."""
    defaults: dict[str, AttributeValue] = {SERVICE_NAME: service, "service.namespace": "opspawn"}
    if instance is not None:
        defaults["service.instance.id"] = instance
    from_environment = OTELResourceDetector().detect().attributes
    return Resource.create(
        {key: value for key, value in defaults.items() if key not in from_environment}
    )


def tracer_provider_from_environment(
    service: str, *, instance: str | None = None, environ: Mapping[str, str] | None = None
) -> TracerProvider | None:
    """A provider exporting as the ``OTEL_*`` variables say, or ``None`` when tracing is off.

    Raises :class:`TelemetryConfigError` for a setting that cannot be honoured.
    """
    environ = os.environ if environ is None else environ
    exporters = requested_exporters(environ)
    if not exporters:
        return None
    if "otlp" in exporters:
        _check_protocol(environ)
    provider = TracerProvider(resource=service_resource(service, instance))
    for name in exporters:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    return provider


def configure_tracing(service: str, *, instance: str | None = None) -> bool:
    """Set up this process's tracing from the environment; whether it is on.

    Installs the provider globally (so libraries using the OpenTelemetry API, like agentkit, trace
    into it); it flushes its spans when the process exits.
    """
    provider = tracer_provider_from_environment(service, instance=instance)
    if provider is None:
        return False
    trace.set_tracer_provider(provider)
    _activate(provider)
    return True


def _activate(provider: trace.TracerProvider | None) -> None:
    _State.enabled = provider is not None
    _State.tracer = (
        provider.get_tracer(INSTRUMENTATION_NAME) if provider is not None else trace.NoOpTracer()
    )


class tracing_to:
    """Trace this module's spans into ``provider`` within the block, without touching the global
    provider: for tests and for embedding the services in another process."""

    def __init__(self, provider: trace.TracerProvider) -> None:
        self._provider = provider
        self._before: tuple[bool, trace.Tracer] = (False, trace.NoOpTracer())

    def __enter__(self) -> trace.TracerProvider:
        self._before = (_State.enabled, _State.tracer)
        _activate(self._provider)
        return self._provider

    def __exit__(self, *exc_info: object) -> None:
        _State.enabled, _State.tracer = self._before


def inject_context(headers: MutableMapping[str, str]) -> None:
    """Add the current trace context to ``headers`` of an outgoing message (no-op when off)."""
    if _State.enabled:
        propagate.inject(headers)


class handling:
    """The scope of handling one message or request: a span continuing the trace the ``headers``
    carry (a new trace if they carry none), current within the block, and the task the logs name.

    ``with handling("SubmitTask", message.headers) as scope: ...``; inside, :func:`bind_task` (or
    :meth:`task`) names the task once known. Leaving the block ends the span (an exception marks
    it failed) and restores the task the logs named before. Tracing off, only the task binding
    happens, so a handler pays a context variable set and reset.
    """

    __slots__ = (
        "_attributes",
        "_carrier",
        "_current_token",
        "_kind",
        "_name",
        "_span",
        "_span_scope",
        "_token",
    )

    def __init__(
        self,
        name: str,
        headers: Mapping[str, str] | None,
        *,
        kind: SpanKind = SpanKind.CONSUMER,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> None:
        self._name = name
        self._carrier = headers
        self._kind = kind
        self._attributes = attributes
        self._span: Span | None = None
        self._span_scope: Any = None
        self._token: Any = None
        self._current_token: Any = None

    def __enter__(self) -> handling:
        self._token = task_scope_enter()
        self._current_token = _current_handling.set(self)
        if _State.enabled:
            parent = propagate.extract(self._carrier or {})
            self._span_scope = _State.tracer.start_as_current_span(
                self._name, context=parent, kind=self._kind, attributes=self._attributes
            )
            self._span = self._span_scope.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if self._span_scope is not None:
                self._span_scope.__exit__(exc_type, exc, traceback)
        finally:
            _current_handling.reset(self._current_token)
            task_scope_exit(self._token)

    @property
    def span(self) -> Span | None:
        """The span, or ``None`` when tracing is off."""
        return self._span

    def task(self, task_id: UUID | str | None) -> None:
        """Name the task this message is about (logs and the span's ``opspawn.task_id``)."""
        name_task(task_id)
        if self._span is not None and task_id is not None:
            self._span.set_attribute(TASK_ID_ATTRIBUTE, str(task_id))

    def rename(self, name: str) -> None:
        """Give the span a more precise name once the message is decoded."""
        if self._span is not None:
            self._span.update_name(name)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self._span is not None:
            self._span.set_attribute(key, value)

    def fail(self, description: str) -> None:
        """Mark the span failed without an exception (the handler answered with an error)."""
        if self._span is not None:
            self._span.set_status(Status(StatusCode.ERROR, description))


_current_handling: ContextVar[handling | None] = ContextVar("opspawn_handling", default=None)


def handling_scope() -> handling:
    """The innermost :class:`handling` scope of this message, opened by :class:`TraceHandling`
    around the handler; outside one, a scope of no span (naming the task still tags the logs)."""
    return _current_handling.get() or handling("", None)


class TraceHandling:
    """Consumer middleware: each message is handled in a :class:`handling` scope named ``name``
    (a handler that decodes the message may rename it, ``handling_scope().rename(...)``, and name
    its task), continuing the trace the message's headers carry. The span records how the message
    was settled (``opspawn.outcome``) and is marked failed when it failed or was refused."""

    def __init__(self, name: str) -> None:
        self._name = name

    async def __call__(self, message: Msg, call_next: Handler) -> Outcome:
        with handling(self._name, message.headers) as scope:
            outcome = await call_next(message)
            scope.set_attribute(OUTCOME_ATTRIBUTE, type(outcome).__name__.lower())
            if isinstance(outcome, Failed | Refused):
                scope.fail(outcome.reason)
            return outcome


def annotate_span(key: str, value: AttributeValue) -> None:
    """Set an attribute on the current span, from code that has no handle on it (no-op off)."""
    if _State.enabled:
        trace.get_current_span().set_attribute(key, value)


class span:
    """A child span of the current one within the block (nothing when tracing is off)."""

    __slots__ = ("_attributes", "_kind", "_name", "_scope")

    def __init__(
        self,
        name: str,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> None:
        self._name = name
        self._kind = kind
        self._attributes = attributes
        self._scope: Any = None

    def __enter__(self) -> Span | None:
        if not _State.enabled:
            return None
        self._scope = _State.tracer.start_as_current_span(
            self._name, kind=self._kind, attributes=self._attributes
        )
        result: Span = self._scope.__enter__()
        return result

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._scope is not None:
            self._scope.__exit__(exc_type, exc, traceback)
