"""The journal's one-write attempts: a claim that rides in the attempt's last event, and what
happens when another writer got to the task's history first.

Runs :class:`~agent_runner.journal.AttemptJournal` against a real nats-server; the other writer
is played by the test, appending to the same history.
"""

from __future__ import annotations

from collections.abc import Callable
from uuid import uuid4

import pytest
from nats.js import JetStreamContext

from agent_runner.attempts import Claim, NothingToRun, StartedElsewhere, claim
from agent_runner.event_chain import EventChain
from agent_runner.journal import AttemptJournal, ClaimRefused
from agentkit import StepFinished, StepStarted, ToolCall, ToolCallFinished
from opspawn_contracts.deadlines import timed_out
from opspawn_contracts.events import (
    Event,
    TaskAttemptFailed,
    TaskAttemptFailedData,
    TaskCancelled,
    TaskCancelledData,
    TaskCompleted,
    TaskCompletedData,
    TaskStarted,
    TaskStartedData,
    TaskSubmitted,
    TaskSubmittedData,
    TaskTimedOut,
)
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.work import TaskAssignment
from opspawn_messaging.event_log import EventLog

pytestmark = pytest.mark.integration

INLINE = {"util.noop"}


async def _submitted(log: EventLog) -> TaskAssignment:
    submitted = TaskSubmitted(
        task_id=uuid4(),
        correlation_id=uuid4(),
        data=TaskSubmittedData(task_type="agent_run", input_data={"plan": []}),
    )
    sequence = await log.append(submitted, expected_version=0)
    return TaskAssignment.first_attempt(submitted, sequence=sequence)


def _journal(
    log: EventLog, assignment: TaskAssignment, *, redelivered: bool = False
) -> AttemptJournal:
    assert assignment.after_sequence is not None
    return AttemptJournal(
        log,
        assignment,
        Claim(assignment.attempt, None, assignment.after_sequence),
        runner_id="runner-under-test",
        redelivered=redelivered,
        history=lambda: log.task_history(assignment.task_id),
        hold_outcomes=True,
        runs_inline=INLINE.__contains__,
    )


async def _run_noop_step(journal: AttemptJournal) -> None:
    call = ToolCall(call_id="plan-0", tool="util.noop", arguments={})
    await journal.record(StepStarted(step_index=0, calls=(call,)))
    outcome = ToolCallFinished(
        step_index=0,
        call_id="plan-0",
        tool="util.noop",
        ok=True,
        result=None,
        error=None,
        duration_ms=0.0,
    )
    await journal.record(StepFinished(step_index=0, outcomes=(outcome,)))


def _timed_out(assignment: TaskAssignment, chain: EventChain) -> TaskTimedOut:
    return timed_out(
        assignment.task_id,
        attempt=assignment.attempt,
        timeout_seconds=5.0,
        correlation_id=assignment.correlation_id,
        causation_id=chain.previous_id,
    )


def _completed(assignment: TaskAssignment, chain: EventChain) -> TaskCompleted:
    return TaskCompleted(
        **chain.envelope(),
        data=TaskCompletedData(attempt=assignment.attempt, output_data={"result": None}),
    )


async def test_an_inline_step_and_the_attempts_end_are_one_write_after_the_submission(
    jetstream: JetStreamContext, subjects: Subjects
) -> None:
    log = EventLog(jetstream, subjects)
    assignment = await _submitted(log)
    journal = _journal(log, assignment)

    await _run_noop_step(journal)
    assert len(await log.task_history(assignment.task_id)) == 1  # nothing recorded yet
    await journal.append(_completed)

    history = await log.task_history(assignment.task_id)
    assert [stored.event.event_type for stored in history] == ["TaskSubmitted", "TaskCompleted"]
    data = history[1].event.data
    assert isinstance(data, TaskCompletedData)
    assert data.started is not None
    assert data.started.first_step is not None
    assert (data.started.attempt, data.started.runner_id) == (1, "runner-under-test")
    assert [call.tool for call in data.started.first_step.calls] == ["util.noop"]
    assert data.last_step is not None
    assert data.last_step.outcomes[0].ok


def _cancelled(assignment: TaskAssignment) -> TaskCancelled:
    return TaskCancelled(
        task_id=assignment.task_id,
        correlation_id=assignment.correlation_id,
        causation_id=assignment.causation_id,
        data=TaskCancelledData(reason="changed my mind"),
    )


def _started_elsewhere(assignment: TaskAssignment) -> TaskStarted:
    return TaskStarted(
        task_id=assignment.task_id,
        correlation_id=assignment.correlation_id,
        causation_id=assignment.causation_id,
        data=TaskStartedData(attempt=1, runner_id="the-other-runner"),
    )


@pytest.mark.parametrize(
    ("other_write", "refusal"),
    [(_cancelled, NothingToRun), (_started_elsewhere, StartedElsewhere)],
    ids=["the task was cancelled", "another runner started it"],
)
async def test_an_attempt_whose_one_write_finds_another_writer_first_records_nothing(
    jetstream: JetStreamContext,
    subjects: Subjects,
    other_write: Callable[[TaskAssignment], Event],
    refusal: type[NothingToRun | StartedElsewhere],
) -> None:
    """Its inline step changed nothing, so a refused claim leaves only the other writer's
    event (a copy of the item running elsewhere goes on; a cancelled task stays cancelled)."""
    log = EventLog(jetstream, subjects)
    assignment = await _submitted(log)
    journal = _journal(log, assignment)
    await _run_noop_step(journal)
    other = other_write(assignment)
    await log.append(other, expected_version=assignment.after_sequence)

    with pytest.raises(ClaimRefused) as refused:
        await journal.append(_completed)

    assert isinstance(refused.value.decision, refusal)
    history = await log.task_history(assignment.task_id)
    assert [stored.event.event_type for stored in history] == ["TaskSubmitted", other.event_type]


async def test_a_redelivered_item_of_an_attempt_that_ended_in_one_write_runs_nothing(
    jetstream: JetStreamContext, subjects: Subjects
) -> None:
    """The claim inside TaskAttemptFailed counts as the attempt's start: a redelivery of its
    item finds the attempt ended (the scheduler decides what is next), not an attempt to run."""
    log = EventLog(jetstream, subjects)
    assignment = await _submitted(log)
    journal = _journal(log, assignment)
    await _run_noop_step(journal)
    await journal.append(
        lambda assignment, chain: TaskAttemptFailed(
            **chain.envelope(),
            data=TaskAttemptFailedData(attempt=assignment.attempt, error_message="a tool failed"),
        )
    )

    history = await log.task_history(assignment.task_id)
    assert [stored.event.event_type for stored in history] == ["TaskSubmitted", "TaskAttemptFailed"]
    state = history.state()
    assert state is not None
    assert (state.status, state.attempt) == ("running", 1)
    decision = claim(assignment, history, redelivered=True)
    assert isinstance(decision, NothingToRun), decision
    assert "ended" in decision.reason


async def test_an_ending_that_cannot_carry_the_claim_stores_it_first(
    jetstream: JetStreamContext, subjects: Subjects
) -> None:
    """TaskTimedOut has no room for a claim: the claim with the inline step's intent, and its
    outcome, are stored before it (the journal's ordinary path)."""
    log = EventLog(jetstream, subjects)
    assignment = await _submitted(log)
    journal = _journal(log, assignment)
    await _run_noop_step(journal)
    await journal.append(_timed_out)

    history = await log.task_history(assignment.task_id)
    assert [stored.event.event_type for stored in history] == [
        "TaskSubmitted",
        "TaskStarted",
        "StepCompleted",
        "TaskTimedOut",
    ]
