"""The metrics move with what happens on real JetStream streams: redeliveries, dead letters, the
projection's lag, consumer backlogs; and labels fed by task input stay bounded."""

from __future__ import annotations

from uuid import uuid4

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client import REGISTRY, generate_latest

from opspawn_contracts.dead_letters import DeadLetterSource
from opspawn_contracts.events import (
    Event,
    TaskCompleted,
    TaskCompletedData,
    TaskStarted,
    TaskStartedData,
    TaskSubmitted,
    TaskSubmittedData,
    encode_event,
)
from opspawn_contracts.streams import scheduler_commands_consumer
from opspawn_contracts.subjects import Subjects
from opspawn_messaging.dead_letters import DeadLetters
from opspawn_observability.backlog import BacklogSampler
from opspawn_observability.metrics import (
    OTHER,
    BoundedLabelValues,
    count_dead_letter,
    count_projected,
    count_redelivery,
    observe_mcp_call,
    observe_tool_call,
    record_projection_progress,
)


def _value(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _story() -> list[Event]:
    task_id, correlation_id = uuid4(), uuid4()
    return [
        TaskSubmitted(
            task_id=task_id,
            correlation_id=correlation_id,
            data=TaskSubmittedData(task_type="agent_run", input_data={}),
        ),
        TaskStarted(
            task_id=task_id,
            correlation_id=correlation_id,
            data=TaskStartedData(attempt=1, runner_id="r"),
        ),
        TaskCompleted(
            task_id=task_id,
            correlation_id=correlation_id,
            data=TaskCompletedData(attempt=1, output_data={}),
        ),
    ]


async def _append(jetstream: JetStreamContext, subjects: Subjects, events: list[Event]) -> None:
    for event in events:
        await jetstream.publish(
            subjects.event(event.task_id, event.event_type),
            encode_event(event),
            stream=subjects.events_stream,
        )


async def test_a_redelivered_command_and_its_dead_letter_are_counted(
    jetstream: JetStreamContext, subjects: Subjects
) -> None:
    redelivered_before = _value("opspawn_redeliveries_total", {"source": "commands"})
    dead_before = _value("opspawn_dead_letters_total", {"source": "commands"})
    await jetstream.publish(subjects.command("submit"), b"{}", stream=subjects.commands_stream)
    pull = await jetstream.pull_subscribe(
        subjects.all_commands,
        durable="metrics-test",
        stream=subjects.commands_stream,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT),
    )
    [first] = await pull.fetch(1, timeout=5)
    count_redelivery(DeadLetterSource.COMMANDS, first)
    assert _value("opspawn_redeliveries_total", {"source": "commands"}) == redelivered_before
    await first.nak()
    [second] = await pull.fetch(1, timeout=5)
    count_redelivery(DeadLetterSource.COMMANDS, second)
    assert _value("opspawn_redeliveries_total", {"source": "commands"}) == redelivered_before + 1

    dead_letters = DeadLetters(
        jetstream, subjects, service="metrics-test", on_recorded=count_dead_letter
    )
    await dead_letters.record(DeadLetterSource.COMMANDS, second, "not a valid command")
    await dead_letters.record(DeadLetterSource.COMMANDS, second, "recorded twice: kept once")
    assert await dead_letters.count() == 1
    assert _value("opspawn_dead_letters_total", {"source": "commands"}) == dead_before + 1


async def test_projection_lag_follows_the_delivery_metadata(
    jetstream: JetStreamContext, subjects: Subjects
) -> None:
    await _append(jetstream, subjects, _story())
    stream = subjects.events_stream
    ordered = await jetstream.subscribe(subjects.all_events, stream=stream, ordered_consumer=True)
    first = await ordered.next_msg(timeout=5)
    record_projection_progress(stream, first)
    assert _value("opspawn_projection_lag_events", {"stream": stream}) == 2
    assert _value("opspawn_projection_lag_seconds", {"stream": stream}) >= 0
    await ordered.next_msg(timeout=5)
    last = await ordered.next_msg(timeout=5)
    record_projection_progress(stream, last)
    assert _value("opspawn_projection_lag_events", {"stream": stream}) == 0
    assert _value("opspawn_projection_lag_seconds", {"stream": stream}) == 0
    await ordered.unsubscribe()


async def test_the_sampler_reports_projection_lag_and_consumer_backlogs(
    jetstream: JetStreamContext, subjects: Subjects
) -> None:
    await _append(jetstream, subjects, _story())
    for _ in range(3):
        await jetstream.publish(subjects.command("submit"), b"{}", stream=subjects.commands_stream)
    await jetstream.pull_subscribe(
        subjects.all_commands,
        durable=subjects.scheduler_commands_consumer,
        stream=subjects.commands_stream,
        config=scheduler_commands_consumer(subjects),
    )
    projected = 0
    sampler = BacklogSampler(jetstream, subjects, lambda: projected)

    await sampler.sample()
    events = {"stream": subjects.events_stream}
    commands = {
        "stream": subjects.commands_stream,
        "consumer": subjects.scheduler_commands_consumer,
    }
    assert _value("opspawn_projection_lag_events", events) == 3
    assert _value("opspawn_projection_lag_seconds", events) > 0
    assert _value("opspawn_consumer_pending_messages", commands) == 3
    assert _value("opspawn_consumer_ack_pending_messages", commands) == 0
    assert b"opspawn_consumer_pending_messages{consumer=" in generate_latest(REGISTRY)

    projected = 3
    await sampler.sample()
    assert _value("opspawn_projection_lag_events", events) == 0
    assert _value("opspawn_projection_lag_seconds", events) == 0


def test_projected_events_count_tasks_by_status() -> None:
    statuses = ("pending", "running", "completed")
    before = {status: _value("opspawn_tasks_total", {"status": status}) for status in statuses}
    count_projected([*_story(), None])
    after = {status: _value("opspawn_tasks_total", {"status": status}) for status in statuses}
    assert {status: after[status] - before[status] for status in statuses} == dict.fromkeys(
        statuses, 1
    )


def test_labels_from_task_input_are_bounded() -> None:
    tools = BoundedLabelValues(2)
    assert [tools(name) for name in ("a.x", "b.y", "a.x", "c.z", "d.w", "b.y")] == [
        "a.x",
        "b.y",
        "a.x",
        OTHER,
        OTHER,
        "b.y",
    ]


def test_tool_and_mcp_calls_are_measured_by_outcome() -> None:
    tool = f"metrics_test.tool_{uuid4().hex[:8]}"
    observe_tool_call(tool, True, 0.002)
    observe_tool_call(tool, False, 0.5)
    ok, failed = {"tool": tool, "outcome": "ok"}, {"tool": tool, "outcome": "error"}
    assert _value("opspawn_tool_call_duration_seconds_count", ok) == 1
    assert _value("opspawn_tool_call_duration_seconds_bucket", {**failed, "le": "0.25"}) == 0
    assert _value("opspawn_tool_call_duration_seconds_bucket", {**failed, "le": "0.5"}) == 1

    server = f"server_{uuid4().hex[:8]}"
    observe_mcp_call(server, None, 0.01)
    observe_mcp_call(server, "timeout", 60.0)
    observe_mcp_call(server, "timeout", 60.0)
    assert _value("opspawn_mcp_call_errors_total", {"server": server, "kind": "timeout"}) == 2
    answered = {"server": server, "outcome": "ok"}
    assert _value("opspawn_mcp_call_duration_seconds_count", answered) == 1
