"""The AsyncAPI 3.0 document of Opspawn's NATS interface, generated from the contracts.

What it describes, all from this package so that it cannot drift from the code:

- one channel per event type (``{prefix}.events.task.{task_id}.<EventType>``) with the event's
  JSON schema (from its pydantic model) and its schema version (``x-schema-version``);
- the command channels (``submit``, ``cancel``), the runners' work queue, the dead letters (the
  original payload kept byte for byte, the reason in headers), and the request/reply subjects of
  the MCP proxy and the scheduler's status, each with its request and reply schemas;
- the headers each message carries (``Nats-Msg-Id`` for deduplication, the optimistic-concurrency
  headers of event appends, W3C trace context), and the JetStream stream that stores each channel
  with its retention (``x-opspawn-stream``).

Addresses are built by :class:`~opspawn_contracts.subjects.Subjects` itself, with placeholder
tokens turned into channel parameters (``{prefix}``, ``{task_id}``, ...), so a change of subject
layout shows up in the document. Opspawn is the application described: ``send`` operations are
what a subscriber can receive (events, work, dead letters), ``receive`` ones what Opspawn takes
(commands, requests).

``make asyncapi`` (``scripts/generate_asyncapi.py``) writes ``docs/asyncapi.json``; a test fails
when the committed document differs from :func:`asyncapi_document`, and when an event type of the
:data:`~opspawn_contracts.events.Event` union (or its current schema version) is missing from it.

Why not FastStream's generator: it documents a broker's publishers and subscribers, so it could
describe these subjects without the services running on FastStream, but its AsyncAPI 3.0 model
(0.7.8) has no channel parameters (the address keeps ``{task_id}`` undeclared), no message
headers, no replies for request/reply, and states every correlation id as a header FastStream
itself sets, which our messages do not carry; it would add a runtime dependency to the contracts
and still need most of this document rewritten afterwards. Its schemas come from pydantic, as
these do.
"""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any
from uuid import UUID

from nats.js.api import StreamConfig
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from opspawn_contracts import dead_letters
from opspawn_contracts.commands import COMMAND_SCHEMA_VERSION, Command, SubmitAnswer, SubmitTask
from opspawn_contracts.dead_letters import DeadLetterSource
from opspawn_contracts.events import Event
from opspawn_contracts.streams import stream_configs
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.tool_rpc import (
    CallToolReply,
    CallToolRequest,
    ListToolsReply,
    ListToolsRequest,
    McpStatusReply,
)
from opspawn_contracts.work import TaskAssignment

ASYNCAPI_VERSION = "3.0.0"
DEFAULT_PREFIX = Subjects().prefix

EVENT_MODELS: tuple[type[BaseModel], ...] = typing.get_args(typing.get_args(Event)[0])
"""Every event type, in the order of the :data:`~opspawn_contracts.events.Event` union."""
COMMAND_MODELS: tuple[type[BaseModel], ...] = typing.get_args(typing.get_args(Command)[0])

PLACEHOLDER_TASK_ID = UUID(int=0)
"""Stands for the ``{task_id}`` parameter in subjects built for channel addresses."""
_PLACEHOLDER = re.compile(r"x0([a-z_]+)0x")


def placeholder(parameter: str) -> str:
    """A subject token :class:`Subjects` accepts, standing for the channel parameter."""
    return f"x0{parameter}0x"


def channel_address(subject: str) -> str:
    """A subject built from placeholders, as a channel address with ``{parameters}``."""
    return _PLACEHOLDER.sub(r"{\1}", subject).replace(str(PLACEHOLDER_TASK_ID), "{task_id}")


PLACEHOLDER_SUBJECTS = Subjects(placeholder("prefix"))
"""Subjects whose every name is a channel address once :func:`channel_address` has read it."""

PARAMETERS: dict[str, dict[str, Any]] = {
    "prefix": {
        "description": "OPSPAWN_SUBJECT_PREFIX of the deployment (one token); stream names are "
        "the prefix upper-cased, '-' becoming '_' (OPSPAWN_EVENTS for the default).",
        "default": DEFAULT_PREFIX,
        "examples": [DEFAULT_PREFIX],
    },
    "task_id": {
        "description": "The task's id, a UUID as in the event's task_id.",
        "examples": ["5b0e3b9e-2f44-4c38-9a55-6f0a2e1f3c11"],
    },
    "task_type": {
        "description": "The task's task_type (letters, digits, '_' or '-').",
        "examples": ["agent_run"],
    },
    "server": {
        "description": "The MCP server's name in the proxy's configuration (its tool namespace).",
        "examples": ["time"],
    },
    "source": {
        "description": "Which stream the message came from.",
        "enum": [source.value for source in DeadLetterSource],
    },
}


# --- headers -----------------------------------------------------------------------------------


def _string(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


TRACE_HEADERS = {
    "traceparent": _string(
        "W3C trace context of the request that led to this message, when tracing is on."
    ),
    "tracestate": _string("W3C trace state, alongside traceparent."),
}
HEADER_SCHEMAS: dict[str, dict[str, Any]] = {
    "EventHeaders": {
        "type": "object",
        "description": "Headers of an event as appended to the events stream.",
        "properties": {
            "Nats-Msg-Id": _string(
                "The event_id: JetStream stores a republished event once (2-minute window)."
            ),
            "Nats-Expected-Last-Subject-Sequence": _string(
                "Optimistic concurrency: the stream sequence the task's history ended at when "
                "the writer decided (0 for a task's first event); JetStream refuses the append "
                "otherwise."
            ),
            "Nats-Expected-Last-Subject-Sequence-Subject": _string(
                "The subject filter the expectation is about: {prefix}.events.task.{task_id}.*"
            ),
            **TRACE_HEADERS,
        },
        "required": ["Nats-Msg-Id"],
    },
    "CommandHeaders": {
        "type": "object",
        "description": "Headers of a command.",
        "properties": {
            "Nats-Msg-Id": _string("The command_id: a retried publish is stored once."),
            **TRACE_HEADERS,
        },
        "required": ["Nats-Msg-Id"],
    },
    "WorkHeaders": {
        "type": "object",
        "description": "Headers of a work item.",
        "properties": {
            "Nats-Msg-Id": _string("<task_id>:<attempt>: one work item per task attempt."),
            **TRACE_HEADERS,
        },
        "required": ["Nats-Msg-Id"],
    },
    "DeadLetterHeaders": {
        "type": "object",
        "description": "What the dead letter says about the message it keeps.",
        "properties": {
            dead_letters.HEADER_REASON: _string(
                f"Why the message was given up on (one line, at most "
                f"{dead_letters.MAX_REASON_LENGTH} characters)."
            ),
            dead_letters.HEADER_SERVICE: _string("Which service gave up on it."),
            dead_letters.HEADER_AT: _string("When, ISO 8601 with offset."),
            dead_letters.HEADER_STREAM: _string("The stream it was stored in."),
            dead_letters.HEADER_SUBJECT: _string("The subject it was published to."),
            dead_letters.HEADER_SEQUENCE: _string("Its sequence in that stream."),
            dead_letters.HEADER_DELIVERIES: _string("How often it had been delivered."),
            dead_letters.HEADER_TRUNCATED: _string(
                "'true' when only the first bytes of the payload were kept."
            ),
            "Nats-Msg-Id": _string(
                "<stream>:<sequence> of the original: it is kept once however often a service "
                "gives up on it."
            ),
        },
        "required": [
            dead_letters.HEADER_REASON,
            dead_letters.HEADER_SERVICE,
            dead_letters.HEADER_AT,
            dead_letters.HEADER_STREAM,
            dead_letters.HEADER_SUBJECT,
        ],
    },
}


# --- the document ------------------------------------------------------------------------------


def _stream(config: StreamConfig) -> dict[str, Any]:
    """The stream that stores a channel's messages, as a subscriber needs to know it."""
    described: dict[str, Any] = {
        "name": config.name,
        "retention": config.retention.value if config.retention else None,
        "storage": config.storage.value if config.storage else None,
        "max_message_bytes": config.max_msg_size,
        "duplicate_window_seconds": config.duplicate_window,
        "max_age_seconds": config.max_age or None,
        "description": config.description,
    }
    return {key: value for key, value in described.items() if value is not None}


def _summary(model: type[BaseModel]) -> str | None:
    documented = model.__doc__ or ""
    data = model.model_fields.get("data")
    if not documented and data is not None and isinstance(data.annotation, type):
        documented = data.annotation.__doc__ or ""
    first = documented.strip().split("\n\n")[0]
    return " ".join(first.split()) or None


def _message(
    name: str,
    payload: dict[str, Any],
    *,
    headers: str | None = None,
    summary: str | None = None,
    content_type: str = "application/json",
    correlated: bool = False,
    extensions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``correlated``: the payload carries the task story's ``correlation_id``."""
    message: dict[str, Any] = {"name": name, "title": name}
    if summary:
        message["summary"] = summary
    message["contentType"] = content_type
    if headers is not None:
        message["headers"] = {"$ref": f"#/components/schemas/{headers}"}
    message["payload"] = payload
    if correlated:
        message["correlationId"] = {"$ref": "#/components/correlationIds/taskStory"}
    message.update(extensions or {})
    return message


def _channel(
    address: str | None,
    messages: Sequence[str],
    *,
    description: str,
    stream: StreamConfig | None = None,
) -> dict[str, Any]:
    channel: dict[str, Any] = {"address": address, "description": description}
    parameters = re.findall(r"{([a-z_]+)}", address or "")
    if parameters:
        channel["parameters"] = {name: PARAMETERS[name] for name in parameters}
    channel["messages"] = {name: {"$ref": f"#/components/messages/{name}"} for name in messages}
    if stream is not None:
        channel["x-opspawn-stream"] = _stream(stream)
    return channel


def _operation(
    action: str,
    channel: str,
    messages: Sequence[str],
    *,
    summary: str,
    reply: tuple[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "summary": summary,
        "messages": [{"$ref": f"#/channels/{channel}/messages/{name}"} for name in messages],
    }
    if reply is not None:
        reply_channel, reply_messages = reply
        operation["reply"] = {
            "channel": {"$ref": f"#/channels/{reply_channel}"},
            "messages": [
                {"$ref": f"#/channels/{reply_channel}/messages/{name}"} for name in reply_messages
            ],
        }
    return operation


def _schemas(
    models: Sequence[tuple[type[BaseModel], JsonSchemaMode]],
) -> tuple[dict[type[BaseModel], dict[str, Any]], dict[str, Any]]:
    """Payload references per model and the component schemas, from pydantic (one namespace)."""
    references, definitions = models_json_schema(
        models, ref_template="#/components/schemas/{model}"
    )
    payloads = {model: dict(references[(model, mode)]) for model, mode in models}
    return payloads, dict(definitions.get("$defs", {}))


INFO_DESCRIPTION = """\
Opspawn runs AI-agent tasks as event-sourced services over NATS JetStream. This document \
describes every subject a client of the message bus may see: the events (the source of truth), \
the commands the gateway sends the scheduler (a submission as a request the scheduler answers \
once the task is stored, a cancel on the commands stream), the runners' work queue, the dead \
letters, and the request/reply subjects of the MCP proxy and the scheduler.

Reading events: the events stream keeps every event for ever, one subject per task and event \
type. Subscribe with a JetStream consumer (an ordered consumer to read history) on \
`{prefix}.events.task.*.*` (all events), `{prefix}.events.task.<task_id>.*` (one task's \
history, in order), or `{prefix}.events.task.*.<EventType>` (one type across tasks). The stream \
sequence is the event's position; a task's events are in stream order. Every payload is a JSON \
envelope (event_id, event_type, schema_version, task_id, occurred_at, correlation_id, \
causation_id, data). `x-schema-version` on each message is the version written today; an older \
stored version is upcast on read by `opspawn_contracts.events.decode_event`, and a version \
newer than a reader knows must be refused, not guessed at.

Commands and work items are internal: publish commands through the gateway's REST or gRPC API, \
which validates them first. A message any service cannot read is kept in the dead-letter stream \
with the reason (`opspawn deadletters list`).

Generated from the `opspawn_contracts` package (`make asyncapi`); do not edit by hand.
"""


def asyncapi_document(event_models: Sequence[type[BaseModel]] = EVENT_MODELS) -> dict[str, Any]:
    """The document, as a JSON-compatible mapping; the same contracts give the same document.

    ``event_models`` defaults to the members of the ``Event`` union (tests pass others).
    """
    subjects = PLACEHOLDER_SUBJECTS
    streams = {config.name: config for config in stream_configs(Subjects(DEFAULT_PREFIX))}
    defaults = Subjects(DEFAULT_PREFIX)
    events_stream = streams[defaults.events_stream]
    commands_stream = streams[defaults.commands_stream]
    work_stream = streams[defaults.work_stream]
    dead_letters_stream = streams[defaults.dead_letters_stream]

    sent: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((model, "serialization") for model in event_models),
        (TaskAssignment, "serialization"),
        (ListToolsReply, "serialization"),
        (CallToolReply, "serialization"),
        (McpStatusReply, "serialization"),
        (SubmitAnswer, "serialization"),
    ]
    received: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((model, "validation") for model in COMMAND_MODELS),
        (ListToolsRequest, "validation"),
        (CallToolRequest, "validation"),
    ]
    payloads, schemas = _schemas([*sent, *received])

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}

    for model in event_models:
        event_type = str(model.model_fields["event_type"].default)
        version = model.model_fields["schema_version"].default
        name = f"event{event_type}"
        messages[event_type] = _message(
            event_type,
            payloads[model],
            headers="EventHeaders",
            summary=_summary(model),
            correlated=True,
            extensions={"x-schema-version": version},
        )
        channels[name] = _channel(
            channel_address(subjects.event(PLACEHOLDER_TASK_ID, event_type)),
            [event_type],
            description=f"{event_type} events of one task (schema version {version}).",
            stream=events_stream,
        )
        operations[f"publish{event_type}"] = _operation(
            "send", name, [event_type], summary=f"A service appends a {event_type} event."
        )

    for model in COMMAND_MODELS:
        command_type = str(model.model_fields["command_type"].default)
        command = model.__name__
        name = f"command{command}"
        messages[command] = _message(
            command,
            payloads[model],
            headers="CommandHeaders",
            summary=_summary(model),
            correlated=True,
            extensions={"x-schema-version": COMMAND_SCHEMA_VERSION},
        )
        channels[name] = _channel(
            channel_address(subjects.command(command_type)),
            [command],
            description=f"{command} commands, from the gateway to the scheduler.",
            stream=commands_stream,
        )
        operations[f"decide{command}"] = _operation(
            "receive", name, [command], summary=f"The scheduler decides a {command} command."
        )

    work_version = TaskAssignment.model_fields["schema_version"].default
    messages["TaskAssignment"] = _message(
        "TaskAssignment",
        payloads[TaskAssignment],
        headers="WorkHeaders",
        summary="A later attempt of a task (a retry), queued by the scheduler for a runner; a "
        "first attempt is the task's TaskSubmitted itself.",
        correlated=True,
        extensions={"x-schema-version": work_version},
    )
    channels["work"] = _channel(
        channel_address(subjects.work(placeholder("task_type"))),
        ["TaskAssignment"],
        description="The runners' work queue (kept for a while after a runner acknowledges an "
        "item: a limits stream with a max age, so the ack costs no write).",
        stream=work_stream,
    )
    operations["queueWork"] = _operation(
        "send", "work", ["TaskAssignment"], summary="The scheduler queues a retry attempt."
    )
    operations["runFirstAttempt"] = _operation(
        "receive",
        "eventTaskSubmitted",
        ["TaskSubmitted"],
        summary="A runner takes a task's first attempt from its TaskSubmitted, through the "
        f"runners' shared durable consumer `{defaults.runner_submitted_consumer}`, and runs it.",
    )
    operations["runWork"] = _operation(
        "receive", "work", ["TaskAssignment"], summary="A runner takes a task attempt and runs it."
    )

    messages["DeadLetter"] = _message(
        "DeadLetter",
        {
            "description": "The original message's payload, byte for byte (cut to "
            f"{dead_letters.MAX_KEPT_PAYLOAD_BYTES} bytes when longer, and marked so)."
        },
        headers="DeadLetterHeaders",
        summary="A message a service could not handle, kept with the reason.",
        content_type="application/octet-stream",
    )
    channels["deadLetters"] = _channel(
        channel_address(subjects.dead_letter(placeholder("source"))),
        ["DeadLetter"],
        description="Messages given up on: invalid, or failing at every delivery. Listed and "
        "re-driven with `opspawn deadletters`.",
        stream=dead_letters_stream,
    )
    operations["keepDeadLetter"] = _operation(
        "send", "deadLetters", ["DeadLetter"], summary="A service keeps a message it gave up on."
    )

    rpcs: list[tuple[str, str, str, dict[str, Any], str, dict[str, Any], str]] = [
        (
            "schedulerSubmit",
            subjects.submit_requests,
            "SubmitTaskRequest",
            payloads[SubmitTask],
            "SubmitAnswer",
            payloads[SubmitAnswer],
            "The scheduler decides a SubmitTask sent as a request (the gateway's submissions) and "
            "answers once the task's TaskSubmitted is stored (queue group: one scheduler answers).",
        ),
        (
            "mcpListTools",
            subjects.mcp_list_tools,
            "ListToolsRequest",
            payloads[ListToolsRequest],
            "ListToolsReply",
            payloads[ListToolsReply],
            "The MCP proxy lists the tools of every MCP server, or of the one named.",
        ),
        (
            "mcpCallTool",
            subjects.mcp_call_tool(placeholder("server")),
            "CallToolRequest",
            payloads[CallToolRequest],
            "CallToolReply",
            payloads[CallToolReply],
            "The MCP proxy calls a tool of the server named in the subject (queue group: one "
            "proxy answers).",
        ),
        (
            "mcpStatus",
            subjects.mcp_status,
            "McpStatusRequest",
            {"description": "Any payload; it is not read."},
            "McpStatusReply",
            payloads[McpStatusReply],
            "The MCP proxy says it is up, and how its servers are.",
        ),
        (
            "schedulerStatus",
            subjects.scheduler_status,
            "SchedulerStatusRequest",
            {"description": "Any payload; it is not read."},
            "SchedulerStatusReply",
            {
                "type": "object",
                "description": "The scheduler's status as `opspawn status --json` prints it: "
                "readiness, projection position and lag, decisions, dead letters "
                "(scheduler.status.SchedulerStatus).",
            },
            "The scheduler reports its projection and decisions.",
        ),
    ]
    for name, subject, request, request_payload, reply, reply_payload, summary in rpcs:
        messages[request] = _message(request, request_payload)
        messages[reply] = _message(reply, reply_payload)
        channels[name] = _channel(
            channel_address(subject),
            [request],
            description="Core NATS request/reply, outside every stream.",
        )
        channels[f"{name}Reply"] = _channel(
            None,
            [reply],
            description="The requester's inbox (the reply subject NATS gives the request).",
        )
        operations[f"answer{name[0].upper()}{name[1:]}"] = _operation(
            "receive", name, [request], summary=summary, reply=(f"{name}Reply", [reply])
        )

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Opspawn message bus",
            "version": metadata.version("opspawn-contracts"),
            "description": INFO_DESCRIPTION,
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "{host}",
                "protocol": "nats",
                "description": "The deployment's NATS server with JetStream (OPSPAWN_NATS_URL).",
                "variables": {"host": {"default": "127.0.0.1:4222"}},
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": {**schemas, **HEADER_SCHEMAS},
            "messages": messages,
            "correlationIds": {
                "taskStory": {
                    "description": "The id of the request that started the task's story (its "
                    "submit command), on every command and event of the task.",
                    "location": "$message.payload#/correlation_id",
                }
            },
        },
    }


def undocumented_event_types(
    document: Mapping[str, Any], event_models: Sequence[type[BaseModel]] = EVENT_MODELS
) -> list[str]:
    """``<EventType> v<version>`` for each event type that ``document`` lacks, or documents in
    another schema version than the contracts write today."""
    messages = document.get("components", {}).get("messages", {})
    missing = []
    for model in event_models:
        event_type = str(model.model_fields["event_type"].default)
        version = model.model_fields["schema_version"].default
        if messages.get(event_type, {}).get("x-schema-version") != version:
            missing.append(f"{event_type} v{version}")
    return missing


def render(document: Mapping[str, Any]) -> str:
    """The document as committed: JSON, two-space indents, a final newline."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
