"""Synthetic task histories with every event type, for the projection benchmark and replay tests.

Each story is what the services would have written for one task: submitted, then completed
(in one or more attempts, some taken over from a runner presumed dead, whose late event is then
superseded), failed, cancelled, timed out, or still running. Completed stories are recorded as
runners record attempts today (TaskStarted v2 with the first step, StepStarted, StepCompleted); the
others with the per-call records of earlier releases, so a replay reads both. :func:`append_stories`
stores them the way the services do (optimistic appends, one chain per task), many tasks at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from opspawn_contracts import events as e
from opspawn_contracts.events import Event, TaskOptions
from opspawn_messaging.event_log import EventLog

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SCENARIOS = ("completed", "retried", "taken_over", "failed", "cancelled", "timed_out", "running")


class _Story:
    def __init__(self, index: int) -> None:
        self.task_id = uuid4()
        self.correlation = uuid4()
        self.index = index
        self.second = 0
        self.events: list[Event] = []

    def add(self, kind: type[Any], data: Any) -> None:
        self.second += 1
        self.events.append(
            kind(
                task_id=self.task_id,
                correlation_id=self.correlation,
                causation_id=self.events[-1].event_id if self.events else None,
                occurred_at=T0 + timedelta(minutes=self.index, seconds=self.second),
                data=data,
            )
        )

    def steps(self, attempt: int, count: int, *, fail_last: bool = False) -> None:
        for step in range(count):
            call = {"attempt": attempt, "step_index": step, "call_id": f"c{attempt}-{step}"}
            self.add(
                e.ToolCallRequested,
                e.ToolCallRequestedData(**call, tool="math.add", arguments={"a": step, "b": 1}),
            )
            failed = fail_last and step == count - 1
            self.add(
                e.ToolCallCompleted,
                e.ToolCallCompletedData(
                    **call,
                    tool="math.add",
                    ok=not failed,
                    result=None if failed else step + 1,
                    error="boom" if failed else None,
                    duration_ms=0.5 + step,
                ),
            )
            if not failed:
                self.add(
                    e.AgentStepCompleted,
                    e.AgentStepCompletedData(
                        attempt=attempt, step_index=step, tool_call_ids=[call["call_id"]]
                    ),
                )

    def journal(self, attempt: int, count: int) -> None:
        """Attempt ``attempt`` as runners record it since TaskStarted v2: the claim with the
        first step's intent, then a StepCompleted per step and a StepStarted before each later
        one."""
        for step in range(count):
            intent = e.StepIntent(
                step_index=step,
                calls=[
                    e.ToolCallIntent(
                        call_id=f"c{attempt}-{step}", tool="math.add", arguments={"a": step, "b": 1}
                    )
                ],
            )
            if step == 0:
                self.add(
                    e.TaskStarted,
                    e.TaskStartedData(
                        attempt=attempt, runner_id=f"runner-{attempt}", first_step=intent
                    ),
                )
            else:
                self.add(e.StepStarted, e.StepStartedData(attempt=attempt, step=intent))
            self.add(
                e.StepCompleted,
                e.StepCompletedData(
                    attempt=attempt,
                    step_index=step,
                    outcomes=[
                        e.ToolCallOutcome(
                            call_id=f"c{attempt}-{step}",
                            tool="math.add",
                            ok=True,
                            result=step + 1,
                            duration_ms=0.5 + step,
                        )
                    ],
                ),
            )

    def started(self, attempt: int, supersedes: int | None = None) -> None:
        self.add(
            e.TaskStarted,
            e.TaskStartedData(
                attempt=attempt, runner_id=f"runner-{attempt}", supersedes_attempt=supersedes
            ),
        )


def story(index: int, steps: int = 5) -> list[Event]:
    """The events of task number ``index``; the scenario cycles through :data:`SCENARIOS`."""
    scenario = SCENARIOS[index % len(SCENARIOS)]
    s = _Story(index)
    options = TaskOptions(max_attempts=3, timeout_seconds=600 if scenario == "timed_out" else None)
    s.add(
        e.TaskSubmitted,
        e.TaskSubmittedData(
            task_type="agent_run", input_data={"plan": [], "n": index}, options=options
        ),
    )
    if scenario == "completed":  # recorded the way runners record attempts today
        s.journal(1, steps)
        s.add(e.TaskCompleted, e.TaskCompletedData(attempt=1, output_data={"result": steps}))
        return s.events
    s.started(1)  # the rest as runners recorded them before TaskStarted v2
    match scenario:
        case "retried":
            s.steps(1, steps // 2, fail_last=True)
            s.add(e.TaskAttemptFailed, e.TaskAttemptFailedData(attempt=1, error_message="boom"))
            s.add(
                e.TaskRetryScheduled,
                e.TaskRetryScheduledData(
                    attempt=2,
                    reason="attempt 1 failed: boom",
                    delay_seconds=0.5,
                    not_before=T0 + timedelta(minutes=index, seconds=30),
                ),
            )
            s.started(2)
            s.steps(2, steps)
            s.add(e.TaskCompleted, e.TaskCompletedData(attempt=2, output_data={"result": 2}))
        case "taken_over":
            s.steps(1, 1)
            s.started(2, supersedes=1)
            s.steps(1, 1)  # the runner presumed dead was only slow: superseded, changes nothing
            s.steps(2, steps)
            s.add(e.TaskCompleted, e.TaskCompletedData(attempt=2, output_data={"result": 7}))
        case "failed":
            s.steps(1, steps, fail_last=True)
            s.add(e.TaskFailed, e.TaskFailedData(attempt=1, error_message="step failed: boom"))
        case "cancelled":
            s.steps(1, steps // 2)
            s.add(e.TaskCancelled, e.TaskCancelledData(reason="no longer needed"))
        case "timed_out":
            s.steps(1, steps // 2)
            s.add(
                e.TaskTimedOut,
                e.TaskTimedOutData(attempt=1, timeout_seconds=600, reason="deadline exceeded"),
            )
        case _:
            s.steps(1, steps // 2)
    return s.events


async def append_stories(
    log: EventLog, stories: Sequence[list[Event]], *, concurrency: int = 64
) -> list[list[int]]:
    """Append every story, each as one optimistic chain; their sequences, story by story."""
    limit = asyncio.Semaphore(concurrency)

    async def append(events: list[Event]) -> list[int]:
        sequences: list[int] = []
        async with limit:
            after = 0
            for event in events:
                after = await log.append(event, expected_version=after)
                sequences.append(after)
        return sequences

    return list(await asyncio.gather(*(append(events) for events in stories)))


def task_ids(stories: Sequence[list[Event]]) -> list[UUID]:
    return [events[0].task_id for events in stories]
