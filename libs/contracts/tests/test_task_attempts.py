"""The fold with attempts: retries, deadlines, takeovers and superseded attempts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

from opspawn_contracts import events as e
from opspawn_contracts.events import Event
from opspawn_contracts.task import TaskStatus, TaskView, evolve, is_superseded

TASK, CORRELATION = uuid4(), uuid4()
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _at(seconds: int) -> dict[str, Any]:
    return {
        "task_id": TASK,
        "correlation_id": CORRELATION,
        "occurred_at": T0 + timedelta(seconds=seconds),
    }


def _fold(history: list[Event]) -> TaskView:
    state: TaskView | None = None
    for event in history:
        state = evolve(state, event)
    assert state is not None
    return state


def _submitted(**options: Any) -> e.TaskSubmitted:
    return e.TaskSubmitted(
        **_at(0),
        data=e.TaskSubmittedData(
            task_type="agent_run", input_data={}, options=e.TaskOptions(**options)
        ),
    )


def _started(second: int, attempt: int, supersedes: int | None = None) -> e.TaskStarted:
    return e.TaskStarted(
        **_at(second),
        data=e.TaskStartedData(attempt=attempt, runner_id="r", supersedes_attempt=supersedes),
    )


def _completed(second: int, attempt: int) -> e.TaskCompleted:
    return e.TaskCompleted(
        **_at(second), data=e.TaskCompletedData(attempt=attempt, output_data={"by": attempt})
    )


def test_the_deadline_is_submission_time_plus_the_timeout() -> None:
    assert _fold([_submitted(timeout_seconds=90)]).deadline_at == T0 + timedelta(seconds=90)
    assert _fold([_submitted()]).deadline_at is None


def test_a_failed_attempt_then_a_retry_then_success() -> None:
    failed = e.TaskAttemptFailed(
        **_at(2), data=e.TaskAttemptFailedData(attempt=1, error_message="x")
    )
    not_before = T0 + timedelta(seconds=5)
    retry = e.TaskRetryScheduled(
        **_at(3),
        data=e.TaskRetryScheduledData(
            attempt=2, reason="attempt 1 failed: x", delay_seconds=2, not_before=not_before
        ),
    )
    history: list[Event] = [_submitted(max_attempts=3), _started(1, 1), failed]

    assert (_fold(history).status, _fold(history).error_message) == (TaskStatus.RUNNING, "x")
    waiting = _fold([*history, retry])
    assert (waiting.status, waiting.attempt, waiting.retry_at) == (
        TaskStatus.PENDING,
        2,
        not_before,
    )
    done = _fold([*history, retry, _started(6, 2), _completed(7, 2)])
    assert (done.status, done.attempt, done.retry_at, done.error_message) == (
        TaskStatus.COMPLETED,
        2,
        None,
        None,
    )


def test_events_of_a_superseded_attempt_change_nothing() -> None:
    """Attempt 2 took over from attempt 1, whose runner was only slow and reported later."""
    history: list[Event] = [_submitted(), _started(1, 1), _started(2, 2, supersedes=1)]
    before = _fold(history)
    late = _completed(3, 1)

    assert is_superseded(before, late)
    assert evolve(before, late) == before
    assert not is_superseded(before, _completed(4, 2))
    assert _fold([*history, late, _completed(4, 2)]).output_data == {"by": 2}


def test_a_retry_fences_off_the_attempt_it_replaces() -> None:
    retry = e.TaskRetryScheduled(
        **_at(3),
        data=e.TaskRetryScheduledData(attempt=2, reason="r", delay_seconds=0, not_before=T0),
    )
    state = _fold([_submitted(), _started(1, 1), retry])
    assert is_superseded(state, _completed(4, 1))
    assert evolve(state, _completed(4, 1)) == state


def test_timing_out_fails_the_task_for_good() -> None:
    timed_out = e.TaskTimedOut(
        **_at(9), data=e.TaskTimedOutData(attempt=1, timeout_seconds=5, reason="deadline")
    )
    state = _fold([_submitted(timeout_seconds=5), _started(1, 1), timed_out, _completed(10, 1)])
    assert (state.status, state.error_message) == (TaskStatus.FAILED, "deadline")
