"""Projecting the events stream into the Postgres read model, each event exactly once, in batches.

Contract:

- Events are applied in stream order, in batches: whatever the ordered consumer has delivered
  (up to ``batch_size``) goes to :meth:`TaskProjector.apply_batch`, whose one writing statement
  stores the rows and moves the checkpoint together: two round trips a batch, no transaction
  around them. Under load batches fill up by themselves
  (events arrive while the previous batch commits); when idle each event commits on its own at
  once, so batching adds no latency.
- An event at or below the checkpoint has no effect (see :mod:`opspawn_readmodel.projector`).
- An event whose payload fails validation, or whose content Postgres refuses to store, is logged
  at ERROR with its sequence, copied to the dead-letter stream with the reason, and stepped over:
  the checkpoint passes it and the next event is projected. A batch Postgres refuses is retried
  one event at a time to find the event at fault, so its neighbours are still projected.
- Any other database failure (Postgres unreachable, restarting, a missing table) is retried with
  backoff, the same batch again, until it is stored or the projection is stopped: order is never
  given up and no event is skipped because the database was down.

The checkpoint lives in Postgres beside the rows it describes, so NATS keeps no state for the
projection: each start opens an ordered consumer at checkpoint + 1.

The projection writes through a connection of its own, a bare asyncpg one outside the engine's
pool (:func:`~opspawn_readmodel.database.open_session`): at low load every event is a batch of
its own, and SQLAlchemy's connection and transaction handling would cost more CPU than the
write. A failure other than refused content drops that connection; the retry opens a new one.
It keeps synchronous commit: the projection follows the stream from its position in memory, so
a commit PostgreSQL forgot after a crash would leave a gap it never fills.

:class:`~opspawn_readmodel.projector.TaskProjector` is the database half and knows nothing of NATS;
replay tooling feeds it events from anywhere, inside transactions of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from opspawn_contracts.dead_letters import DeadLetterSource
from opspawn_contracts.events import Event
from opspawn_contracts.subjects import Subjects
from opspawn_messaging.dead_letters import DeadLetters
from opspawn_messaging.event_log import read_event
from opspawn_observability.metrics import count_projected, record_projection_progress
from opspawn_readmodel.database import KEY_LOOKUP_SETTINGS, open_session
from opspawn_readmodel.projector import Delivered, TaskProjector, refuses_content
from scheduler.rejections import describe

__all__ = ["Projection", "ProjectionStats", "TaskProjector"]

logger = logging.getLogger(__name__)

FIRST_RETRY_DELAY = 0.1
MAX_RETRY_DELAY = 5.0
DEFAULT_BATCH_SIZE = 1000
SESSION_SETTINGS = {**KEY_LOOKUP_SETTINGS, "application_name": "opspawn-projection"}
IDLE_HEARTBEAT = 1.0
"""Seconds between the server's heartbeats to the ordered consumer. Two missed heartbeats (a NATS
restart drops the in-memory consumer) make the client recreate it after the last event it got."""


@dataclass
class ProjectionStats:
    """Counters for the status report (``opspawn status``)."""

    events_applied: int = 0
    events_superseded: int = 0
    events_stepped_over: int = 0
    batches: int = 0
    last_batch_size: int = 0
    last_commit_at: float | None = None
    """``time.time()`` of the last commit."""


class Projection:
    """Follows the events stream from the stored checkpoint and projects every event."""

    def __init__(
        self,
        engine: AsyncEngine,
        js: JetStreamContext,
        subjects: Subjects,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        dead_letters: DeadLetters | None = None,
    ) -> None:
        """``dead_letters`` receives copies of events that cannot be projected (none: only log)."""
        self.projector = TaskProjector(subjects.events_stream)
        self.stats = ProjectionStats()
        self._engine = engine
        self._js = js
        self._subjects = subjects
        self._batch_size = batch_size
        self._dead_letters = dead_letters
        self._position = 0
        self._moved = asyncio.Condition()
        self._subscription: JetStreamContext.PushSubscription | None = None
        self._session: asyncpg.Connection | None = None
        self.start_sequence: int | None = None
        """Where the current (or last) run began reading the stream."""

    @property
    def position(self) -> int:
        """Every event up to this stream sequence is projected or stepped over."""
        return self._position

    async def lag(self) -> int:
        """Events stored in the stream but not yet projected (raises on a NATS failure)."""
        info = await self._js.stream_info(self._subjects.events_stream)
        return max(0, info.state.last_seq - self._position)

    async def start(self) -> JetStreamContext.PushSubscription:
        """Read the checkpoint and open an ordered consumer just after it."""
        if self._subscription is None:
            async with self._engine.connect() as connection:
                checkpoint = await self.projector.checkpoint(connection)
            await self._reach(checkpoint)
            self.start_sequence = checkpoint + 1
            self._subscription = await self._js.subscribe(
                self._subjects.all_events,
                stream=self._subjects.events_stream,
                ordered_consumer=True,
                idle_heartbeat=IDLE_HEARTBEAT,
                config=ConsumerConfig(
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=self.start_sequence,
                ),
            )
            logger.info(
                "projecting %s into the read model from sequence %d",
                self._subjects.events_stream,
                self.start_sequence,
            )
        return self._subscription

    async def run(self, stop: asyncio.Event) -> None:
        """Project events as they arrive until ``stop`` is set (the batch in hand is finished)."""
        subscription = await self.start()
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while (message := await _next_message(subscription, stopped)) is not None:
                batch = [message]
                while len(batch) < self._batch_size and subscription.pending_msgs > 0:
                    batch.append(await subscription.next_msg(timeout=None))
                await self._project(batch, stop)
        finally:
            stopped.cancel()
            self._subscription = None
            await subscription.unsubscribe()
            await self._close()

    async def wait_for(self, sequence: int, timeout: float) -> None:
        """Return once every event up to ``sequence`` is projected; :class:`TimeoutError` if not."""
        try:
            async with asyncio.timeout(timeout), self._moved:
                await self._moved.wait_for(lambda: self._position >= sequence)
        except TimeoutError:
            raise TimeoutError(
                f"projection reached sequence {self._position}, not {sequence}, in {timeout} s"
            ) from None

    async def _project(self, messages: list[Msg], stop: asyncio.Event) -> None:
        batch: list[Delivered] = []
        for message in messages:
            sequence = message.metadata.sequence.stream
            try:
                event: Event | None = read_event(self._subjects, message.subject, message.data)
            except ValidationError as error:
                reason = f"not a valid event: {describe(error)}"
                logger.error(
                    "event at sequence %d on %s is not valid, stepping over it: %s",
                    sequence,
                    message.subject,
                    describe(error),
                )
                await self._dead_letter(message, reason)
                event = None
            batch.append(Delivered(sequence, event, message.data))
        if await self._store(batch, messages, stop):
            record_projection_progress(self._subjects.events_stream, messages[-1])
            await self._reach(batch[-1][0])

    async def _store(
        self, batch: list[Delivered], messages: list[Msg], stop: asyncio.Event
    ) -> bool:
        """Commit ``batch``; ``False`` if stopped before it committed."""
        delay = FIRST_RETRY_DELAY
        while True:
            try:
                session = await self._open()
                outcome = await self.projector.apply_batch(session, batch)
            except asyncpg.PostgresError as error:
                if refuses_content(error):
                    if len(batch) > 1:
                        return await self._store_one_by_one(batch, messages, stop)
                    sequence, event, _ = batch[0]
                    if event is not None:
                        logger.error(
                            "event at sequence %d cannot be stored, stepping over it: %s",
                            sequence,
                            error,
                        )
                        await self._dead_letter(
                            messages[0], f"Postgres refused its content: {error}"
                        )
                        batch = [Delivered(sequence, None)]
                        continue
                failure: Exception = error
            except (
                OSError,
                TimeoutError,
                asyncpg.InterfaceError,
                # What asyncpg raises when a transaction's rollback meets a session the server
                # ended: that session is unusable, like after any other failure here.
                asyncpg.InternalClientError,
            ) as error:
                failure = error
            else:
                self._count(batch, outcome.applied, outcome.superseded)
                return True
            await self._close()
            logger.warning(
                "cannot write the read model at sequences %d-%d, retrying in %.1f s: %r",
                batch[0][0],
                batch[-1][0],
                delay,
                failure,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
            if stop.is_set():
                return False
            delay = min(delay * 2, MAX_RETRY_DELAY)

    async def _open(self) -> asyncpg.Connection:
        if self._session is None or self._session.is_closed():
            self._session = await open_session(self._engine, server_settings=SESSION_SETTINGS)
        return self._session

    async def _close(self) -> None:
        """Drop the projection's connection (after a failure, or when the projection stops)."""
        session, self._session = self._session, None
        if session is not None and not session.is_closed():
            session.terminate()

    async def _store_one_by_one(
        self, batch: list[Delivered], messages: list[Msg], stop: asyncio.Event
    ) -> bool:
        for item, message in zip(batch, messages, strict=True):
            if not await self._store([item], [message], stop):
                return False
            await self._reach(item[0])
        return True

    def _count(self, batch: list[Delivered], applied: int, superseded: int) -> None:
        count_projected(delivered.event for delivered in batch)
        stats = self.stats
        stats.events_applied += applied
        stats.events_superseded += superseded
        stats.events_stepped_over += sum(1 for delivered in batch if delivered.event is None)
        stats.batches += 1
        stats.last_batch_size = len(batch)
        stats.last_commit_at = time.time()

    async def _dead_letter(self, message: Msg, reason: str) -> None:
        """Best effort: the event stays in the events stream whatever happens here, so a failure
        to copy it is logged and the projection goes on."""
        if self._dead_letters is None:
            return
        try:
            await self._dead_letters.record(DeadLetterSource.EVENTS, message, reason)
        except (NatsError, TimeoutError) as error:
            logger.warning(
                "could not copy event %d to the dead letters: %r",
                message.metadata.sequence.stream,
                error,
            )

    async def _reach(self, sequence: int) -> None:
        async with self._moved:
            self._position = max(self._position, sequence)
            self._moved.notify_all()


async def _next_message(
    subscription: JetStreamContext.PushSubscription, stopped: asyncio.Task[Literal[True]]
) -> Msg | None:
    """The next event, or ``None`` once ``stopped`` is done; a wait cut short loses nothing."""
    received = asyncio.ensure_future(subscription.next_msg(timeout=None))
    waiters: set[asyncio.Future[Any]] = {received, stopped}
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    if received.done():
        return received.result()
    received.cancel()
    await asyncio.wait({received})
    return None
