"""Conversions between the API's Python models and ``opspawn.v1`` protobuf messages.

``google.protobuf.Struct`` carries every number as a double. Integral values within the exactly
representable range (|n| ≤ 2**53) come back as ``int``, so a task submitted over gRPC stores the
same ``input_data`` as the same JSON sent over REST (``{"a": 2}``, not ``{"a": 2.0}``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from pydantic import JsonValue

from gateway.reading import TaskEventView
from opspawn.v1 import tasks_pb2
from opspawn_contracts.events import TaskOptions
from opspawn_contracts.task import TaskStatus, TaskView

_EXACT_INTEGERS = 2**53

STATUS_TO_PROTO: dict[TaskStatus, tasks_pb2.TaskStatus] = {
    TaskStatus.PENDING: tasks_pb2.TASK_STATUS_PENDING,
    TaskStatus.RUNNING: tasks_pb2.TASK_STATUS_RUNNING,
    TaskStatus.COMPLETED: tasks_pb2.TASK_STATUS_COMPLETED,
    TaskStatus.FAILED: tasks_pb2.TASK_STATUS_FAILED,
    TaskStatus.CANCELLED: tasks_pb2.TASK_STATUS_CANCELLED,
}
STATUS_FROM_PROTO = {value: status for status, value in STATUS_TO_PROTO.items()}


def status_filter(value: tasks_pb2.TaskStatus) -> TaskStatus | None:
    """A ListTasks status filter: UNSPECIFIED means any; an unknown number is a ValueError."""
    if value == tasks_pb2.TASK_STATUS_UNSPECIFIED:
        return None
    try:
        return STATUS_FROM_PROTO[value]
    except KeyError:
        allowed = ", ".join(tasks_pb2.TaskStatus.Name(number) for number in STATUS_FROM_PROTO)
        raise ValueError(f"status {value} is not one of {allowed}") from None


def _integral(value: JsonValue) -> JsonValue:
    if isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT_INTEGERS:
        return int(value)
    if isinstance(value, list):
        return [_integral(item) for item in value]
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    return value


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, JsonValue]:
    as_dict = cast(dict[str, JsonValue], json_format.MessageToDict(struct))
    return {key: _integral(value) for key, value in as_dict.items()}


def task_to_proto(task: TaskView) -> tasks_pb2.Task:
    message = tasks_pb2.Task(
        task_id=str(task.task_id),
        task_type=task.task_type,
        status=STATUS_TO_PROTO[task.status],
    )
    message.input_data.update(task.input_data)
    if task.output_data is not None:
        message.output_data.update(task.output_data)
    if task.error_message is not None:
        message.error_message = task.error_message
    message.created_at.FromDatetime(task.created_at)
    message.updated_at.FromDatetime(task.updated_at)
    if task.idempotency_key is not None:
        message.idempotency_key = task.idempotency_key
    message.options.CopyFrom(options_to_proto(task.options))
    message.usage.input_tokens = task.input_tokens
    message.usage.output_tokens = task.output_tokens
    return message


def options_to_proto(options: TaskOptions) -> tasks_pb2.TaskOptions:
    message = tasks_pb2.TaskOptions(allowed_tools=options.allowed_tools or [])
    if options.timeout_seconds is not None:
        message.timeout_seconds = options.timeout_seconds
    if options.max_attempts is not None:
        message.max_attempts = options.max_attempts
    if options.max_total_tokens is not None:
        message.max_total_tokens = options.max_total_tokens
    return message


def options_from_proto(message: tasks_pb2.TaskOptions) -> dict[str, JsonValue]:
    """The REST form of ``options``, for :class:`TaskRequest` to validate like a REST body."""
    options: dict[str, JsonValue] = {}
    if message.HasField("timeout_seconds"):
        options["timeout_seconds"] = message.timeout_seconds
    if message.HasField("max_attempts"):
        options["max_attempts"] = message.max_attempts
    if message.allowed_tools:
        options["allowed_tools"] = list(message.allowed_tools)
    if message.HasField("max_total_tokens"):
        options["max_total_tokens"] = message.max_total_tokens
    return options


def optional_time(message: tasks_pb2.ListTasksRequest, field: str) -> datetime | None:
    """A Timestamp field of ``message`` as an aware datetime, ``None`` when unset."""
    if not message.HasField(field):
        return None
    timestamp: timestamp_pb2.Timestamp = getattr(message, field)
    return timestamp.ToDatetime(tzinfo=UTC)


def event_to_proto(event: TaskEventView) -> tasks_pb2.TaskEvent:
    message = tasks_pb2.TaskEvent(
        sequence=event.sequence,
        event_id=str(event.event_id),
        event_type=event.event_type,
        task_id=str(event.task_id),
        schema_version=event.schema_version,
        correlation_id=str(event.correlation_id),
    )
    message.occurred_at.FromDatetime(event.occurred_at)
    message.data.update(event.data)
    if event.causation_id is not None:
        message.causation_id = str(event.causation_id)
    return message
