"""The fold from events to a task's state: the rules live and replayed projections share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

from opspawn_contracts import events
from opspawn_contracts.events import Event
from opspawn_contracts.task import TaskStatus, TaskView, evolve

TASK, CORRELATION = uuid4(), uuid4()
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _at(seconds: int) -> dict[str, object]:
    return {
        "task_id": TASK,
        "correlation_id": CORRELATION,
        "occurred_at": T0 + timedelta(seconds=seconds),
    }


def _fold(history: list[Event]) -> TaskView | None:
    state: TaskView | None = None
    for event in history:
        state = evolve(state, event)
    return state


SUBMITTED = events.TaskSubmitted(
    **_at(0), data=events.TaskSubmittedData(task_type="agent_run", input_data={"goal": "g"})
)
STARTED = events.TaskStarted(**_at(1), data=events.TaskStartedData(attempt=1, runner_id="r"))
COMPLETED = events.TaskCompleted(
    **_at(2), data=events.TaskCompletedData(attempt=1, output_data={"result": 5})
)


def test_lifecycle_to_completed() -> None:
    state = _fold([SUBMITTED, STARTED, COMPLETED])
    assert state is not None
    assert (state.status, state.output_data, state.error_message) == (
        TaskStatus.COMPLETED, {"result": 5}, None,
    )  # fmt: skip
    assert (state.created_at, state.updated_at) == (T0, T0 + timedelta(seconds=2))


def test_failure_keeps_partial_output_and_message() -> None:
    failed = events.TaskFailed(
        **_at(2),
        data=events.TaskFailedData(
            attempt=1, error_message="step 1 failed", output_data={"steps": []}
        ),
    )
    state = _fold([SUBMITTED, STARTED, failed])
    assert state is not None
    assert (state.status, state.error_message, state.output_data) == (
        TaskStatus.FAILED, "step 1 failed", {"steps": []},
    )  # fmt: skip


def test_events_before_submission_or_after_the_end_change_nothing() -> None:
    assert _fold([STARTED, COMPLETED]) is None
    finished = _fold([SUBMITTED, STARTED, COMPLETED])
    late = events.TaskFailed(**_at(9), data=events.TaskFailedData(attempt=1, error_message="late"))
    assert evolve(finished, late) == finished
    assert evolve(finished, SUBMITTED) == finished


def test_cancelled_is_terminal_with_its_reason() -> None:
    cancelled = events.TaskCancelled(**_at(1), data=events.TaskCancelledData(reason="by user"))
    state = _fold([SUBMITTED, cancelled, STARTED])
    assert state is not None
    assert (state.status, state.error_message) == (TaskStatus.CANCELLED, "by user")
