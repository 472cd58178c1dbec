"""Which attempt a work item runs as, decided from the task's history before anything runs.

The scheduler queues attempt ``n`` of a task; by the time a runner gets the message the history
may say otherwise. :func:`claim` decides:

- the task finished (completed, failed, cancelled, timed out): nothing to run;
- a newer attempt was started or scheduled: the item is stale, nothing to run;
- attempt ``n`` has not started: run it;
- attempt ``n`` started and this is a *redelivery* (its runner stopped heart-beating, gave the
  work back, or failed to store an event): take the task over as attempt ``started + 1``,
  fencing the previous one off (``TaskStarted.supersedes_attempt`` says so);
- attempt ``n`` started and this is the item's *first* delivery: either a copy of an item
  already running (queued again after the dedup window) or the item itself, delivered again by a
  server that lost its record of the earlier delivery (a nats-server crash can: its consumer
  state is not synced with every delivery). Nothing runs now, and the item is *left*, not
  acknowledged: it comes back after ``ack_wait`` as a redelivery, and is then finished with
  (the task ended meanwhile) or taken over (it did not). Acknowledging it would lose the task in
  the second case, with no item left to finish it;
- attempt ``n`` already ended with TaskAttemptFailed: the scheduler decides what comes next.

The claim holds only if its record (TaskStarted, or the one event of an attempt that records
nothing before its end) is appended at the sequence the history ended at; the caller
decides again from fresh history when it is not.
"""

from __future__ import annotations

from dataclasses import dataclass

from opspawn_contracts.events import TaskAttemptFailed
from opspawn_contracts.task import claimed_attempt
from opspawn_contracts.work import TaskAssignment
from opspawn_messaging.event_log import StoredEvent, TaskHistory


@dataclass(frozen=True, slots=True)
class Claim:
    attempt: int
    supersedes: int | None
    after_sequence: int
    """Where the history ended: TaskStarted is appended expecting exactly this."""


@dataclass(frozen=True, slots=True)
class NothingToRun:
    """The work item is done with: acknowledge it."""

    reason: str


@dataclass(frozen=True, slots=True)
class StartedElsewhere:
    """The attempt started before this first delivery: leave the item for its redelivery."""

    reason: str


def claim(
    assignment: TaskAssignment, history: TaskHistory, *, redelivered: bool
) -> Claim | NothingToRun | StartedElsewhere:
    state = history.state()
    if state is None:
        return NothingToRun("the task has no TaskSubmitted")
    if state.status.is_terminal:
        return NothingToRun(f"the task is already {state.status.value}")
    if state.attempt > assignment.attempt:
        return NothingToRun(f"attempt {state.attempt} superseded this work item")
    after = history.last_sequence
    if state.attempt < assignment.attempt or not _started(history, state.attempt):
        return Claim(assignment.attempt, None, after)
    if _ended(history, state.attempt):
        return NothingToRun(f"attempt {state.attempt} ended; the scheduler decides what is next")
    if not redelivered:
        return StartedElsewhere(f"attempt {state.attempt} already started")
    return Claim(state.attempt + 1, state.attempt, after)


def _started(history: list[StoredEvent], attempt: int) -> bool:
    return any(claimed_attempt(stored.event) == attempt for stored in history)


def _ended(history: list[StoredEvent], attempt: int) -> bool:
    return any(
        isinstance(stored.event, TaskAttemptFailed) and stored.event.data.attempt == attempt
        for stored in history
    )
