"""Appending to and reading from the events stream, the only way events are written.

Appends carry ``Nats-Msg-Id`` (the event id) for dedup. With ``expected_version`` they are
optimistic: the append succeeds only if the task's history still ends at that stream sequence
(0 = the task has no events yet), so two writers cannot interleave one task's history.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from opspawn_contracts.events import Event, decode_event, encode_event
from opspawn_contracts.subjects import Subjects

_WRONG_LAST_SEQUENCE = 10071


class ConcurrencyConflict(Exception):
    """The task's history moved on since ``expected_version`` was read."""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    sequence: int
    """Position in the events stream (global order; per task, increasing)."""
    event: Event


class EventLog:
    def __init__(self, js: JetStreamContext, subjects: Subjects) -> None:
        self._js = js
        self._subjects = subjects

    async def append(self, event: Event, *, expected_version: int | None = None) -> int:
        """Store ``event``; returns its stream sequence (the original one for a duplicate).

        JetStream checks ``expected_version`` before dedup, so re-appending a stored event with a
        stale expectation raises :class:`ConcurrencyConflict`: reload the history and find it there.
        """
        headers = {"Nats-Msg-Id": str(event.event_id)}
        if expected_version is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_version)
            headers["Nats-Expected-Last-Subject-Sequence-Subject"] = self._subjects.task_events(
                event.task_id
            )
        try:
            ack = await self._js.publish(
                self._subjects.event(event.task_id, event.event_type),
                encode_event(event),
                stream=self._subjects.events_stream,
                headers=headers,
            )
        except APIError as error:
            if error.err_code == _WRONG_LAST_SEQUENCE:
                raise ConcurrencyConflict(str(error.description)) from error
            raise
        return ack.seq

    async def task_history(self, task_id: UUID, *, timeout: float = 5.0) -> list[StoredEvent]:
        """All of one task's events in order, read straight from the stream."""
        subject = self._subjects.task_events(task_id)
        try:
            info = await self._js.stream_info(self._subjects.events_stream, subjects_filter=subject)
        except NotFoundError:
            return []
        expected = sum((info.state.subjects or {}).values())
        if expected == 0:
            return []
        subscription = await self._js.subscribe(
            subject,
            stream=self._subjects.events_stream,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        history: list[StoredEvent] = []
        try:
            while len(history) < expected:
                message = await subscription.next_msg(timeout=timeout)
                sequence = message.metadata.sequence.stream
                history.append(StoredEvent(sequence, decode_event(message.data)))
        finally:
            await subscription.unsubscribe()
        return history
