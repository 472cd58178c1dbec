"""Rebuilding the read model from the events stream, comparing it with the live one, swapping it in.

``opspawn replay`` (see :mod:`opspawn_cli.operations`) is built from these steps:

- :func:`rebuild` feeds the stream, from a sequence on, through the same
  :class:`~opspawn_readmodel.projector.TaskProjector` the scheduler uses (so the same fold and the
  same upcasters), one transaction per batch, into a database or a schema;
- :func:`compare` checks a rebuilt copy against the live read model at one stream position: it
  reads the live copy in a single ``REPEATABLE READ`` snapshot, first brings the rebuilt copy to
  the snapshot's checkpoint (the live projection keeps moving meanwhile), then compares per-table
  checksums and, if they differ, lists the rows that differ;
- :func:`swap_in` makes a rebuilt shadow schema the live read model without stopping anything:
  in one transaction it locks the live tables (checkpoint first, the order the projection takes
  them, so the two cannot deadlock), brings the shadow to the live checkpoint, moves the live
  tables into a ``opspawn_retired_<time>`` schema and the shadow's into their place. Readers and
  the projection wait for that transaction, then find the new tables by name; the retired ones
  stay for inspection until an operator drops them.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.js import JetStreamContext
from pydantic import ValidationError
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from opspawn_cli.progress import ProgressBar
from opspawn_contracts.events import Event
from opspawn_contracts.subjects import Subjects
from opspawn_messaging.event_log import read_event
from opspawn_messaging.stream_reading import read_stream
from opspawn_readmodel.checksums import (
    ReadModelChecksums,
    TableDifferences,
    checksums,
    differences,
)
from opspawn_readmodel.database import asyncpg_url, create_engine
from opspawn_readmodel.migrate import migrate
from opspawn_readmodel.projector import (
    Delivered,
    TaskProjector,
    refuses_content,
    validate_schema_name,
)
from opspawn_readmodel.tables import metadata, projection_checkpoints, task_events, tasks

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 1000
REBUILT_TABLES = (projection_checkpoints, task_events, tasks)
"""The tables derived from events, in the order the projection locks them."""


class ReplayError(RuntimeError):
    """The replay cannot go ahead; the message says why and what to do."""


async def stream_end(js: JetStreamContext, subjects: Subjects) -> int:
    return (await js.stream_info(subjects.events_stream)).state.last_seq


async def rebuild(
    js: JetStreamContext,
    subjects: Subjects,
    engine: AsyncEngine,
    *,
    schema: str | None = None,
    up_to: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: ProgressBar | None = None,
) -> int:
    """Project the stream into ``engine`` (``schema``) from the target's checkpoint + 1 up to
    ``up_to`` (default: the stream's end when the read begins); the position reached."""
    projector = TaskProjector(subjects.events_stream, schema=schema)
    async with engine.connect() as connection:
        position = await projector.checkpoint(connection)
    if up_to is not None and position >= up_to:
        return position
    batch: list[Delivered] = []
    messages = read_stream(
        js, subjects.events_stream, subjects.all_events, start_sequence=position + 1
    )
    async with contextlib.aclosing(messages):
        async for message in messages:
            sequence = message.metadata.sequence.stream
            if up_to is not None and sequence > up_to:
                break
            event = _decoded(subjects, sequence, message.subject, message.data)
            batch.append(Delivered(sequence, event, message.data))
            if len(batch) >= batch_size:
                position = await _commit(engine, projector, batch, progress)
                batch = []
            if up_to is not None and sequence >= up_to:
                break
    if batch:
        position = await _commit(engine, projector, batch, progress)
    return position


def _decoded(subjects: Subjects, sequence: int, subject: str, payload: bytes) -> Event | None:
    """The event, or ``None`` for a message the live projection also steps over."""
    try:
        return read_event(subjects, subject, payload)
    except ValidationError as error:
        logger.warning("event at sequence %d is not valid, stepping over it: %s", sequence, error)
        return None


async def _commit(
    engine: AsyncEngine,
    projector: TaskProjector,
    batch: list[Delivered],
    progress: ProgressBar | None,
) -> int:
    """Project ``batch`` in one transaction; the position reached.

    An event whose content PostgreSQL refuses (:func:`refuses_content`) is stepped over, as the
    live projection steps over (and dead-letters) it: a batch refused is committed again one event
    at a time to find it, and the rest is still projected.
    """
    try:
        async with engine.begin() as connection:
            outcome = await projector.apply_batch(connection, batch)
    except DBAPIError as error:
        if not refuses_content(error):
            raise
        if len(batch) > 1:
            position = 0
            for item in batch:
                position = await _commit(engine, projector, [item], progress)
            return position
        sequence = batch[0].sequence
        logger.warning(
            "event at sequence %d cannot be stored, stepping over it: %s", sequence, error.orig
        )
        return await _commit(engine, projector, [Delivered(sequence, None)], progress)
    if progress is not None:
        progress.update(progress.done + len(batch))
    return outcome.checkpoint


@dataclass(frozen=True, slots=True)
class Comparison:
    position: int
    live: ReadModelChecksums
    rebuilt: ReadModelChecksums
    differences: dict[str, TableDifferences]

    @property
    def identical(self) -> bool:
        return self.live == self.rebuilt


async def live_checkpoint(engine: AsyncEngine, subjects: Subjects) -> int:
    async with engine.connect() as connection:
        return await TaskProjector(subjects.events_stream).checkpoint(connection)


async def compare(
    js: JetStreamContext,
    subjects: Subjects,
    live_engine: AsyncEngine,
    rebuilt_engine: AsyncEngine,
    *,
    rebuilt_schema: str | None = None,
) -> Comparison:
    """Compare the rebuilt copy with one snapshot of the live read model (see module doc)."""
    name = subjects.events_stream
    async with (
        _snapshot(live_engine) as live,
        rebuilt_engine.connect() as rebuilt,
    ):
        live_sums = await checksums(live, name)
        await rebuild(
            js, subjects, rebuilt_engine, schema=rebuilt_schema, up_to=live_sums.checkpoint
        )
        rebuilt_sums = await checksums(rebuilt, name, schema=rebuilt_schema)
        found = (
            {}
            if live_sums == rebuilt_sums
            else await differences(live, rebuilt, rebuilt_schema=rebuilt_schema)
        )
    return Comparison(live_sums.checkpoint, live_sums, rebuilt_sums, found)


@contextlib.asynccontextmanager
async def _snapshot(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    async with engine.connect() as connection:
        connection = await connection.execution_options(isolation_level="REPEATABLE READ")
        async with connection.begin():
            yield connection


async def create_shadow_schema(engine: AsyncEngine, schema: str) -> None:
    """An empty copy of the event-derived tables in ``schema``, which must not exist yet."""
    validate_schema_name(schema)
    async with engine.begin() as connection:
        exists = await connection.scalar(
            text("SELECT 1 FROM pg_namespace WHERE nspname = :schema"), {"schema": schema}
        )
        if exists:
            raise ReplayError(f"schema {schema} exists already: drop it or choose another name")
        await connection.execute(text(f"CREATE SCHEMA {schema}"))
        translated = await connection.execution_options(schema_translate_map={None: schema})
        await translated.run_sync(metadata.create_all, tables=list(REBUILT_TABLES))


async def drop_schema(engine: AsyncEngine, schema: str) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            text(f"DROP SCHEMA IF EXISTS {validate_schema_name(schema)} CASCADE")
        )


async def swap_in(
    js: JetStreamContext, subjects: Subjects, engine: AsyncEngine, shadow: str
) -> str:
    """Make ``shadow`` the live read model (see the module doc); the retired schema's name."""
    validate_schema_name(shadow)
    retired = f"opspawn_retired_{datetime.now(UTC):%Y%m%d%H%M%S}_{uuid.uuid4().hex[:4]}"
    async with engine.begin() as connection:
        live_schema = await connection.scalar(text("SELECT current_schema()"))
        if not live_schema:
            raise ReplayError("the database connection has no current schema to swap into")
        for table in REBUILT_TABLES:
            await connection.execute(
                text(f"LOCK TABLE {live_schema}.{table.name} IN ACCESS EXCLUSIVE MODE")
            )
        checkpoint = await TaskProjector(subjects.events_stream).checkpoint(connection)
        await rebuild(js, subjects, engine, schema=shadow, up_to=checkpoint)
        await connection.execute(text(f"CREATE SCHEMA {retired}"))
        for table in REBUILT_TABLES:
            await connection.execute(
                text(f"ALTER TABLE {live_schema}.{table.name} SET SCHEMA {retired}")
            )
            await connection.execute(
                text(f"ALTER TABLE {shadow}.{table.name} SET SCHEMA {live_schema}")
            )
        await connection.execute(text(f"DROP SCHEMA {shadow}"))
    return retired


async def ensure_empty(engine: AsyncEngine, subjects: Subjects) -> None:
    """Refuse a target that already holds a read model (replay starts at sequence 1)."""
    async with engine.connect() as connection:
        rows = await connection.scalar(text(f"SELECT count(*) FROM {task_events.name}"))
        checkpoint = await TaskProjector(subjects.events_stream).checkpoint(connection)
    if rows or checkpoint:
        raise ReplayError(
            f"the target database is not empty ({rows} indexed events, checkpoint {checkpoint}): "
            "replay into an empty database"
        )


@contextlib.asynccontextmanager
async def scratch_database(live_url: str) -> AsyncIterator[AsyncEngine]:
    """A new, migrated database on the live read model's server, dropped afterwards."""
    url = make_url(asyncpg_url(live_url))
    name = f"opspawn_verify_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        scratch_url = url.set(database=name).render_as_string(hide_password=False)
        await migrate(scratch_url)
        engine = create_engine(scratch_url, pool_size=2)
        try:
            yield engine
        finally:
            await engine.dispose()
            async with admin.connect() as connection:
                await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


@dataclass(frozen=True, slots=True)
class Timed:
    position: int
    events: int
    seconds: float


async def rebuild_with_progress(
    js: JetStreamContext,
    subjects: Subjects,
    engine: AsyncEngine,
    *,
    schema: str | None = None,
    up_to: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    show_progress: bool = True,
) -> Timed:
    target = up_to if up_to is not None else await stream_end(js, subjects)
    async with engine.connect() as connection:
        start = await TaskProjector(subjects.events_stream, schema=schema).checkpoint(connection)
    progress = ProgressBar(max(target - start, 0), label="replay") if show_progress else None
    started = time.monotonic()
    position = await rebuild(
        js, subjects, engine, schema=schema, up_to=target, batch_size=batch_size, progress=progress
    )
    if progress is not None:
        progress.finish()
    return Timed(position, position - start, time.monotonic() - started)
