"""Appending one attempt's events: a causation chain, fenced against other writers.

Each event's ``causation_id`` is the previous event's id (the first one's is the assignment's
cause), and every append after the first expects the task's history to still end at the previous
append. A second writer on the same task (a duplicate delivery of the attempt, or the scheduler)
therefore stops this one with :class:`AttemptSuperseded` instead of interleaving histories.
"""

from __future__ import annotations

from typing import Any

from nats.errors import Error as NatsError

from opspawn_contracts.event_log import ConcurrencyConflict, EventLog
from opspawn_contracts.events import Event
from opspawn_contracts.work import TaskAssignment


class AttemptSuperseded(Exception):
    """Someone else appended to the task's history since this attempt's last event."""


class EventAppendFailed(Exception):
    """The event store could not be reached or refused the append; the work should be retried."""


class EventChain:
    def __init__(self, log: EventLog, assignment: TaskAssignment) -> None:
        self._log = log
        self._assignment = assignment
        self._previous_id = assignment.causation_id
        self._previous_sequence: int | None = None

    def envelope(self) -> dict[str, Any]:
        """The envelope fields of the next event: task, correlation and the chain's cause."""
        return {
            "task_id": self._assignment.task_id,
            "correlation_id": self._assignment.correlation_id,
            "causation_id": self._previous_id,
        }

    async def append(self, event: Event) -> None:
        try:
            sequence = await self._log.append(event, expected_version=self._previous_sequence)
        except ConcurrencyConflict as conflict:
            raise AttemptSuperseded(str(conflict)) from conflict
        except NatsError as error:
            raise EventAppendFailed(f"{type(error).__name__}: {error}") from error
        self._previous_id = event.event_id
        self._previous_sequence = sequence
