"""Events round-trip through JSON, and the union rejects what is not an event."""

from __future__ import annotations

from typing import get_args
from uuid import uuid4

import pytest
from pydantic import ValidationError

from opspawn_contracts import events
from opspawn_contracts.events import Event, decode_event, encode_event

TASK, CORRELATION = uuid4(), uuid4()


def _one_of_each() -> list[Event]:
    common = {"task_id": TASK, "correlation_id": CORRELATION}
    return [
        events.TaskSubmitted(
            **common, data=events.TaskSubmittedData(task_type="agent_run", input_data={"x": [1]})
        ),
        events.TaskStarted(
            **common,
            data=events.TaskStartedData(
                attempt=1,
                runner_id="r1",
                first_step=events.StepIntent(
                    step_index=0,
                    calls=[
                        events.ToolCallIntent(
                            call_id="c0", tool="math.add", arguments={"a": 1, "b": 2}
                        )
                    ],
                ),
            ),
        ),
        events.StepStarted(
            **common,
            data=events.StepStartedData(
                attempt=1,
                step=events.StepIntent(
                    step_index=1,
                    calls=[events.ToolCallIntent(call_id="c1", tool="util.noop", arguments={})],
                    message="and then nothing",
                ),
            ),
        ),
        events.StepCompleted(
            **common,
            data=events.StepCompletedData(
                attempt=1,
                step_index=1,
                outcomes=[
                    events.ToolCallOutcome(
                        call_id="c1", tool="util.noop", ok=True, result=None, duration_ms=0.4
                    )
                ],
            ),
        ),
        events.ToolCallRequested(
            **common,
            data=events.ToolCallRequestedData(
                attempt=1, step_index=0, call_id="c0", tool="math.add", arguments={"a": 1, "b": 2}
            ),
        ),
        events.ToolCallCompleted(
            **common,
            data=events.ToolCallCompletedData(
                attempt=1,
                step_index=0,
                call_id="c0",
                tool="math.add",
                ok=True,
                result=3,
                duration_ms=1.5,
            ),
        ),
        events.AgentStepCompleted(
            **common,
            data=events.AgentStepCompletedData(attempt=1, step_index=0, tool_call_ids=["c0"]),
        ),
        events.TaskCompleted(
            **common, data=events.TaskCompletedData(attempt=1, output_data={"result": 3})
        ),
        events.TaskFailed(**common, data=events.TaskFailedData(attempt=1, error_message="boom")),
        events.TaskCancelled(**common, data=events.TaskCancelledData(reason="user")),
        events.TaskAttemptFailed(
            **common, data=events.TaskAttemptFailedData(attempt=1, error_message="flaky")
        ),
        events.TaskRetryScheduled(
            **common,
            data=events.TaskRetryScheduledData(
                attempt=2,
                reason="attempt 1 failed: flaky",
                delay_seconds=0.7,
                not_before=events.utc_now(),
            ),
        ),
        events.TaskTimedOut(
            **common,
            data=events.TaskTimedOutData(attempt=2, timeout_seconds=5, reason="deadline"),
        ),
    ]


def test_every_event_type_round_trips_and_is_covered() -> None:
    samples = _one_of_each()
    union_members = get_args(get_args(Event)[0])
    assert {type(sample) for sample in samples} == set(union_members)
    for sample in samples:
        assert decode_event(encode_event(sample)) == sample


def test_event_type_tag_is_the_class_name() -> None:
    for sample in _one_of_each():
        assert sample.event_type == type(sample).__name__


def test_unknown_event_type_and_bad_payloads_are_rejected() -> None:
    good = encode_event(_one_of_each()[0]).decode()
    with pytest.raises(ValidationError, match="TaskExploded"):
        decode_event(good.replace("TaskSubmitted", "TaskExploded").encode())
    with pytest.raises(ValidationError):
        decode_event(b"not json")
    with pytest.raises(ValidationError, match="extra"):
        decode_event(good.replace('"data":{', '"data":{"surprise":1,').encode())


def test_events_are_immutable() -> None:
    sample = _one_of_each()[0]
    with pytest.raises(ValidationError):
        sample.task_id = uuid4()  # type: ignore[misc]
