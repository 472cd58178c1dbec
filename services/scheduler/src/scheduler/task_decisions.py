"""Appending the scheduler's decisions about a task, from fresh state, without interleaving.

A decision is a function of the task's whole history (folded into its state): it returns the
event to append, or ``None`` when there is nothing to decide (the task moved on). The event is
appended at the version that history ended at, so no other writer (a runner, another scheduler,
a cancel) can slip an event in between reading and deciding; on a conflict the history is read
again and the decision made afresh, a bounded number of times.
"""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

from opspawn_contracts.events import Event
from opspawn_contracts.task import TaskView
from opspawn_messaging.event_log import ConcurrencyConflict, EventLog, StoredEvent

DECISION_TRIES = 10

Decide = Callable[[TaskView | None, list[StoredEvent]], Event | None]


class HistoryKeptMoving(Exception):
    """Every try conflicted with another writer; the caller retries later."""


async def append_decision(log: EventLog, task_id: UUID, decide: Decide) -> int | None:
    """Decide on ``task_id`` from its current history and append the decision; its sequence,
    or ``None`` if there was nothing to decide."""
    for _ in range(DECISION_TRIES):
        history = await log.task_history(task_id)
        event = decide(history.state(), history)
        if event is None:
            return None
        try:
            return await log.append(event, expected_version=history.last_sequence)
        except ConcurrencyConflict:
            continue
    raise HistoryKeptMoving(f"task {task_id}: its history kept moving ({DECISION_TRIES} tries)")
