"""Prometheus metrics of every Opspawn service, in ``prometheus_client``'s default registry.

Each service serves the registry on ``/metrics`` (the gateway on its HTTP port; the others on
their operations port). Every metric has labels, so a service shows only the series it produced.
Label values come from fixed sets (statuses, outcomes, sources, error kinds) or from names the
system configures (routes, MCP servers); tool names come from task input, so at most
:data:`MAX_TOOL_LABELS` distinct ones are kept and the rest are counted as ``other``.

=====================================================  =========  ==================================
metric                                                 service    labels
=====================================================  =========  ==================================
``opspawn_tasks_total``                                scheduler  ``status``: pending (submitted),
                                                                  running (an attempt started),
                                                                  completed, failed, cancelled
``opspawn_projection_lag_events``                      scheduler  ``stream``
``opspawn_projection_lag_seconds``                     scheduler  ``stream``
``opspawn_consumer_pending_messages``                  scheduler  ``stream``, ``consumer``
``opspawn_consumer_ack_pending_messages``              scheduler  ``stream``, ``consumer``
``opspawn_redeliveries_total``                         scheduler, ``source``: commands, work
                                                       runner
``opspawn_dead_letters_total``                         scheduler, ``source``: commands, events, work
                                                       runner
``opspawn_agent_step_duration_seconds``                runner     ``outcome``: ok, error
``opspawn_tool_call_duration_seconds``                 runner     ``tool``, ``outcome``
``opspawn_work_items_total``                           runner     ``disposition``
``opspawn_mcp_call_duration_seconds``                  mcp-proxy  ``server``, ``outcome``
``opspawn_mcp_call_errors_total``                      mcp-proxy  ``server``, ``kind`` (the error
                                                                  code of the reply)
``opspawn_http_requests_total``                        gateway    ``method``, ``route``, ``status``
``opspawn_http_request_duration_seconds``              gateway    ``method``, ``route``
``opspawn_grpc_requests_total``                        gateway    ``method``, ``code``
``opspawn_grpc_request_duration_seconds``              gateway    ``method``
=====================================================  =========  ==================================
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from nats.aio.msg import Msg
from prometheus_client import Counter, Gauge, Histogram

from opspawn_contracts.dead_letters import DeadLetterSource
from opspawn_contracts.events import Event
from opspawn_contracts.journal import recorded_replies
from opspawn_messaging.settlement import (
    Done,
    Dropped,
    Failed,
    Handler,
    Later,
    Leave,
    Outcome,
    Refused,
    Release,
)

MAX_TOOL_LABELS = 200
MAX_SERVER_LABELS = 100
OTHER = "other"

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
)  # fmt: skip
"""Seconds, from a built-in tool in a warm sandbox (~1 ms) to a slow model or MCP call."""


class BoundedLabelValues:
    """The first ``limit`` distinct values pass through; any later one becomes ``other``.

    Keeps a label fed by user input (tool names in a plan) from growing the series without bound.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(value)
        return value


TASKS = Counter(
    "opspawn_tasks",
    "Tasks entering a status as the projection records it: pending when submitted, running when "
    "an attempt starts, then completed, failed (timeouts included) or cancelled.",
    ["status"],
)
LLM_TOKENS = Counter(
    "opspawn_llm_tokens",
    "Tokens of the model replies tasks recorded, as the projection records them, by model and "
    "kind (input: the prompt, output: the completion).",
    ["model", "kind"],
)
PROJECTION_LAG_EVENTS = Gauge(
    "opspawn_projection_lag_events",
    "Events stored in the stream that the read-model projection has not applied yet.",
    ["stream"],
)
PROJECTION_LAG_SECONDS = Gauge(
    "opspawn_projection_lag_seconds",
    "How far the projection is behind the stream: the age of the event it is applying or of the "
    "oldest one waiting for it; 0 when caught up.",
    ["stream"],
)
CONSUMER_PENDING = Gauge(
    "opspawn_consumer_pending_messages",
    "Messages waiting for a durable consumer, not yet delivered (the queue depth).",
    ["stream", "consumer"],
)
CONSUMER_ACK_PENDING = Gauge(
    "opspawn_consumer_ack_pending_messages",
    "Messages delivered to a durable consumer and not acknowledged yet (being worked on).",
    ["stream", "consumer"],
)
REDELIVERIES = Counter(
    "opspawn_redeliveries",
    "Messages delivered again after a negative acknowledgement, an expired ack wait or a crash.",
    ["source"],
)
DEAD_LETTERS = Counter(
    "opspawn_dead_letters",
    "Messages given up on and kept in the dead-letter stream, by the stream they came from.",
    ["source"],
)
STEP_SECONDS = Histogram(
    "opspawn_agent_step_duration_seconds",
    "Duration of an agent step (planning and its tool calls); error when a call of it failed.",
    ["outcome"],
    buckets=LATENCY_BUCKETS,
)
TOOL_CALL_SECONDS = Histogram(
    "opspawn_tool_call_duration_seconds",
    "Duration of a tool call as the runner saw it, local or through the MCP proxy.",
    ["tool", "outcome"],
    buckets=LATENCY_BUCKETS,
)
WORK_ITEMS = Counter(
    "opspawn_work_items",
    "Work items a runner finished handling, by what it did with the message: ack (done), release "
    "(given back at shutdown), retry_later (events not stored), leave (another writer owns it).",
    ["disposition"],
)
MCP_CALL_SECONDS = Histogram(
    "opspawn_mcp_call_duration_seconds",
    "Duration of a tool call through the MCP proxy, by MCP server.",
    ["server", "outcome"],
    buckets=LATENCY_BUCKETS,
)
MCP_CALL_ERRORS = Counter(
    "opspawn_mcp_call_errors",
    "Tool calls the MCP proxy answered with an error, by server and error kind.",
    ["server", "kind"],
)
HTTP_REQUESTS = Counter(
    "opspawn_http_requests",
    "HTTP requests the gateway answered, by route template and status code.",
    ["method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "opspawn_http_request_duration_seconds",
    "Time to answer an HTTP request (a stream: until it ended).",
    ["method", "route"],
)
GRPC_REQUESTS = Counter(
    "opspawn_grpc_requests",
    "gRPC calls the gateway answered, by method and status code.",
    ["method", "code"],
)
GRPC_SECONDS = Histogram(
    "opspawn_grpc_request_duration_seconds",
    "Time to answer a gRPC call (a stream: until it ended).",
    ["method"],
)

_STATUS_OF_EVENT = {
    "TaskSubmitted": "pending",
    "TaskStarted": "running",
    "TaskCompleted": "completed",
    "TaskFailed": "failed",
    "TaskTimedOut": "failed",
    "TaskCancelled": "cancelled",
}
_tool_labels = BoundedLabelValues(MAX_TOOL_LABELS)
_server_labels = BoundedLabelValues(MAX_SERVER_LABELS)
_model_labels = BoundedLabelValues(MAX_SERVER_LABELS)


def count_projected(events: Iterable[Event | None]) -> None:
    """Count the status changes among events the projection just committed."""
    for event in events:
        if event is not None:
            if getattr(event.data, "started", None) is not None:
                TASKS.labels("running").inc()  # the attempt's claim rides in its last event
            for reply in recorded_replies(event):
                model = _model_labels(reply.model or "unknown")
                LLM_TOKENS.labels(model, "input").inc(reply.input_tokens)
                LLM_TOKENS.labels(model, "output").inc(reply.output_tokens)
            status = _STATUS_OF_EVENT.get(event.event_type)
            if status is not None:
                TASKS.labels(status).inc()


def record_projection_progress(stream: str, last_applied: Msg) -> None:
    """Projection lag after a commit, from the last applied message's delivery metadata (how
    many stream messages follow it, and when it was stored): no extra request to NATS."""
    metadata = last_applied.metadata
    waiting = metadata.num_pending
    PROJECTION_LAG_EVENTS.labels(stream).set(waiting)
    behind = time.time() - metadata.timestamp.timestamp() if waiting else 0.0
    PROJECTION_LAG_SECONDS.labels(stream).set(max(0.0, behind))


def count_redelivery(source: DeadLetterSource, message: Msg) -> None:
    """Count ``message`` if this is not its first delivery."""
    if message.metadata.num_delivered > 1:
        REDELIVERIES.labels(source.value).inc()


class CountRedeliveries:
    """Consumer middleware: counts every delivery of a message after its first, by source."""

    def __init__(self, source: DeadLetterSource) -> None:
        self._source = source

    async def __call__(self, message: Msg, call_next: Handler) -> Outcome:
        count_redelivery(self._source, message)
        return await call_next(message)


class CountWorkItems:
    """Consumer middleware for the runners: counts work items by how they were settled."""

    LABELS: Mapping[type[Outcome], str] = {
        Done: "ack",
        Release: "release",
        Failed: "retry_later",
        Leave: "leave",
        Refused: "refused",
        Dropped: "dropped",
        Later: "later",
    }

    async def __call__(self, message: Msg, call_next: Handler) -> Outcome:
        outcome = await call_next(message)
        count_work_item(self.LABELS[type(outcome)])
        return outcome


def count_dead_letter(source: DeadLetterSource) -> None:
    DEAD_LETTERS.labels(source.value).inc()


def observe_step(ok: bool, seconds: float) -> None:
    STEP_SECONDS.labels("ok" if ok else "error").observe(seconds)


def observe_tool_call(tool: str, ok: bool, seconds: float) -> None:
    TOOL_CALL_SECONDS.labels(_tool_labels(tool), "ok" if ok else "error").observe(seconds)


def count_work_item(disposition: str) -> None:
    WORK_ITEMS.labels(disposition).inc()


def observe_mcp_call(server: str, error_kind: str | None, seconds: float) -> None:
    """One call through the proxy; ``server`` must be a configured server's name (or a fixed
    placeholder for unknown ones), ``error_kind`` the reply's error code, ``None`` for success."""
    label = _server_labels(server)
    MCP_CALL_SECONDS.labels(label, "ok" if error_kind is None else "error").observe(seconds)
    if error_kind is not None:
        MCP_CALL_ERRORS.labels(label, error_kind).inc()


_http_series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def observe_http(method: str, route: str, status: int, seconds: float) -> None:
    """One HTTP request; ``route`` is the route's template (``/v1/tasks/{task_id}``), never
    the path itself. The series of each (method, route, status) are looked up once: this runs
    for every request."""
    series = _http_series.get((method, route, status))
    if series is None:
        series = (
            HTTP_REQUESTS.labels(method, route, str(status)),
            HTTP_SECONDS.labels(method, route),
        )
        _http_series[(method, route, status)] = series
    series[0].inc()
    series[1].observe(seconds)


def observe_grpc(method: str, code: str, seconds: float) -> None:
    """One gRPC call; ``method`` is the full method name, ``code`` the status code's name."""
    GRPC_REQUESTS.labels(method, code).inc()
    GRPC_SECONDS.labels(method).observe(seconds)
