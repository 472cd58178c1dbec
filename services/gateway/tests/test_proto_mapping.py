from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest
from google.protobuf import json_format, struct_pb2

from gateway.proto_mapping import (
    options_from_proto,
    status_filter,
    struct_to_dict,
    task_to_proto,
)
from opspawn.v1 import tasks_pb2
from opspawn_contracts.events import TaskOptions
from opspawn_contracts.task import TaskStatus, TaskView


def test_struct_numbers_come_back_as_the_integers_json_meant() -> None:
    struct = struct_pb2.Struct()
    struct.update({"a": 2, "b": 2.5, "big": 2.0**60, "nested": [{"n": -3}], "none": None})

    values = struct_to_dict(struct)

    assert values == {"a": 2, "b": 2.5, "big": 2.0**60, "nested": [{"n": -3}], "none": None}
    assert isinstance(values["a"], int)
    assert isinstance(values["big"], float)


def test_a_task_maps_field_for_field() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
    task = TaskView(
        task_id=uuid4(),
        task_type="agent_run",
        status=TaskStatus.FAILED,
        input_data={"plan": [{"tool": "math.add", "args": {"a": 1}}]},
        output_data={"steps": []},
        error_message="step 1 failed",
        created_at=moment,
        updated_at=moment,
        options=TaskOptions(max_attempts=2, max_total_tokens=5000),
        input_tokens=1200,
        output_tokens=80,
    )

    message = task_to_proto(task)

    assert message.task_id == str(task.task_id)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (1200, 80)
    assert (message.options.max_attempts, message.options.max_total_tokens) == (2, 5000)
    assert options_from_proto(message.options) == {"max_attempts": 2, "max_total_tokens": 5000}
    assert message.status == tasks_pb2.TASK_STATUS_FAILED
    assert json_format.MessageToDict(message.input_data) == task.input_data
    assert json_format.MessageToDict(message.output_data) == {"steps": []}
    assert message.error_message == "step 1 failed"
    assert message.created_at.ToDatetime(tzinfo=UTC) == moment


def test_unset_optional_fields_stay_unset() -> None:
    moment = datetime.now(UTC)
    task = TaskView(
        task_id=uuid4(),
        task_type="t",
        status=TaskStatus.PENDING,
        input_data={},
        created_at=moment,
        updated_at=moment,
    )

    message = task_to_proto(task)

    assert not message.HasField("output_data")
    assert not message.HasField("error_message")
    assert not message.options.HasField("max_total_tokens")


def test_status_filter() -> None:
    assert status_filter(tasks_pb2.TASK_STATUS_UNSPECIFIED) is None
    assert status_filter(tasks_pb2.TASK_STATUS_CANCELLED) is TaskStatus.CANCELLED
    with pytest.raises(ValueError, match="status 9 is not one of TASK_STATUS_PENDING"):
        status_filter(9)  # type: ignore[arg-type]
