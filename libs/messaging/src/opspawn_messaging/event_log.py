"""Appending to and reading from the events stream, the only way events are written.

Appends carry ``Nats-Msg-Id`` (the event id) for dedup. With ``expected_version`` they are
optimistic: the append succeeds only if the task's history still ends at that stream sequence
(0 = the task has no events yet), so two writers cannot interleave one task's history.

An append made while a span is current carries its W3C trace context in the message headers
(``traceparent``, written by OpenTelemetry's propagators), so whoever reacts to the event continues
the task's trace. Without tracing no span is ever current, and that costs one context lookup.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from nats.errors import MaxPayloadError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, Header
from nats.js.errors import APIError, NotFoundError
from opentelemetry import propagate, trace
from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from opspawn_contracts.events import Event, decode_event, encode_event
from opspawn_contracts.streams import MAX_MESSAGE_BYTES
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.task import TaskView, fold

logger = logging.getLogger(__name__)

_WRONG_LAST_SEQUENCE = 10071


class ConcurrencyConflict(Exception):
    """The task's history moved on since ``expected_version`` was read."""


class EventTooLarge(MaxPayloadError):
    """The event and its headers exceed the events stream's message limit; nothing was sent.

    Checked before publishing because nats-py compares only the payload with the server's
    ``max_payload``: a message whose payload fits but whose headers push it over makes the server
    close the connection (``-ERR 'Maximum Payload Violation'``), and nats-py does not reconnect
    after that, which would leave the service running but deaf. A subclass of nats-py's own
    error, so callers that retry and then dead-letter NATS failures handle it as they already do.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


def _wire_size(payload: bytes, headers: Mapping[str, str]) -> int:
    """What the server counts against its limits: the header block (``NATS/1.0``, a
    ``Name: value`` line per header, a blank line) plus the payload."""
    lines = b"".join(
        f"{name.strip()}: {value.strip()}\r\n".encode() for name, value in headers.items()
    )
    return len(b"NATS/1.0\r\n") + len(lines) + len(b"\r\n") + len(payload)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    sequence: int
    """Position in the events stream (global order; per task, increasing)."""
    event: Event


class TaskHistory(list[StoredEvent]):
    """A task's readable events in order, and where its subject's history really ends.

    Anyone who can publish on a task's event subjects can store a message there that is no event
    of that task (see :func:`read_event`). Readers step over such a message, as the projection
    does, but the next append must still expect the subject's real last sequence, which may be
    the unreadable message's: :attr:`last_sequence` is that (0 for a task with no messages).
    """

    def __init__(self, events: list[StoredEvent], *, last_sequence: int, unreadable: int) -> None:
        super().__init__(events)
        self.last_sequence = last_sequence
        self.unreadable = unreadable
        """Messages on the task's subjects that were stepped over."""

    def state(self) -> TaskView | None:
        """The task's state after these events (``None`` before its TaskSubmitted)."""
        return fold(stored.event for stored in self)

    def until(self, *, sequence: int | None = None, at: datetime | None = None) -> TaskHistory:
        """The history as it was at stream ``sequence`` or time ``at`` (both: either bound);
        an event counts at ``at`` if its ``occurred_at`` is not after it."""
        kept: list[StoredEvent] = []
        for stored in self:
            if sequence is not None and stored.sequence > sequence:
                break
            if at is not None and stored.event.occurred_at > at:
                break
            kept.append(stored)
        last = kept[-1].sequence if kept else 0
        return TaskHistory(kept, last_sequence=last, unreadable=0)


def read_event(subjects: Subjects, subject: str, payload: bytes) -> Event:
    """The event stored under ``subject``: decoded, upcast, and checked against the subject.

    An event belongs to the task and type its subject names; one stored under another task's or
    type's subject (a misbehaving or hostile publisher) would otherwise be projected into the task
    its body names while that task's history, read by subject, lacks it. Raises
    :class:`pydantic.ValidationError` for such an event as for any invalid one, so every reader
    (projection, replay, history, watchers) steps over it the same way.
    """
    event = decode_event(payload)
    filed_under = subject.rsplit(".", 2)
    task = filed_under[-2] if len(filed_under) == 3 else ""
    if task != str(event.task_id) or filed_under[-1] != event.event_type:
        raise ValidationError.from_exception_data(
            "Event",
            [
                InitErrorDetails(
                    type=PydanticCustomError(
                        "subject",
                        "a {event_type} of task {task_id} stored under {subject}, which names "
                        "another task or event type",
                        {
                            "event_type": event.event_type,
                            "task_id": str(event.task_id),
                            "subject": subject,
                        },
                    ),
                    loc=("task_id",),
                    input=str(event.task_id),
                )
            ],
        )
    return event


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
        if trace.get_current_span().get_span_context().is_valid:
            propagate.inject(headers)
        payload = encode_event(event)
        stream = self._subjects.events_stream
        size = _wire_size(payload, {**headers, Header.EXPECTED_STREAM.value: stream})
        if size > MAX_MESSAGE_BYTES:
            raise EventTooLarge(
                f"{event.event_type} of task {event.task_id} would be {size} bytes with its "
                f"headers, above the events stream's limit of {MAX_MESSAGE_BYTES}"
            )
        try:
            ack = await self._js.publish(
                self._subjects.event(event.task_id, event.event_type),
                payload,
                stream=stream,
                headers=headers,
            )
        except APIError as error:
            if error.err_code == _WRONG_LAST_SEQUENCE:
                raise ConcurrencyConflict(str(error.description)) from error
            raise
        return ack.seq

    async def task_history(self, task_id: UUID, *, timeout: float = 5.0) -> TaskHistory:
        """All of one task's events in order, read straight from the stream.

        A message on the task's subjects that is not one of its events is logged and stepped
        over; :attr:`TaskHistory.last_sequence` still counts it, so appends expect it.
        """
        subject = self._subjects.task_events(task_id)
        try:
            info = await self._js.stream_info(self._subjects.events_stream, subjects_filter=subject)
        except NotFoundError:
            return TaskHistory([], last_sequence=0, unreadable=0)
        expected = sum((info.state.subjects or {}).values())
        if expected == 0:
            return TaskHistory([], last_sequence=0, unreadable=0)
        subscription = await self._js.subscribe(
            subject,
            stream=self._subjects.events_stream,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        events: list[StoredEvent] = []
        last_sequence = unreadable = 0
        try:
            for _ in range(expected):
                message = await subscription.next_msg(timeout=timeout)
                last_sequence = message.metadata.sequence.stream
                try:
                    event = read_event(self._subjects, message.subject, message.data)
                except ValidationError as error:
                    unreadable += 1
                    logger.warning(
                        "task %s: the message at sequence %d on %s is not one of its events, "
                        "stepping over it: %s",
                        task_id,
                        last_sequence,
                        message.subject,
                        error.errors(include_url=False)[0]["msg"],
                    )
                    continue
                events.append(StoredEvent(last_sequence, event))
        finally:
            await subscription.unsubscribe()
        return TaskHistory(events, last_sequence=last_sequence, unreadable=unreadable)
