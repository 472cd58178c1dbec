"""Retries, deadlines, cancellation, a killed runner and poison messages, on the whole system.

Every service runs as its own process (``LocalSystem``, as ``opspawn up`` runs them) on a real
nats-server and PostgreSQL, with timings shortened through environment variables: runners must
heart-beat every 2 s (``ack_wait``), retries back off from 0.2 s, deadlines are checked every
0.2 s. Waiting is always polling with a bounded deadline.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from nats.js import JetStreamContext

from opspawn_cli.demo import wait_terminal
from opspawn_cli.system import LocalSystem
from opspawn_contracts.dead_letters import DeadLetterSource
from opspawn_contracts.events import (
    StepStarted,
    TaskAttemptFailed,
    TaskCompleted,
    TaskRetryScheduled,
    TaskStarted,
    TaskTimedOut,
)
from opspawn_contracts.subjects import Subjects
from opspawn_embedded import EmbeddedNats
from opspawn_messaging.dead_letters import DeadLetters
from opspawn_messaging.event_log import EventLog, StoredEvent
from opspawn_messaging.streams import unsettled_runner_work
from tests.conftest import SystemSettings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

FAST_TIMINGS = {
    "OPSPAWN_WORK_ACK_WAIT_SECONDS": "2",
    "OPSPAWN_RETRY_BASE_DELAY_SECONDS": "0.2",
    "OPSPAWN_RETRY_MAX_DELAY_SECONDS": "1",
    "OPSPAWN_DEADLINE_CHECK_INTERVAL_SECONDS": "0.2",
    "OPSPAWN_SHUTDOWN_GRACE_SECONDS": "1",
}


@pytest.fixture
async def fast_system(
    nats_server: EmbeddedNats,
    system_settings: SystemSettings,
) -> AsyncIterator[LocalSystem]:
    settings = system_settings(nats_server.url)
    async with LocalSystem(settings, service_env=FAST_TIMINGS) as running:
        yield running


@pytest.fixture
async def rest(fast_system: LocalSystem) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fast_system.rest_url, timeout=10) as client:
        yield client


async def _submit(rest: httpx.AsyncClient, plan: list[dict[str, Any]], **options: Any) -> UUID:
    response = await rest.post(
        "/v1/tasks",
        json={"task_type": "agent_run", "input_data": {"plan": plan}, "options": options},
    )
    assert response.status_code == 202, response.text
    return UUID(response.json()["task_id"])


async def _eventually(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.05)
    return value


async def _history_until(
    jetstream: JetStreamContext,
    subjects: Subjects,
    task_id: UUID,
    done: Callable[[list[StoredEvent]], bool],
    what: str,
) -> list[StoredEvent]:
    log = EventLog(jetstream, subjects)

    async def history() -> list[StoredEvent] | None:
        found = await log.task_history(task_id)
        return found if done(found) else None

    result: list[StoredEvent] = await _eventually(history, what)
    return result


async def test_a_tool_that_fails_twice_completes_on_the_third_attempt(
    rest: httpx.AsyncClient, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    key = uuid.uuid4().hex
    plan = [{"tool": "toolbox.flaky", "args": {"key": key, "failures": 2}}]
    task_id = await _submit(rest, plan, max_attempts=3)

    task = await wait_terminal(rest, str(task_id), timeout=60)

    assert task["status"] == "completed", task
    assert task["output_data"]["result"] == "succeeded at call 3"
    history = [stored.event for stored in await EventLog(jetstream, subjects).task_history(task_id)]
    started = [event.data.attempt for event in history if isinstance(event, TaskStarted)]
    failed = [event for event in history if isinstance(event, TaskAttemptFailed)]
    retries = [event for event in history if isinstance(event, TaskRetryScheduled)]
    [completed] = [event for event in history if isinstance(event, TaskCompleted)]
    assert started == [1, 2, 3]
    assert [event.data.attempt for event in failed] == [1, 2]
    assert [event.data.attempt for event in retries] == [2, 3]
    for number, retry in enumerate(retries, start=1):
        assert f"attempt {number} failed" in retry.data.reason
        assert f"flaky failure {number} of 2" in retry.data.reason
        assert 0 < retry.data.delay_seconds <= 0.2 * 2 ** (number - 1)
        assert retry.data.not_before > retry.occurred_at
        assert retry.causation_id == failed[number - 1].event_id
    assert completed.data.attempt == 3


async def test_a_task_past_its_deadline_fails_with_a_timeout(
    rest: httpx.AsyncClient, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    plan = [{"tool": "toolbox.slow", "args": {"seconds": 30}, "timeout_seconds": 60}]
    started = time.monotonic()
    task_id = await _submit(rest, plan, timeout_seconds=1.5)

    task = await wait_terminal(rest, str(task_id), timeout=30)

    assert task["status"] == "failed", task
    assert "deadline of 1.5s exceeded" in task["error_message"]
    assert time.monotonic() - started < 15
    history = [stored.event for stored in await EventLog(jetstream, subjects).task_history(task_id)]
    [timed_out] = [event for event in history if isinstance(event, TaskTimedOut)]
    assert timed_out.data.timeout_seconds == 1.5
    assert history[-1] == timed_out


async def test_cancelling_a_running_task_stops_its_runner_mid_call(
    rest: httpx.AsyncClient, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    plan = [{"tool": "util.sleep", "args": {"seconds": 30}, "timeout_seconds": 60}]
    task_id = await _submit(rest, plan)
    await _history_until(
        jetstream,
        subjects,
        task_id,
        lambda history: history[-1].event.event_type == "TaskStarted",
        "the sleep to start (its intent is recorded with the claim)",
    )
    cancelled_at = time.monotonic()

    response = await rest.post(f"/v1/tasks/{task_id}/cancel", json={"reason": "no longer needed"})
    assert response.status_code == 202, response.text
    task = await wait_terminal(rest, str(task_id), timeout=30)

    assert (task["status"], task["error_message"]) == ("cancelled", "no longer needed")

    async def work_acknowledged() -> bool:
        return await unsettled_runner_work(jetstream, subjects) == 0

    await _eventually(work_acknowledged, "the runner to give up the cancelled task", timeout=10)
    assert time.monotonic() - cancelled_at < 10
    history = await EventLog(jetstream, subjects).task_history(task_id)
    assert history[-1].event.event_type == "TaskCancelled"


@dataclass(frozen=True)
class Killed:
    task_id: UUID
    victim: str
    task: dict[str, Any]
    """The task as the REST API shows it once it ended elsewhere."""


async def _kill_its_runner(
    system: LocalSystem,
    rest: httpx.AsyncClient,
    jetstream: JetStreamContext,
    subjects: Subjects,
    plan: list[dict[str, Any]],
    *,
    when: Callable[[list[StoredEvent]], bool],
    what: str,
) -> Killed:
    """Submit ``plan``, SIGKILL the runner of its first attempt once ``when`` holds (given the
    task's history), and wait for the task to end elsewhere."""
    task_id = await _submit(rest, plan)
    history = await _history_until(jetstream, subjects, task_id, when, what)
    [first] = [stored.event for stored in history if isinstance(stored.event, TaskStarted)]
    victim = f"agent-{first.data.runner_id}"
    assert system.supervisor is not None
    system.supervisor.kill(victim)
    task: dict[str, Any] = await wait_terminal(rest, str(task_id), timeout=60)
    return Killed(task_id, victim, task)


async def test_a_runner_killed_mid_task_is_replaced_and_the_task_completes_once(
    fast_system: LocalSystem,
    rest: httpx.AsyncClient,
    jetstream: JetStreamContext,
    subjects: Subjects,
) -> None:
    plan: list[dict[str, Any]] = [
        {"tool": "util.sleep", "args": {"seconds": 3}, "timeout_seconds": 30},
        {"tool": "math.add", "args": {"a": 20, "b": 22}},
    ]
    killed = await _kill_its_runner(
        fast_system,
        rest,
        jetstream,
        subjects,
        plan,
        when=lambda history: history[-1].event.event_type == "TaskStarted",
        what="the first step to start (its intent is recorded with the claim)",
    )
    task_id, task = killed.task_id, killed.task
    assert fast_system.supervisor is not None

    assert task["status"] == "completed", task
    assert task["output_data"]["result"] == 42
    events = [stored.event for stored in await EventLog(jetstream, subjects).task_history(task_id)]
    starts = [event for event in events if isinstance(event, TaskStarted)]
    assert [(event.data.attempt, event.data.supersedes_attempt) for event in starts] == [
        (1, None),
        (2, 1),
    ]
    [completed] = [event for event in events if isinstance(event, TaskCompleted)]
    assert completed.data.attempt == 2
    assert fast_system.supervisor.restarts(killed.victim) == 1


async def test_a_runner_killed_during_step_3_of_4_resumes_there_and_runs_steps_1_and_2_once(
    fast_system: LocalSystem,
    rest: httpx.AsyncClient,
    jetstream: JetStreamContext,
    subjects: Subjects,
    tmp_path: Path,
) -> None:
    """Each ``append_line`` call adds a line to a file (through the MCP proxy and the toolbox
    server), so the file shows which steps ran how often. Step 3 sleeps, is safe to repeat, and
    is where the runner dies; the takeover goes on from the journal."""
    lines = tmp_path / "steps.txt"

    def append(line: str) -> dict[str, Any]:
        return {"tool": "toolbox.append_line", "args": {"path": str(lines), "line": line}}

    plan = [
        append("step 1"),
        append("step 2"),
        {"tool": "util.sleep", "args": {"seconds": 3}, "timeout_seconds": 30},
        append("step 4"),
    ]
    killed = await _kill_its_runner(
        fast_system,
        rest,
        jetstream,
        subjects,
        plan,
        when=lambda history: any(
            isinstance(stored.event, StepStarted) and stored.event.data.step.step_index == 2
            for stored in history
        ),
        what="step 3 to start",
    )
    task_id, task = killed.task_id, killed.task

    assert task["status"] == "completed", task
    assert lines.read_text() == "step 1\nstep 2\nstep 4\n"
    assert [step["result"] for step in task["output_data"]["steps"]] == [1, 2, 3, 3]
    events = [stored.event for stored in await EventLog(jetstream, subjects).task_history(task_id)]
    [takeover] = [e for e in events if isinstance(e, TaskStarted) and e.data.attempt == 2]
    assert takeover.data.supersedes_attempt == 1
    assert takeover.data.first_step is not None
    assert takeover.data.first_step.step_index == 2  # step 3: nothing before it runs again


async def test_a_runner_killed_mid_call_of_a_tool_not_safe_to_repeat_ends_outcome_unknown(
    fast_system: LocalSystem,
    rest: httpx.AsyncClient,
    jetstream: JetStreamContext,
    subjects: Subjects,
    tmp_path: Path,
) -> None:
    """``append_line`` (destructive, not idempotent) has appended and is still running when its
    runner dies: the takeover does not call it again."""
    lines = tmp_path / "lines.txt"
    plan: list[dict[str, Any]] = [
        {"tool": "toolbox.append_line", "args": {"path": str(lines), "line": "one"}},
        {
            "tool": "toolbox.append_line",
            "args": {"path": str(lines), "line": "two", "then_wait_seconds": 5},
        },
    ]

    task = (
        await _kill_its_runner(
            fast_system,
            rest,
            jetstream,
            subjects,
            plan,
            when=lambda _: lines.exists() and "two" in lines.read_text(),
            what="step 2's call to take effect (it is still running)",
        )
    ).task

    assert task["status"] == "failed", task
    assert task["error_message"].startswith("outcome unknown: step 2"), task
    assert "toolbox.append_line" in task["error_message"]
    assert lines.read_text() == "one\ntwo\n"  # the server saw each call exactly once


async def test_a_runner_killed_mid_call_of_an_idempotent_tool_has_it_repeated_and_completes(
    fast_system: LocalSystem,
    rest: httpx.AsyncClient,
    jetstream: JetStreamContext,
    subjects: Subjects,
    tmp_path: Path,
) -> None:
    lines, store = tmp_path / "lines.txt", tmp_path / "store.json"
    calls = tmp_path / "store.json.calls"
    plan: list[dict[str, Any]] = [
        {"tool": "toolbox.append_line", "args": {"path": str(lines), "line": "one"}},
        {
            "tool": "toolbox.put",
            "args": {"path": str(store), "key": "k", "value": "v", "then_wait_seconds": 3},
        },
    ]

    task = (
        await _kill_its_runner(
            fast_system,
            rest,
            jetstream,
            subjects,
            plan,
            when=lambda _: calls.exists(),
            what="step 2's call to take effect (it is still running)",
        )
    ).task

    assert task["status"] == "completed", task
    assert task["output_data"]["result"] == "k=v"
    assert lines.read_text() == "one\n"
    assert calls.read_text() == "k=v\nk=v\n"  # repeated once, by the takeover


async def test_malformed_messages_are_dead_lettered_and_the_next_task_completes(
    rest: httpx.AsyncClient, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    command = await jetstream.publish(
        subjects.command("submit"),
        b'{"command_type": "submit", "task_id": "not-a-uuid"}',
        stream=subjects.commands_stream,
    )
    work = await jetstream.publish(
        subjects.work("agent_run"), b"\x00 not a work item", stream=subjects.work_stream
    )

    task_id = await _submit(rest, [{"tool": "math.multiply", "args": {"a": 6, "b": 7}}])
    task = await wait_terminal(rest, str(task_id), timeout=30)

    assert (task["status"], task["output_data"]["result"]) == ("completed", 42)
    letters = DeadLetters(jetstream, subjects, service="test")

    async def both_kept() -> list[Any] | None:
        entries = await letters.entries()
        return entries if len(entries) == 2 else None

    entries = await _eventually(both_kept, "two dead letters")
    by_source = {entry.source: entry for entry in entries}
    assert by_source[DeadLetterSource.COMMANDS].source_sequence == command.seq
    assert "not a valid command" in by_source[DeadLetterSource.COMMANDS].reason
    assert "task_id" in by_source[DeadLetterSource.COMMANDS].reason
    assert by_source[DeadLetterSource.COMMANDS].service == "scheduler"
    assert by_source[DeadLetterSource.WORK].source_sequence == work.seq
    assert "not a valid TaskAssignment" in by_source[DeadLetterSource.WORK].reason
    assert by_source[DeadLetterSource.WORK].payload == b"\x00 not a work item"
