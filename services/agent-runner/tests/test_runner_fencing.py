"""Attempts as fencing tokens: takeovers (resuming from the journal), a slow runner superseded,
cancels, retries, deadlines.

Runs the runner in-process with ``app.running`` on a real nats-server; a "crashed" or "slow"
runner is played by the test with the same contracts (a pull on the shared consumer, the real
:class:`~agent_runner.event_chain.EventChain`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from pydantic import JsonValue
from sqlalchemy import text

from agent_runner.app import running
from agent_runner.event_chain import AttemptSuperseded, EventChain
from agent_runner.settings import RunnerSettings
from mcp_proxy.config import ProxyConfig, StdioServer
from mcp_proxy.testing import ProxyClient, serve_proxy
from opspawn_contracts.events import (
    TERMINAL_EVENT_TYPES,
    StepCompleted,
    StepCompletedData,
    StepIntent,
    StepStarted,
    StepStartedData,
    TaskCancelled,
    TaskCancelledData,
    TaskCompleted,
    TaskFailed,
    TaskOptions,
    TaskStarted,
    TaskStartedData,
    TaskSubmitted,
    TaskSubmittedData,
    ToolCallIntent,
    ToolCallOutcome,
    utc_now,
)
from opspawn_contracts.streams import runner_submitted_consumer
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.task import runner_attempt
from opspawn_contracts.work import TaskAssignment
from opspawn_embedded import EmbeddedNats
from opspawn_messaging.event_log import EventLog, StoredEvent
from opspawn_messaging.streams import unsettled_runner_work
from opspawn_readmodel.database import create_engine
from opspawn_readmodel.projector import Delivered, TaskProjector

pytestmark = pytest.mark.integration

TOOLBOX = Path(__file__).resolve().parents[3] / "tests" / "mcp_servers" / "toolbox_server.py"


async def _eventually(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
    return value


SHORT_ACK_WAIT = 1.0


def _settings(
    nats: EmbeddedNats, subjects: Subjects, runner_id: str, **values: Any
) -> RunnerSettings:
    return RunnerSettings(
        nats_url=nats.url, subject_prefix=subjects.prefix, runner_id=runner_id, **values
    )


async def _crashing_runner(
    js: JetStreamContext, subjects: Subjects
) -> JetStreamContext.PullSubscription:
    """A runner of its own on the consumer of TaskSubmitted, which will take a task and stop
    heart-beating (its ``ack_wait`` shortened, as a runner's setting would)."""
    config = dataclasses.replace(runner_submitted_consumer(subjects), ack_wait=SHORT_ACK_WAIT)
    await js.add_consumer(subjects.events_stream, config)
    return await js.pull_subscribe(
        subjects.events_of_type("TaskSubmitted"),
        durable=config.durable_name,
        stream=subjects.events_stream,
    )


async def _submit(
    js: JetStreamContext,
    subjects: Subjects,
    plan: list[JsonValue],
    *,
    options: TaskOptions | None = None,
    timeout_seconds: float | None = None,
) -> TaskAssignment:
    """Append TaskSubmitted, as the scheduler does (the first attempt's work); that attempt."""
    options = options or TaskOptions(timeout_seconds=timeout_seconds)
    submitted = TaskSubmitted(
        task_id=uuid4(),
        correlation_id=uuid4(),
        data=TaskSubmittedData(task_type="agent_run", input_data={"plan": plan}, options=options),
    )
    sequence = await EventLog(js, subjects).append(submitted, expected_version=0)
    return TaskAssignment.first_attempt(submitted, sequence=sequence)


async def _history_with(
    js: JetStreamContext,
    subjects: Subjects,
    task_id: UUID,
    predicate: Callable[[list[str]], bool],
    timeout: float = 15,
) -> list[StoredEvent]:
    log = EventLog(js, subjects)

    async def matching() -> list[StoredEvent] | None:
        history = await log.task_history(task_id)
        return history if predicate([stored.event.event_type for stored in history]) else None

    found: list[StoredEvent] = await _eventually(matching, f"task {task_id}", timeout)
    return found


def _finished(types: list[str]) -> bool:
    return bool(types) and types[-1] in TERMINAL_EVENT_TYPES | {"TaskAttemptFailed"}


async def _work_acked(js: JetStreamContext, subjects: Subjects, timeout: float = 15) -> None:
    async def empty() -> bool:
        return await _unsettled_work(js, subjects) == 0

    await _eventually(empty, "every work item to be acknowledged", timeout)


async def _taken_over(
    nats: EmbeddedNats, js: JetStreamContext, subjects: Subjects, assignment: TaskAssignment
) -> list[StoredEvent]:
    """Run a runner until it has finished the task a dead runner left (its work acked); the
    task's history then."""
    async with running(_settings(nats, subjects, "runner-a", work_ack_wait_seconds=SHORT_ACK_WAIT)):
        history = await _history_with(js, subjects, assignment.task_id, _finished)
        await _work_acked(js, subjects)
    return history


def _sleep(seconds: float) -> list[JsonValue]:
    return [{"tool": "util.sleep", "args": {"seconds": seconds}, "timeout_seconds": 60}]


async def test_a_runner_takes_over_the_attempt_of_a_runner_that_stopped_heart_beating(
    nats_server: EmbeddedNats, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    crashed = await _crashing_runner(jetstream, subjects)
    assignment = await _submit(
        jetstream, subjects, [{"tool": "math.add", "args": {"a": 1, "b": 2}}]
    )
    (message,) = await crashed.fetch(1, timeout=5)
    log = EventLog(jetstream, subjects)
    await log.append(
        TaskStarted(
            task_id=assignment.task_id,
            correlation_id=assignment.correlation_id,
            causation_id=assignment.causation_id,
            data=TaskStartedData(attempt=1, runner_id="crashed"),
        )
    )

    history = await _taken_over(nats_server, jetstream, subjects, assignment)
    await crashed.unsubscribe()

    starts = [stored.event for stored in history if isinstance(stored.event, TaskStarted)]
    assert [(s.data.runner_id, s.data.attempt, s.data.supersedes_attempt) for s in starts] == [
        ("crashed", 1, None),
        ("runner-a", 2, 1),
    ]
    assert history[-1].event.event_type == "TaskCompleted"
    assert history[-1].event.data.attempt == 2
    assert message.metadata.num_delivered == 1


async def test_a_slow_runner_presumed_dead_is_recorded_as_superseded_and_changes_nothing(
    nats_server: EmbeddedNats,
    jetstream: JetStreamContext,
    subjects: Subjects,
    database_url: str,
) -> None:
    slow = await _crashing_runner(jetstream, subjects)
    assignment = await _submit(jetstream, subjects, _sleep(1.5))
    await slow.fetch(1, timeout=5)
    log = EventLog(jetstream, subjects)
    claimed = await log.task_history(assignment.task_id)
    chain = EventChain(log, assignment, after_sequence=claimed.last_sequence)
    started = TaskStarted(**chain.envelope(), data=TaskStartedData(attempt=1, runner_id="slow"))
    await chain.append(started)

    async with running(
        _settings(nats_server, subjects, "runner-a", work_ack_wait_seconds=SHORT_ACK_WAIT)
    ):
        await _history_with(
            jetstream, subjects, assignment.task_id, lambda types: types.count("TaskStarted") == 2
        )
        late = StepCompleted(
            **chain.envelope(),
            data=StepCompletedData(
                attempt=1,
                step_index=0,
                outcomes=[
                    ToolCallOutcome(
                        call_id="slow-call",
                        tool="util.sleep",
                        ok=True,
                        result="slept",
                        duration_ms=5000,
                    )
                ],
            ),
        )
        with pytest.raises(AttemptSuperseded, match="attempt 2 superseded attempt 1"):
            await chain.append(late)
        history = await _history_with(jetstream, subjects, assignment.task_id, _finished)
        await _work_acked(jetstream, subjects)
    await slow.unsubscribe()

    rows = [
        (stored.event.event_type, getattr(stored.event.data, "attempt", None)) for stored in history
    ]
    assert rows == [
        ("TaskSubmitted", None),
        ("TaskStarted", 1),
        ("TaskStarted", 2),
        ("StepCompleted", 1),
        ("TaskCompleted", 2),
    ]
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as connection:
            await TaskProjector("EVENTS").apply_batch(
                connection, [Delivered(stored.sequence, stored.event) for stored in history]
            )
        async with engine.connect() as connection:
            flags = (
                await connection.execute(
                    text("SELECT event_type, attempt, superseded FROM task_events ORDER BY 1")
                )
            ).all()
            output = await connection.scalar(text("SELECT output_data FROM tasks"))
    finally:
        await engine.dispose()
    assert [tuple(row) for row in flags if row[2]] == [("StepCompleted", 1, True)]
    assert output["steps"][0]["result"] != "slept"


async def test_a_cancel_stops_a_running_tool_call_at_once(
    nats_server: EmbeddedNats, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    assignment = await _submit(jetstream, subjects, _sleep(30))
    log = EventLog(jetstream, subjects)
    async with running(_settings(nats_server, subjects, "runner-a")):
        history = await _history_with(
            jetstream, subjects, assignment.task_id, lambda types: types[-1] == "TaskStarted"
        )
        cancelled_at = time.monotonic()
        await log.append(
            TaskCancelled(
                task_id=assignment.task_id,
                correlation_id=assignment.correlation_id,
                data=TaskCancelledData(reason="stop"),
            ),
            expected_version=history[-1].sequence,
        )
        await _work_acked(jetstream, subjects, timeout=10)
        stopped_after = time.monotonic() - cancelled_at

    assert stopped_after < 5
    history = await log.task_history(assignment.task_id)
    assert history[-1].event.event_type == "TaskCancelled"


async def test_a_retryable_failure_with_attempts_left_is_reported_for_the_scheduler(
    nats_server: EmbeddedNats, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    plan: list[JsonValue] = [{"tool": "math.divide", "args": {"a": 1, "b": 0}}]
    retryable = await _submit(jetstream, subjects, plan, options=TaskOptions(max_attempts=2))
    final = await _submit(jetstream, subjects, plan, options=TaskOptions(max_attempts=1))
    async with running(_settings(nats_server, subjects, "runner-a")):
        first = await _history_with(jetstream, subjects, retryable.task_id, _finished)
        second = await _history_with(jetstream, subjects, final.task_id, _finished)
        await _work_acked(jetstream, subjects)

    assert first[-1].event.event_type == "TaskAttemptFailed"
    assert "ZeroDivisionError" in first[-1].event.data.error_message
    assert second[-1].event.event_type == "TaskFailed"


async def test_the_runner_times_the_task_out_at_its_deadline(
    nats_server: EmbeddedNats, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    assignment = await _submit(jetstream, subjects, _sleep(30), timeout_seconds=1.0)
    started = utc_now()
    async with running(_settings(nats_server, subjects, "runner-a")):
        history = await _history_with(jetstream, subjects, assignment.task_id, _finished)
        await _work_acked(jetstream, subjects)

    timed_out = history[-1].event
    assert timed_out.event_type == "TaskTimedOut"
    assert timed_out.data.reason == "deadline of 1s exceeded during attempt 1"
    assert (timed_out.occurred_at - started).total_seconds() < 5
    # TaskTimedOut has no room for the step's outcomes: the plan's held outcomes go first.
    assert [stored.event.event_type for stored in history] == [
        "TaskSubmitted",
        "TaskStarted",
        "StepCompleted",
        "TaskTimedOut",
    ]
    interrupted = history[2].event
    assert isinstance(interrupted, StepCompleted)
    assert [outcome.ok for outcome in interrupted.data.outcomes] == [False]


async def test_a_copy_of_a_running_attempt_runs_nothing_and_is_finished_with_when_it_returns(
    nats_server: EmbeddedNats, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    """The same attempt queued again after the dedup window: its first delivery runs nothing and
    leaves the item; when it comes back (``ack_wait``) the task has completed and it is acked."""
    assignment = await _submit(jetstream, subjects, _sleep(1))
    settings = _settings(nats_server, subjects, "runner-a").model_copy(
        update={"work_ack_wait_seconds": 4.0}
    )
    async with running(settings):
        await _history_with(
            jetstream, subjects, assignment.task_id, lambda types: "TaskStarted" in types
        )
        await jetstream.publish(
            subjects.work("agent_run"),
            assignment.model_dump_json().encode(),
            stream=subjects.work_stream,
            headers={"Nats-Msg-Id": f"{assignment.msg_id()}:copy"},
        )
        history = await _history_with(jetstream, subjects, assignment.task_id, _finished)

        async def original_acked() -> bool:
            return await _unsettled_work(jetstream, subjects) <= 1

        await _eventually(original_acked, "the original work item to be acked", 3)
        await asyncio.sleep(0.5)
        left = await _unsettled_work(jetstream, subjects)
        await _work_acked(jetstream, subjects)

    assert left == 1, "the copy was acknowledged at its first delivery"
    assert [stored.event.event_type for stored in history].count("TaskStarted") == 1


async def test_a_first_delivery_of_an_attempt_whose_runner_is_gone_is_taken_over_later(
    nats_server: EmbeddedNats, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    """What a nats-server crash can do: the consumer forgets a delivery, so the work item of an
    attempt that started (and whose runner gave up on it) arrives again as a *first* delivery.
    It must not be acknowledged as a copy: the task would never finish."""
    assignment = await _submit(
        jetstream, subjects, [{"tool": "math.add", "args": {"a": 1, "b": 2}}]
    )
    await EventLog(jetstream, subjects).append(
        TaskStarted(
            task_id=assignment.task_id,
            correlation_id=assignment.correlation_id,
            causation_id=assignment.causation_id,
            data=TaskStartedData(attempt=1, runner_id="gone"),
        )
    )
    history = await _taken_over(nats_server, jetstream, subjects, assignment)

    starts = [stored.event for stored in history if isinstance(stored.event, TaskStarted)]
    assert [(s.data.runner_id, s.data.attempt, s.data.supersedes_attempt) for s in starts] == [
        ("gone", 1, None),
        ("runner-a", 2, 1),
    ]
    assert history[-1].event.event_type == "TaskCompleted"


async def _unsettled_work(js: JetStreamContext, subjects: Subjects) -> int:
    return await unsettled_runner_work(js, subjects)


def _intent(step_index: int, tool: str, arguments: dict[str, JsonValue]) -> StepIntent:
    return StepIntent(
        step_index=step_index,
        calls=[ToolCallIntent(call_id=f"plan-{step_index}", tool=tool, arguments=arguments)],
    )


Perform = Callable[[dict[str, Any]], Awaitable[JsonValue]]


async def _crash_after(
    js: JetStreamContext,
    subjects: Subjects,
    plan: list[dict[str, Any]],
    recorded_result: JsonValue = None,
    perform: Perform | None = None,
) -> TaskAssignment:
    """A task whose attempt 1 ran step 1 and recorded step 2 as started, then its runner died:
    the journal a takeover finds. ``perform`` makes each of the two calls for real (step 1's
    result is recorded, step 2's never is); without it nothing runs and step 1's recorded result
    is ``recorded_result``."""
    crashed = await _crashing_runner(js, subjects)
    assignment = await _submit(js, subjects, list[JsonValue](plan))
    await crashed.fetch(1, timeout=5)
    chain = EventChain(EventLog(js, subjects), assignment, after_sequence=assignment.after_sequence)
    first = _intent(0, plan[0]["tool"], plan[0]["args"])
    await chain.append(
        TaskStarted(
            **chain.envelope(),
            data=TaskStartedData(attempt=1, runner_id="crashed", first_step=first),
        )
    )
    result = await perform(plan[0]) if perform is not None else recorded_result
    outcome = ToolCallOutcome(
        call_id="plan-0", tool=plan[0]["tool"], ok=True, result=result, duration_ms=1.0
    )
    await chain.append(
        StepCompleted(
            **chain.envelope(),
            data=StepCompletedData(attempt=1, step_index=0, outcomes=[outcome]),
        )
    )
    second = _intent(1, plan[1]["tool"], plan[1]["args"])
    await chain.append(
        StepStarted(**chain.envelope(), data=StepStartedData(attempt=1, step=second))
    )
    if perform is not None:
        await perform(plan[1])  # and the runner dies before recording how it went
    await crashed.unsubscribe()
    return assignment


async def test_a_takeover_resumes_after_the_finished_steps_and_repeats_a_safe_unfinished_one(
    nats_server: EmbeddedNats, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    """Step 1 finished (its recorded result is not what ``math.add`` would return, so a re-run
    would show); step 2 was started, and ``math.multiply`` is safe to repeat."""
    plan: list[dict[str, Any]] = [
        {"tool": "math.add", "args": {"a": 1, "b": 2}},
        {"tool": "math.multiply", "args": {"a": 10, "b": 4}},
        {"tool": "math.subtract", "args": {"a": 50, "b": 8}},
    ]
    assignment = await _crash_after(jetstream, subjects, plan, recorded_result=1000)

    history = await _taken_over(nats_server, jetstream, subjects, assignment)

    takeover = [stored.event for stored in history if runner_attempt(stored.event) == 2]
    intents = []
    for event in takeover:
        if isinstance(event, TaskStarted) and event.data.first_step is not None:
            intents.append(event.data.first_step.step_index)
        elif isinstance(event, StepStarted):
            intents.append(event.data.step.step_index)
    assert intents == [1, 2]  # step 1 (index 0) is not run again
    completed = history[-1].event
    assert isinstance(completed, TaskCompleted)
    assert completed.data.attempt == 2
    assert completed.data.output_data == {
        "steps": [
            {"tool": "math.add", "args": {"a": 1, "b": 2}, "result": 1000},
            {"tool": "math.multiply", "args": {"a": 10, "b": 4}, "result": 40},
            {"tool": "math.subtract", "args": {"a": 50, "b": 8}, "result": 42},
        ],
        "result": 42,
    }


async def test_a_takeover_does_not_repeat_an_unfinished_call_that_is_not_safe_to_repeat(
    nats_server: EmbeddedNats, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    """A tool of an MCP server declares nothing here, so it is not safe to repeat: the task fails
    saying the outcome is unknown, naming the call, and the call is not made again."""
    plan: list[dict[str, Any]] = [
        {"tool": "math.add", "args": {"a": 1, "b": 2}},
        {"tool": "mailer.send", "args": {"to": "ops@example.com"}},
    ]
    assignment = await _crash_after(jetstream, subjects, plan, recorded_result=3)

    history = await _taken_over(nats_server, jetstream, subjects, assignment)

    failed = history[-1].event
    assert isinstance(failed, TaskFailed)
    assert failed.data.attempt == 2
    assert failed.data.error_message.startswith("outcome unknown: step 2 was started by an")
    assert 'mailer.send {"to": "ops@example.com"}' in failed.data.error_message
    assert failed.data.output_data == {
        "steps": [{"tool": "math.add", "args": {"a": 1, "b": 2}, "result": 3}]
    }
    takeover = [stored.event for stored in history if runner_attempt(stored.event) == 2]
    assert not any(isinstance(event, StepStarted) for event in takeover)
    assert all(
        not isinstance(event, TaskStarted) or event.data.first_step is None for event in takeover
    )


@pytest.fixture
async def toolbox_proxy(
    nats_server: EmbeddedNats, subjects: Subjects, nats_client: NatsClient
) -> AsyncIterator[Perform]:
    """The MCP proxy in-process with the toolbox server; calls made as a runner makes them."""
    config = ProxyConfig(servers={"toolbox": StdioServer(command="python", args=[str(TOOLBOX)])})
    async with serve_proxy(nats_server.url, subjects, config):
        client = ProxyClient(nats_client, subjects)

        async def perform(step: dict[str, Any]) -> JsonValue:
            server, tool = str(step["tool"]).split(".", 1)
            reply = await client.call(server, tool, step["args"])
            assert reply.ok, reply
            return reply.result

        yield perform


async def test_an_unfinished_mcp_call_not_safe_to_repeat_is_made_once_and_ends_outcome_unknown(
    nats_server: EmbeddedNats,
    jetstream: JetStreamContext,
    subjects: Subjects,
    toolbox_proxy: Perform,
    tmp_path: Path,
) -> None:
    """``append_line`` is annotated destructive and not idempotent: the takeover neither runs the
    recorded first step again nor repeats the unfinished second one."""
    lines = tmp_path / "lines.txt"
    plan: list[dict[str, Any]] = [
        {"tool": "toolbox.append_line", "args": {"path": str(lines), "line": "one"}},
        {"tool": "toolbox.append_line", "args": {"path": str(lines), "line": "two"}},
    ]
    assignment = await _crash_after(jetstream, subjects, plan, perform=toolbox_proxy)

    history = await _taken_over(nats_server, jetstream, subjects, assignment)

    failed = history[-1].event
    assert isinstance(failed, TaskFailed)
    assert failed.data.error_message.startswith("outcome unknown: step 2")
    assert "toolbox.append_line" in failed.data.error_message
    assert '"line": "two"' in failed.data.error_message
    assert lines.read_text() == "one\ntwo\n"  # each call reached the server exactly once


async def test_an_unfinished_mcp_call_declared_idempotent_is_repeated_and_the_task_completes(
    nats_server: EmbeddedNats,
    jetstream: JetStreamContext,
    subjects: Subjects,
    toolbox_proxy: Perform,
    tmp_path: Path,
) -> None:
    lines, store = tmp_path / "lines.txt", tmp_path / "store.json"
    calls = tmp_path / "store.json.calls"  # the server notes each call of put here
    plan: list[dict[str, Any]] = [
        {"tool": "toolbox.append_line", "args": {"path": str(lines), "line": "one"}},
        {"tool": "toolbox.put", "args": {"path": str(store), "key": "k", "value": "v"}},
    ]
    assignment = await _crash_after(jetstream, subjects, plan, perform=toolbox_proxy)

    history = await _taken_over(nats_server, jetstream, subjects, assignment)

    completed = history[-1].event
    assert isinstance(completed, TaskCompleted)
    assert completed.data.output_data["result"] == "k=v"
    assert lines.read_text() == "one\n"  # the finished step was not run again
    assert calls.read_text() == "k=v\nk=v\n"  # the unfinished one was repeated
