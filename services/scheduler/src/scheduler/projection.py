"""Projecting the events stream into the Postgres read model, each event exactly once.

Contract:

- Events are applied in stream order. For each one a single transaction inserts its
  ``task_events`` row, folds it into its ``tasks`` row with :func:`evolve`, and moves the
  checkpoint (the ``projection_checkpoints`` row named after the events stream, so several
  prefixes can share a database) to its sequence.
- An event at or below the checkpoint has no effect: a redelivery, a restart that re-reads a few
  events, or a second scheduler projecting the same stream cannot apply anything twice. The
  checkpoint row stays locked until the transaction ends, which serialises concurrent projectors.
- An event whose payload fails validation, or whose content Postgres refuses to store, is logged
  at ERROR with its sequence and stepped over: the checkpoint passes it and the next event is
  projected.
- Any other database failure (Postgres unreachable, restarting, a missing table) is retried with
  backoff, the same event again, until it is stored or the projection is stopped: order is never
  given up and no event is skipped because the database was down.

The checkpoint lives in Postgres beside the rows it describes, so NATS keeps no state for the
projection: each start opens an ordered consumer at checkpoint + 1.

:class:`TaskProjector` is the database half and knows nothing of NATS, so replay tooling can feed
it events from anywhere, inside transactions of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Literal

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from opspawn_contracts.events import Event, decode_event
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.task import TaskView, evolve
from opspawn_readmodel.tables import projection_checkpoints, task_events, tasks
from scheduler.rejections import describe

logger = logging.getLogger(__name__)

FIRST_RETRY_DELAY = 0.1
MAX_RETRY_DELAY = 5.0
IDLE_HEARTBEAT = 1.0
"""Seconds between the server's heartbeats to the ordered consumer. Two missed heartbeats (a NATS
restart drops the in-memory consumer) make the client recreate it after the last event it got."""


class TaskProjector:
    """Writes events into the read model; every method runs in the caller's transaction.

    ``name`` keys the checkpoint row; the live projection uses the events stream's name.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    async def checkpoint(self, connection: AsyncConnection) -> int:
        """The last sequence applied or stepped over (0 before the first); does not lock."""
        value = await connection.scalar(
            select(projection_checkpoints.c.last_sequence).where(
                projection_checkpoints.c.projection == self.name
            )
        )
        return int(value or 0)

    async def apply(self, connection: AsyncConnection, sequence: int, event: Event) -> bool:
        """Project ``event``, stored at ``sequence``; ``False`` (no change) if already past it."""
        if sequence <= await self._lock_checkpoint(connection):
            return False
        indexed = await connection.scalar(
            insert(task_events)
            .values(
                sequence=sequence,
                task_id=event.task_id,
                event_id=event.event_id,
                event_type=event.event_type,
                schema_version=event.schema_version,
                occurred_at=event.occurred_at,
                payload=event.model_dump(mode="json"),
            )
            .on_conflict_do_nothing()
            .returning(task_events.c.sequence)
        )
        if indexed is None:
            logger.warning(
                "event %s (sequence %d) is already in task_events; not applied again",
                event.event_id,
                sequence,
            )
        else:
            await self._fold(connection, sequence, event)
        await self._move_checkpoint(connection, sequence)
        return True

    async def step_over(self, connection: AsyncConnection, sequence: int) -> bool:
        """Move the checkpoint past an event that cannot be projected; ``False`` if already past."""
        if sequence <= await self._lock_checkpoint(connection):
            return False
        await self._move_checkpoint(connection, sequence)
        return True

    async def _fold(self, connection: AsyncConnection, sequence: int, event: Event) -> None:
        row = (
            await connection.execute(select(tasks).where(tasks.c.task_id == event.task_id))
        ).first()
        state = None if row is None else TaskView.model_validate(row._asdict())
        new_state = evolve(state, event)
        if new_state is None:
            logger.warning(
                "event %s (sequence %d) is for task %s, which was never submitted",
                event.event_type,
                sequence,
                event.task_id,
            )
            return
        values = new_state.model_dump() | {
            "status": new_state.status.value,
            "last_sequence": sequence,
        }
        upsert = insert(tasks).values(values)
        await connection.execute(
            upsert.on_conflict_do_update(
                index_elements=[tasks.c.task_id],
                set_={column: upsert.excluded[column] for column in values if column != "task_id"},
            )
        )

    async def _lock_checkpoint(self, connection: AsyncConnection) -> int:
        await connection.execute(
            insert(projection_checkpoints)
            .values(projection=self.name, last_sequence=0, updated_at=func.now())
            .on_conflict_do_nothing()
        )
        value = await connection.scalar(
            select(projection_checkpoints.c.last_sequence)
            .where(projection_checkpoints.c.projection == self.name)
            .with_for_update()
        )
        return int(value or 0)

    async def _move_checkpoint(self, connection: AsyncConnection, sequence: int) -> None:
        await connection.execute(
            update(projection_checkpoints)
            .where(projection_checkpoints.c.projection == self.name)
            .values(last_sequence=sequence, updated_at=func.now())
        )


class Projection:
    """Follows the events stream from the stored checkpoint and projects every event."""

    def __init__(self, engine: AsyncEngine, js: JetStreamContext, subjects: Subjects) -> None:
        self.projector = TaskProjector(subjects.events_stream)
        self._engine = engine
        self._js = js
        self._subjects = subjects
        self._position = 0
        self._moved = asyncio.Condition()
        self._subscription: JetStreamContext.PushSubscription | None = None
        self.start_sequence: int | None = None
        """Where the current (or last) run began reading the stream."""

    @property
    def position(self) -> int:
        """Every event up to this stream sequence is projected or stepped over."""
        return self._position

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
        """Project events as they arrive until ``stop`` is set (the event in hand is finished)."""
        subscription = await self.start()
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while (message := await _next_message(subscription, stopped)) is not None:
                await self._project(message, stop)
        finally:
            stopped.cancel()
            self._subscription = None
            await subscription.unsubscribe()

    async def wait_for(self, sequence: int, timeout: float) -> None:
        """Return once every event up to ``sequence`` is projected; :class:`TimeoutError` if not."""
        try:
            async with asyncio.timeout(timeout), self._moved:
                await self._moved.wait_for(lambda: self._position >= sequence)
        except TimeoutError:
            raise TimeoutError(
                f"projection reached sequence {self._position}, not {sequence}, in {timeout} s"
            ) from None

    async def _project(self, message: Msg, stop: asyncio.Event) -> None:
        sequence = message.metadata.sequence.stream
        event: Event | None
        try:
            event = decode_event(message.data)
        except ValidationError as error:
            logger.error(
                "event at sequence %d on %s is not valid, stepping over it: %s",
                sequence,
                message.subject,
                describe(error),
            )
            event = None
        if await self._store(sequence, event, stop):
            await self._reach(sequence)

    async def _store(self, sequence: int, event: Event | None, stop: asyncio.Event) -> bool:
        """Commit ``event`` (``None``: step over it); ``False`` if stopped before it committed."""
        delay = FIRST_RETRY_DELAY
        while True:
            try:
                async with self._engine.begin() as connection:
                    if event is None:
                        await self.projector.step_over(connection, sequence)
                    else:
                        await self.projector.apply(connection, sequence, event)
            except DBAPIError as error:
                if event is not None and _refuses_content(error):
                    logger.error(
                        "event at sequence %d cannot be stored, stepping over it: %s",
                        sequence,
                        error.orig,
                    )
                    event = None
                    continue
                failure: Exception = error
            except OSError as error:
                failure = error
            else:
                return True
            logger.warning(
                "cannot write the read model at sequence %d, retrying in %.1f s: %r",
                sequence,
                delay,
                failure,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
            if stop.is_set():
                return False
            delay = min(delay * 2, MAX_RETRY_DELAY)

    async def _reach(self, sequence: int) -> None:
        async with self._moved:
            self._position = max(self._position, sequence)
            self._moved.notify_all()


def _refuses_content(error: DBAPIError) -> bool:
    """SQLSTATE class 22 (data exception): Postgres refused the event's content, say a NUL
    character, so retrying cannot help. Any other database error may pass and is retried.
    """
    sqlstate = getattr(error.orig, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith("22")


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
