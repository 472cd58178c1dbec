"""The one TaskTimedOut a task can have, whoever notices its deadline first.

Both the scheduler's deadline watch and a runner whose run hits the deadline write it. Its id
derives from the task, so the two describe the same event: appended at the version each read, the
second writer finds the task already finished (or JetStream drops the copy as a duplicate).
"""

from __future__ import annotations

from uuid import UUID, uuid5

from opspawn_contracts.events import TaskTimedOut, TaskTimedOutData


def timeout_reason(timeout_seconds: float, attempt: int) -> str:
    during = f"during attempt {attempt}" if attempt else "before it started"
    return f"deadline of {timeout_seconds:g}s exceeded {during}"


def timed_out(
    task_id: UUID,
    *,
    attempt: int,
    timeout_seconds: float,
    correlation_id: UUID,
    causation_id: UUID | None,
) -> TaskTimedOut:
    return TaskTimedOut(
        event_id=uuid5(task_id, "TaskTimedOut"),
        task_id=task_id,
        correlation_id=correlation_id,
        causation_id=causation_id,
        data=TaskTimedOutData(
            attempt=attempt,
            timeout_seconds=timeout_seconds,
            reason=timeout_reason(timeout_seconds, attempt),
        ),
    )
