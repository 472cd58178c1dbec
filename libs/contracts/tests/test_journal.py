"""Folding a history into each step's latest record (what a resumed attempt starts from)."""

from __future__ import annotations

from uuid import uuid4

from opspawn_contracts.events import (
    Event,
    StepCompleted,
    StepCompletedData,
    StepIntent,
    StepOutcomes,
    StepStarted,
    StepStartedData,
    TaskAttemptFailed,
    TaskAttemptFailedData,
    TaskStarted,
    TaskStartedData,
    ToolCallIntent,
    ToolCallOutcome,
)
from opspawn_contracts.journal import recorded_steps

TASK = uuid4()


def _envelope() -> dict[str, object]:
    return {"task_id": TASK, "correlation_id": TASK, "causation_id": uuid4()}


def _intent(step: int) -> StepIntent:
    return StepIntent(
        step_index=step,
        calls=[ToolCallIntent(call_id=f"plan-{step}", tool="math.add", arguments={"a": step})],
    )


def _outcome(step: int, result: int) -> ToolCallOutcome:
    return ToolCallOutcome(
        call_id=f"plan-{step}", tool="math.add", ok=True, result=result, duration_ms=1.0
    )


def _started(
    *, attempt: int, first_step: StepIntent, supersedes_attempt: int | None = None
) -> TaskStarted:
    data = TaskStartedData(
        attempt=attempt,
        runner_id=f"runner-{attempt}",
        supersedes_attempt=supersedes_attempt,
        first_step=first_step,
    )
    return TaskStarted(**_envelope(), data=data)


def _completed(attempt: int, step: int, result: int) -> StepCompleted:
    return StepCompleted(
        **_envelope(),
        data=StepCompletedData(attempt=attempt, step_index=step, outcomes=[_outcome(step, result)]),
    )


def test_a_takeovers_intent_replaces_the_old_one_and_a_late_outcome_does_not_complete_it() -> None:
    history: list[Event] = [
        TaskStarted(
            **_envelope(), data=TaskStartedData(attempt=1, runner_id="a", first_step=_intent(0))
        ),
        _completed(1, 0, result=10),
        StepStarted(**_envelope(), data=StepStartedData(attempt=1, step=_intent(1))),
        TaskStarted(
            **_envelope(),
            data=TaskStartedData(
                attempt=2, runner_id="b", supersedes_attempt=1, first_step=_intent(1)
            ),
        ),
        _completed(1, 1, result=11),  # the slow attempt 1, superseded
    ]

    steps = recorded_steps(history)

    assert [(step.attempt, step.intent.step_index) for step in steps] == [(1, 0), (2, 1)]
    assert steps[0].outcomes == (_outcome(0, 10),)
    assert steps[1].outcomes is None


def test_an_attempt_in_one_event_records_its_step_with_its_outcomes() -> None:
    ended = TaskAttemptFailed(
        **_envelope(),
        data=TaskAttemptFailedData(
            attempt=1,
            error_message="a tool failed",
            started=TaskStartedData(attempt=1, runner_id="a", first_step=_intent(0)),
            last_step=StepOutcomes(step_index=0, outcomes=[_outcome(0, 7)]),
        ),
    )

    (step,) = recorded_steps([ended])

    assert (step.attempt, step.intent, step.outcomes) == (1, _intent(0), (_outcome(0, 7),))
