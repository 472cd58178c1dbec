"""A task's steps as its history records them: what a new attempt resumes from.

Every attempt records each step at its boundaries (``docs/events.md``, "A task's journal"): the
intent (``TaskStarted.first_step``, ``StepStarted.step``, or ``started.first_step`` of an
attempt's only event) before any call runs, and the outcomes (``StepCompleted``, or
``last_step`` of the event that ended the attempt) after. :func:`recorded_steps` folds a history
into one record per step index, the latest attempt's:

- an intent replaces whatever an earlier attempt recorded for that step (the step was decided
  and started again);
- outcomes complete the intent of the same attempt only, so the late record of a superseded
  attempt (a runner presumed dead that was only slow) never completes a newer attempt's step;
- a step with an intent and no outcomes was started and not recorded as finished: its calls may
  or may not have run.

Streams written before ``TaskStarted`` v2 record calls one by one (``ToolCallRequested``,
``ToolCallCompleted``); those records are not read here, so a task from such a stream that is
retried starts again from its first step, as it always did.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from opspawn_contracts.events import (
    Event,
    ModelReplyRecord,
    StepCompleted,
    StepIntent,
    StepStarted,
    TaskAttemptFailed,
    TaskCompleted,
    TaskFailed,
    TaskStarted,
    ToolCallOutcome,
)


@dataclass(frozen=True, slots=True)
class RecordedStep:
    """One step's latest record: the attempt that recorded it, its intent, and its outcomes
    (``None``: started, never recorded as finished)."""

    attempt: int
    intent: StepIntent
    outcomes: tuple[ToolCallOutcome, ...] | None = None


def recorded_replies(event: Event) -> tuple[ModelReplyRecord, ...]:
    """The model replies ``event`` records: a step intent's, and a final answer's (called for
    every event the projection folds, so the common case, none, returns at once)."""
    match event:
        case TaskStarted():
            return _reply_of(event.data.first_step)
        case StepStarted():
            return _reply_of(event.data.step)
        case TaskCompleted() | TaskFailed() | TaskAttemptFailed():
            started = event.data.started
            replies = _reply_of(started.first_step) if started is not None else ()
            if isinstance(event, TaskCompleted) and event.data.final_reply is not None:
                replies += (event.data.final_reply,)
            return replies
        case _:
            return ()


def _reply_of(intent: StepIntent | None) -> tuple[ModelReplyRecord, ...]:
    return () if intent is None or intent.model_reply is None else (intent.model_reply,)


def recorded_steps(events: Iterable[Event]) -> list[RecordedStep]:
    """Each recorded step's latest record, in step order."""
    steps: dict[int, RecordedStep] = {}

    def intent(attempt: int, step: StepIntent | None) -> None:
        if step is not None:
            steps[step.step_index] = RecordedStep(attempt, step)

    def outcomes(attempt: int, step_index: int, recorded: Iterable[ToolCallOutcome]) -> None:
        current = steps.get(step_index)
        if current is not None and current.attempt == attempt:
            steps[step_index] = RecordedStep(attempt, current.intent, tuple(recorded))

    for event in events:
        match event:
            case TaskStarted():
                intent(event.data.attempt, event.data.first_step)
            case StepStarted():
                intent(event.data.attempt, event.data.step)
            case StepCompleted():
                outcomes(event.data.attempt, event.data.step_index, event.data.outcomes)
            case TaskCompleted() | TaskFailed() | TaskAttemptFailed():
                data = event.data
                if data.started is not None:
                    intent(data.attempt, data.started.first_step)
                if data.last_step is not None:
                    outcomes(data.attempt, data.last_step.step_index, data.last_step.outcomes)
    return [steps[index] for index in sorted(steps)]
