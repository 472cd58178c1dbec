"""A task assignment through the runner to its events, on a real nats-server.

Each test starts the runner in-process (``app.run`` with a stop event), appends a TaskSubmitted
the way the scheduler does (a task's first attempt is its TaskSubmitted), and reads the task's
history back from the events stream.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID, uuid4

import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import JsonValue

from agent_runner.app import run
from agent_runner.execution import NO_PLAN_MESSAGE
from agent_runner.settings import RunnerSettings
from opspawn_contracts.events import (
    TERMINAL_EVENT_TYPES,
    TaskCancelled,
    TaskCancelledData,
    TaskFailed,
    TaskSubmitted,
    TaskSubmittedData,
)
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.task import fold
from opspawn_embedded import EmbeddedNats
from opspawn_messaging.event_log import EventLog, StoredEvent
from opspawn_messaging.streams import unsettled_runner_work

pytestmark = pytest.mark.integration

RUNNER_ID = "runner-under-test"


async def _eventually(check: Any, what: str, timeout: float = 15.0) -> Any:
    """Poll ``await check()`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def runner(
    nats_server: EmbeddedNats, jetstream: JetStreamContext, subjects: Subjects
) -> AsyncIterator[RunnerSettings]:
    settings = RunnerSettings(
        nats_url=nats_server.url,
        subject_prefix=subjects.prefix,
        runner_id=RUNNER_ID,
        mcp_request_timeout_seconds=2,
        shutdown_grace_seconds=1,
    )
    stop = asyncio.Event()
    service = asyncio.create_task(run(settings, stop))

    async def ready() -> bool:
        if service.done():
            service.result()
        try:
            await jetstream.consumer_info(subjects.work_stream, subjects.runner_work_consumer)
        except NotFoundError:
            return False
        return True

    await _eventually(ready, "the runner's durable consumer")
    yield settings
    stop.set()
    await asyncio.wait_for(service, timeout=15)


async def submit(
    js: JetStreamContext, subjects: Subjects, input_data: dict[str, JsonValue]
) -> tuple[UUID, TaskSubmitted]:
    """Do what the scheduler does: append TaskSubmitted, which is the first attempt's work."""
    task_id = uuid4()
    submitted = TaskSubmitted(
        task_id=task_id,
        correlation_id=uuid4(),
        data=TaskSubmittedData(task_type="agent_run", input_data=input_data),
    )
    await EventLog(js, subjects).append(submitted, expected_version=0)
    return task_id, submitted


async def finished_history(
    js: JetStreamContext, subjects: Subjects, task_id: UUID
) -> list[StoredEvent]:
    """The task's history once it ends in a terminal event and its work message is acked."""
    log = EventLog(js, subjects)

    async def terminal() -> list[StoredEvent] | None:
        history = await log.task_history(task_id)
        return history if history and history[-1].event.event_type in TERMINAL_EVENT_TYPES else None

    history: list[StoredEvent] = await _eventually(terminal, f"task {task_id} to finish")

    async def acked() -> bool:
        return await _unsettled_work(js, subjects) == 0

    await _eventually(acked, "the work message to be acknowledged")
    return history


def summary(history: list[StoredEvent]) -> list[tuple[str, dict[str, Any]]]:
    """Event types and data as stored, each call's ``duration_ms`` left out (checked to be a
    duration)."""
    rows: list[tuple[str, dict[str, Any]]] = []
    for stored in history:
        data = stored.event.data.model_dump(mode="json", exclude_none=False)
        data = {key: value for key, value in data.items() if value is not None}
        for outcome in [*data.get("outcomes", []), *data.get("last_step", {}).get("outcomes", [])]:
            assert outcome.pop("duration_ms") >= 0
        rows.append((stored.event.event_type, data))
    return rows


def assert_one_chain(history: list[StoredEvent], submitted: TaskSubmitted) -> None:
    """Every event after TaskSubmitted is caused by the one before and shares the correlation."""
    events = [stored.event for stored in history]
    assert events[0] == submitted
    for previous, event in itertools.pairwise(events):
        assert event.causation_id == previous.event_id
        assert event.correlation_id == submitted.correlation_id


def _intent(step: int, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "step_index": step,
        "calls": [{"call_id": f"plan-{step}", "tool": tool, "arguments": arguments}],
    }


def claim_of(tool: str | None = None, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    """Attempt 1's claim, with the first step's intent when it has one."""
    data: dict[str, Any] = {"attempt": 1, "runner_id": RUNNER_ID}
    if tool is not None:
        data["first_step"] = _intent(0, tool, arguments or {})
    return data


def started(tool: str | None = None, arguments: dict[str, Any] | None = None) -> tuple[str, Any]:
    """TaskStarted of attempt 1, with the first step's intent when it has one."""
    return ("TaskStarted", claim_of(tool, arguments))


def step_started(step: int, tool: str, arguments: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return ("StepStarted", {"attempt": 1, "step": _intent(step, tool, arguments)})


def outcomes(
    step: int, tool: str, *, result: Any = None, error: str | None = None
) -> dict[str, Any]:
    """Step ``step``'s one call's outcome, as a StepCompleted or a terminal ``last_step``
    stores it."""
    outcome = {
        "call_id": f"plan-{step}",
        "tool": tool,
        "ok": error is None,
        "result": result,
        "error": error,
    }
    return {"step_index": step, "outcomes": [outcome]}


def step_completed(
    step: int, tool: str, *, result: Any = None, error: str | None = None
) -> tuple[str, dict[str, Any]]:
    return ("StepCompleted", {"attempt": 1, **outcomes(step, tool, result=result, error=error)})


ADD: dict[str, JsonValue] = {"tool": "math.add", "args": {"a": 2, "b": 3}}
ADD_STEP = {"tool": "math.add", "args": {"a": 2, "b": 3}, "result": 5}


async def test_a_two_step_plan_completes_with_every_step_recorded(
    runner: RunnerSettings, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    multiply: dict[str, JsonValue] = {"tool": "math.multiply", "args": {"a": 5, "b": 4}}
    input_data: dict[str, JsonValue] = {"goal": "add then multiply", "plan": [ADD, multiply]}
    task_id, submitted = await submit(jetstream, subjects, input_data)

    history = await finished_history(jetstream, subjects, task_id)

    assert summary(history)[1:] == [
        started("math.add", {"a": 2, "b": 3}),
        step_completed(0, "math.add", result=5),
        step_started(1, "math.multiply", {"a": 5, "b": 4}),
        (
            "TaskCompleted",
            {
                "attempt": 1,
                "output_data": {
                    "steps": [
                        ADD_STEP,
                        {"tool": "math.multiply", "args": {"a": 5, "b": 4}, "result": 20},
                    ],
                    "result": 20,
                },
                "last_step": outcomes(1, "math.multiply", result=20),
            },
        ),
    ]
    assert_one_chain(history, submitted)


NOOP: dict[str, JsonValue] = {"tool": "util.noop", "args": {}}
NOOP_STEP: dict[str, JsonValue] = {"tool": "util.noop", "args": {}, "result": None}


async def test_a_one_step_plan_of_inline_calls_is_one_event_with_its_claim_and_step(
    runner: RunnerSettings, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    """``util.noop`` runs inline (it can change nothing outside the run), so its step runs
    before anything is recorded, and the attempt's claim, intent and outcome are one write."""
    task_id, submitted = await submit(jetstream, subjects, {"plan": [NOOP]})

    history = await finished_history(jetstream, subjects, task_id)

    assert summary(history)[1:] == [
        (
            "TaskCompleted",
            {
                "attempt": 1,
                "output_data": {"steps": [NOOP_STEP], "result": None},
                "last_step": outcomes(0, "util.noop"),
                "started": claim_of("util.noop"),
            },
        ),
    ]
    assert history[1].event.schema_version == 2
    assert_one_chain(history, submitted)
    state = fold(stored.event for stored in history)
    assert state is not None
    assert (state.status, state.attempt) == ("completed", 1)


async def test_an_inline_first_step_is_recorded_before_a_second_step_runs(
    runner: RunnerSettings, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    """Only an attempt that ends right after its inline first step is one write: a further step
    (here a sandboxed one) gets the claim, the first step and its own intent stored first."""
    task_id, submitted = await submit(jetstream, subjects, {"plan": [NOOP, ADD]})

    history = await finished_history(jetstream, subjects, task_id)

    assert summary(history)[1:] == [
        started("util.noop"),
        step_completed(0, "util.noop"),
        step_started(1, "math.add", {"a": 2, "b": 3}),
        (
            "TaskCompleted",
            {
                "attempt": 1,
                "output_data": {"steps": [NOOP_STEP, ADD_STEP], "result": 5},
                "last_step": outcomes(1, "math.add", result=5),
            },
        ),
    ]
    assert_one_chain(history, submitted)


async def test_a_first_attempt_claims_right_after_its_task_submitted_and_runs_once(
    runner: RunnerSettings, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    """No work item is stored for a first attempt: the runner takes the TaskSubmitted itself and
    claims at its sequence, without reading the history first."""
    task_id, submitted = await submit(jetstream, subjects, {"plan": [ADD]})

    history = await finished_history(jetstream, subjects, task_id)

    assert [event_type for event_type, _ in summary(history)] == [
        "TaskSubmitted",
        "TaskStarted",
        "TaskCompleted",
    ]
    assert history[1].sequence > history[0].sequence
    assert_one_chain(history, submitted)
    assert (await jetstream.stream_info(subjects.work_stream)).state.messages == 0


async def test_a_task_cancelled_before_a_runner_took_it_does_not_run(
    nats_server: EmbeddedNats, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    """The history no longer ends at the TaskSubmitted (TaskCancelled came after it); the runner
    reads the history, finds the task finished and acknowledges its work without running it."""
    task_id, submitted = await submit(jetstream, subjects, {"plan": [ADD]})
    cancelled = TaskCancelled(
        task_id=task_id,
        correlation_id=submitted.correlation_id,
        causation_id=submitted.event_id,
        data=TaskCancelledData(reason="changed my mind"),
    )
    log = EventLog(jetstream, subjects)
    await log.append(cancelled, expected_version=(await log.task_history(task_id))[-1].sequence)
    settings = RunnerSettings(
        nats_url=nats_server.url, subject_prefix=subjects.prefix, runner_id=RUNNER_ID
    )
    stop = asyncio.Event()
    service = asyncio.create_task(run(settings, stop))

    async def acked() -> bool:
        if service.done():
            service.result()
        return await _unsettled_work(jetstream, subjects) == 0

    await _eventually(acked, "the TaskSubmitted to be acknowledged")
    stop.set()
    await asyncio.wait_for(service, timeout=15)
    assert [stored.event.event_type for stored in await log.task_history(task_id)] == [
        "TaskSubmitted",
        "TaskCancelled",
    ]


@pytest.mark.parametrize(
    ("step", "error"),
    [
        ({"tool": "math.pow", "args": {"a": 2, "b": 8}}, "unknown tool 'math.pow'"),
        (
            {"tool": "nope.tool", "args": {}},
            "MCP server 'nope' is not available: no proxy answered",
        ),
    ],
    ids=["unknown-local-tool", "no-mcp-proxy"],
)
async def test_a_tool_nobody_provides_fails_the_task(
    runner: RunnerSettings,
    jetstream: JetStreamContext,
    subjects: Subjects,
    step: dict[str, JsonValue],
    error: str,
) -> None:
    task_id, submitted = await submit(jetstream, subjects, {"plan": [step]})

    history = await finished_history(jetstream, subjects, task_id)

    tool = str(step["tool"])
    assert summary(history)[1:] == [
        started(tool, {"a": 2, "b": 8} if tool == "math.pow" else {}),
        (
            "TaskFailed",
            {
                "attempt": 1,
                "error_message": f"step 1 ({tool}) failed: {error}",
                "output_data": {"steps": []},
                "last_step": outcomes(0, tool, error=error),
            },
        ),
    ]
    assert_one_chain(history, submitted)


async def test_divide_by_zero_fails_at_its_step_and_keeps_the_steps_before(
    runner: RunnerSettings, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    divide: dict[str, JsonValue] = {"tool": "math.divide", "args": {"a": 1, "b": 0}}
    task_id, submitted = await submit(jetstream, subjects, {"plan": [ADD, divide]})

    history = await finished_history(jetstream, subjects, task_id)

    assert summary(history)[1:] == [
        started("math.add", {"a": 2, "b": 3}),
        step_completed(0, "math.add", result=5),
        step_started(1, "math.divide", {"a": 1, "b": 0}),
        (
            "TaskFailed",
            {
                "attempt": 1,
                "error_message": "step 2 (math.divide) failed: ZeroDivisionError: division by zero",
                "output_data": {"steps": [ADD_STEP]},
                "last_step": outcomes(
                    1, "math.divide", error="ZeroDivisionError: division by zero"
                ),
            },
        ),
    ]
    assert_one_chain(history, submitted)


async def test_a_step_past_its_timeout_is_killed_and_fails_the_task(
    runner: RunnerSettings, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    sleep: dict[str, JsonValue] = {
        "tool": "util.sleep",
        "args": {"seconds": 5},
        "timeout_seconds": 0.3,
    }
    task_id, submitted = await submit(jetstream, subjects, {"plan": [sleep]})

    history = await finished_history(jetstream, subjects, task_id)

    assert summary(history)[1:] == [
        started("util.sleep", {"seconds": 5}),
        (
            "TaskFailed",
            {
                "attempt": 1,
                "error_message": "step 1 (util.sleep) failed: timed out after 0.3s",
                "output_data": {"steps": []},
                "last_step": outcomes(0, "util.sleep", error="timed out after 0.3s"),
            },
        ),
    ]
    failed = history[2].event
    assert isinstance(failed, TaskFailed)
    assert failed.data.last_step is not None
    assert 300 <= failed.data.last_step.outcomes[0].duration_ms < 3000
    assert_one_chain(history, submitted)


async def test_a_task_without_a_plan_fails_saying_what_to_provide(
    runner: RunnerSettings, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    task_id, submitted = await submit(jetstream, subjects, {"goal": "add two and three"})

    history = await finished_history(jetstream, subjects, task_id)

    assert summary(history)[1:] == [
        (
            "TaskFailed",
            {
                "attempt": 1,
                "error_message": NO_PLAN_MESSAGE,
                "output_data": {"steps": []},
                "started": claim_of(),
            },
        ),
    ]
    assert "provide input_data.plan" in NO_PLAN_MESSAGE
    assert_one_chain(history, submitted)


async def test_an_invalid_work_message_is_terminated_and_the_runner_goes_on(
    runner: RunnerSettings,
    jetstream: JetStreamContext,
    subjects: Subjects,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="agent_runner")
    for payload in (b"{not json", b'{"task_id": "not-a-uuid", "input_data": {}}'):
        await jetstream.publish(subjects.work("agent_run"), payload, stream=subjects.work_stream)
    task_id, _ = await submit(jetstream, subjects, {"plan": [ADD]})

    history = await finished_history(jetstream, subjects, task_id)

    assert history[-1].event.event_type == "TaskCompleted"
    reasons = [
        record.getMessage()
        for record in caplog.records
        if "not a valid TaskAssignment" in record.getMessage()
    ]
    assert len(reasons) == 2
    assert "(input): Invalid JSON" in reasons[0]
    assert "task_id: Input should be a valid UUID" in reasons[1]
    assert "correlation_id: Field required" in reasons[1]
    info = await jetstream.consumer_info(subjects.work_stream, subjects.runner_work_consumer)
    assert (info.num_ack_pending, info.num_redelivered) == (0, 0)


async def _unsettled_work(js: JetStreamContext, subjects: Subjects) -> int:
    return await unsettled_runner_work(js, subjects)


async def test_an_invalid_task_submitted_is_dropped_without_a_dead_letter_and_the_runner_goes_on(
    runner: RunnerSettings,
    jetstream: JetStreamContext,
    subjects: Subjects,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not a task, so nothing to run; the event stays in the stream, and the projection (not
    the runner) keeps its dead letter."""
    caplog.set_level(logging.ERROR, logger="agent_runner")
    bogus = uuid4()
    await jetstream.publish(
        subjects.event(bogus, "TaskSubmitted"),
        b'{"not": "an event"}',
        stream=subjects.events_stream,
    )
    task_id, _ = await submit(jetstream, subjects, {"plan": [ADD]})

    history = await finished_history(jetstream, subjects, task_id)

    assert history[-1].event.event_type == "TaskCompleted"
    [dropped] = [
        record.getMessage()
        for record in caplog.records
        if "not a valid TaskSubmitted" in record.getMessage()
    ]
    assert dropped.startswith("dropped submitted task at sequence ")
    assert (await jetstream.stream_info(subjects.dead_letters_stream)).state.messages == 0
