"""Appending one attempt's events: a causation chain, fenced by the attempt number.

Each event's ``causation_id`` is the previous event's id (the first one's is the assignment's
cause), and every append expects the task's history to still end at the previous append (the
chain starts at the sequence the attempt was claimed at). When another writer got in between,
the chain reads the history again and decides by the attempt number, the fencing token:

- everything new comes from older attempts (a runner presumed dead, which was only slow and
  recorded what it did; see below): those events are superseded and change nothing, so the chain
  appends again after them and carries on;
- a newer attempt started or was scheduled: this attempt is superseded. Its event is recorded
  once, as the superseded attempt's last word, unless it is terminal (only the current attempt
  may finish a task), and :class:`AttemptSuperseded` stops the run;
- anything else (the task finished, was cancelled or timed out, or another writer claims the same
  attempt) stops the run with :class:`AttemptSuperseded`.
"""

from __future__ import annotations

import contextlib
from typing import Any
from uuid import UUID

from nats.errors import Error as NatsError

from opspawn_contracts.events import TERMINAL_EVENT_TYPES, Event
from opspawn_contracts.task import runner_attempt
from opspawn_contracts.work import TaskAssignment
from opspawn_messaging.event_log import ConcurrencyConflict, EventLog, EventTooLarge

MAX_RESOLUTIONS = 10


class AttemptSuperseded(Exception):
    """Someone else writes the task's history now; this attempt must stop."""


class EventAppendFailed(Exception):
    """The event store could not be reached or refused the append; the work should be retried."""


class EventChain:
    def __init__(
        self, log: EventLog, assignment: TaskAssignment, *, after_sequence: int | None = None
    ) -> None:
        """``after_sequence``: where the task's history ended when the attempt was claimed."""
        self._log = log
        self._assignment = assignment
        self._previous_id = assignment.causation_id
        self._previous_sequence = after_sequence

    @property
    def previous_id(self) -> UUID:
        """The id of the last event appended (or the assignment's cause before the first)."""
        return self._previous_id

    def envelope(self) -> dict[str, Any]:
        """The envelope fields of the next event: task, correlation and the chain's cause."""
        return {
            "task_id": self._assignment.task_id,
            "correlation_id": self._assignment.correlation_id,
            "causation_id": self._previous_id,
        }

    async def append(self, event: Event) -> None:
        expected = self._previous_sequence
        for _ in range(MAX_RESOLUTIONS):
            try:
                sequence = await self._log.append(event, expected_version=expected)
            except ConcurrencyConflict as conflict:
                expected = await self._resolve(event, str(conflict))
                continue
            except EventTooLarge:
                raise
            except NatsError as error:
                raise EventAppendFailed(f"{type(error).__name__}: {error}") from error
            self.appended(event, sequence)
            return
        raise AttemptSuperseded(f"the history kept moving ({MAX_RESOLUTIONS} tries)")

    def appended(self, event: Event, sequence: int) -> None:
        """Continue the chain after ``event``, stored at ``sequence`` (by this attempt)."""
        self._previous_id = event.event_id
        self._previous_sequence = sequence

    async def _resolve(self, event: Event, conflict: str) -> int:
        """The sequence to append after, if this attempt may go on; else raise."""
        try:
            history = await self._log.task_history(self._assignment.task_id)
        except NatsError as error:
            raise EventAppendFailed(f"cannot read the task's history: {error}") from error
        mine = self._assignment.attempt
        after = self._previous_sequence or 0
        new = [stored.event for stored in history if stored.sequence > after]
        older = [runner_attempt(other) for other in new]
        if history.last_sequence > after and all(
            attempt is not None and attempt < mine for attempt in older
        ):
            # Only older attempts' events (or messages that are no events) came in between.
            return history.last_sequence
        state = history.state()
        if (
            state is not None
            and not state.status.is_terminal
            and state.attempt > mine
            and event.event_type not in TERMINAL_EVENT_TYPES
        ):
            # The record is for the audit trail; without it the attempt stops all the same.
            with contextlib.suppress(ConcurrencyConflict, NatsError):
                await self._log.append(event, expected_version=history.last_sequence)
            raise AttemptSuperseded(
                f"attempt {state.attempt} superseded attempt {mine}; recorded its "
                f"{event.event_type} as superseded"
            )
        raise AttemptSuperseded(conflict)
