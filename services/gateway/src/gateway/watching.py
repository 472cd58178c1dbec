"""Following one task's events live: what the SSE stream and gRPC WatchTask deliver.

Contract of :meth:`TaskWatcher.open` and the :class:`EventFeed` it returns:

- The task must be the caller's (else :class:`TaskNotFound`, before anything is streamed).
- The feed yields every event of the task with a stream sequence above ``after``, each once and in
  stream order, then ends right after the task's terminal event (TaskCompleted, TaskFailed,
  TaskCancelled). ``None`` items are keep-alive ticks while nothing happens.
- Resuming is exact: a client that saw sequence ``n`` opens again with ``after=n`` and gets the
  rest, however long it was away, because the events stream keeps every event forever.

A running task is followed in JetStream directly, with an ordered consumer on the task's subject
starting at ``after + 1``: it delivers history and live events through one cursor, so nothing is
missed or doubled at the seam, and an event reaches the client without waiting for the
projection. A task that is already finished is answered from the read model, which then holds all
of its events. Events are shown in their type's current schema version, decoded (and upcast)
here as ``GET /v1/tasks/{id}/events`` upcasts what the projection stored, so both show the same
documents.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from uuid import UUID

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from gateway.api_errors import InvalidRequest, ServiceUnavailable
from gateway.reading import MAX_EVENTS_PAGE, MAX_SEQUENCE, TaskEventView, TaskReader
from opspawn_contracts.events import TERMINAL_EVENT_TYPES
from opspawn_contracts.subjects import Subjects
from opspawn_messaging.event_log import read_event

logger = logging.getLogger(__name__)


class EventFeed:
    """An open watch; iterate it once, and :meth:`aclose` it (safe to call more than once), or
    use it as ``async with``."""

    def __init__(
        self,
        events: AsyncGenerator[TaskEventView | None],
        subscription: JetStreamContext.PushSubscription | None = None,
    ) -> None:
        self._events = events
        self._subscription = subscription

    def __aiter__(self) -> AsyncIterator[TaskEventView | None]:
        return self._events

    async def __aenter__(self) -> EventFeed:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._events.aclose()
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            try:
                await subscription.unsubscribe()
            except nats.errors.Error as error:
                # The consumer is ephemeral: the server drops it once nobody listens.
                logger.debug("unsubscribing a watch failed: %r", error)


def parse_resume_point(value: str | int | None, name: str = "after") -> int:
    """A resume sequence (``Last-Event-ID``, ``after``): absent is 0, anything else a sequence."""
    if value is None or value == "":
        return 0
    try:
        sequence = int(value)
    except ValueError:
        raise InvalidRequest(f"{name} {value!r} is not an event sequence number") from None
    if not 0 <= sequence <= MAX_SEQUENCE:
        raise InvalidRequest(
            f"{name} must be 0 or an event sequence number up to {MAX_SEQUENCE}, got {sequence}"
        )
    return sequence


class TaskWatcher:
    def __init__(
        self, js: JetStreamContext, subjects: Subjects, reader: TaskReader, *, keepalive: float
    ) -> None:
        self._js = js
        self._subjects = subjects
        self._reader = reader
        self._keepalive = keepalive

    async def open(self, tenant: str, task_id: UUID, after: int = 0) -> EventFeed:
        task = await self._reader.get_task(tenant, task_id)
        if task.status.is_terminal:
            return EventFeed(self._from_read_model(tenant, task_id, after))
        try:
            subscription = await self._js.subscribe(
                self._subjects.task_events(task_id),
                stream=self._subjects.events_stream,
                ordered_consumer=True,
                idle_heartbeat=min(self._keepalive, 5.0),
                config=ConsumerConfig(
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1
                ),
            )
        except nats.errors.Error as error:
            raise ServiceUnavailable(
                f"the task's events cannot be followed: the message bus did not answer ({error!r})"
            ) from error
        return EventFeed(self._from_stream(subscription), subscription)

    async def _from_read_model(
        self, tenant: str, task_id: UUID, after: int
    ) -> AsyncGenerator[TaskEventView | None]:
        while True:
            events = await self._reader.task_events(tenant, task_id, after=after)
            for event in events:
                yield event
            if len(events) < MAX_EVENTS_PAGE:
                return
            after = events[-1].sequence

    async def _from_stream(
        self, subscription: JetStreamContext.PushSubscription
    ) -> AsyncGenerator[TaskEventView | None]:
        while True:
            try:
                message = await subscription.next_msg(timeout=self._keepalive)
            except TimeoutError:  # nats-py raises its own subclass of it too
                yield None
                continue
            sequence = message.metadata.sequence.stream
            try:
                event = read_event(self._subjects, message.subject, message.data)
            except ValidationError as error:
                logger.warning(
                    "event at sequence %d is not valid, not streamed: %s", sequence, error
                )
                continue
            yield TaskEventView.from_payload(sequence, event.model_dump(mode="json"))
            if event.event_type in TERMINAL_EVENT_TYPES:
                return
