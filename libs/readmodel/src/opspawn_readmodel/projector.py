"""Writing events into the read model, a batch per transaction: the projection's database half.

Contract of :meth:`TaskProjector.apply_batch` (the live projection and every replay use it):

- It runs in the caller's transaction and first locks the checkpoint row (the row named after
  the projection in ``projection_checkpoints``; several projections can share a database). Events
  at or below the checkpoint are ignored, so a redelivery, a restart that re-reads a few events,
  or a second projector of the same stream cannot apply anything twice; the lock serialises
  concurrent projectors.
- The rest are applied in sequence order: each valid event gets its ``task_events`` row (with the
  attempt it belongs to and whether that attempt was superseded) and is folded into its ``tasks``
  row with :func:`~opspawn_contracts.task.fold`; ``None`` in place of an event (one that could
  not be read) only moves the checkpoint past it. The checkpoint moves to the batch's last
  sequence. Rows, index and checkpoint commit together or not at all.
- An event whose id is already indexed (republished after the dedup window) is not indexed or
  folded again; an event for a task never submitted is indexed but changes no task.
- ``task_events.payload`` is the event as stored in the stream, byte for byte as JSON (what the
  projection received, not a re-encoding of what it decoded), and ``schema_version`` the version
  it was stored in; readers bring an older version up to date
  (:func:`~opspawn_contracts.events.upcast_stored`). So a stream replays into the same rows
  whichever release replays it.

Throughput: a batch costs three statements whatever its size: lock the checkpoint; load the
touched tasks together with which of the batch's event ids are already indexed; then one statement
that inserts the index rows, upserts the tasks, moves the checkpoint and (for a projector made
with ``announce=True``) announces the new tasks. Rows travel as arrays through ``unnest``. Round
trips, not rows, are what a small batch costs (about 50 µs of client CPU each on the 2-core
benchmark machine), so the statements are written for the driver (asyncpg's ``$n`` parameters).


Every method takes a :data:`Session`: a SQLAlchemy ``AsyncConnection`` (replays, tests) or a
bare asyncpg connection with :func:`~opspawn_readmodel.database.open_session`'s codecs (the
live projection, which skips SQLAlchemy's per-transaction cost: about 0.3 ms of CPU, more than
the whole write of a one-event batch).

``schema`` points the projector at another schema (a shadow read model being rebuilt); ``None``
uses the connection's search path, as the live projection does.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeAlias
from uuid import UUID

import asyncpg
from sqlalchemy import Column
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import BigInteger, Boolean, DateTime, Integer, Text, TypeEngine, Uuid

from opspawn_contracts.events import Event, TaskSubmitted
from opspawn_contracts.task import TaskView, fold, is_superseded, runner_attempt
from opspawn_readmodel.announcements import NEW_TASKS_CHANNEL, announcement_payload
from opspawn_readmodel.tables import projection_checkpoints, task_events, tasks

logger = logging.getLogger(__name__)

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_TASK_COLUMNS: tuple[Column[Any], ...] = tuple(
    column for column in tasks.columns if column.name in TaskView.model_fields
)
_EVENT_COLUMNS = (
    "sequence",
    "task_id",
    "event_id",
    "event_type",
    "schema_version",
    "occurred_at",
    "payload",
    "attempt",
    "superseded",
)


Session: TypeAlias = AsyncConnection | asyncpg.Connection
"""Where a :class:`TaskProjector` writes: inside the caller's transaction on either kind."""


class Delivered(NamedTuple):
    """A message of the events stream, as the projector takes it."""

    sequence: int
    event: Event | None
    """The decoded event; ``None`` for a message that is none (only the checkpoint passes it)."""
    payload: bytes = b""
    """The message as stored; empty: the event's own encoding stands in for it."""


def refuses_content(error: Exception) -> bool:
    """Whether PostgreSQL refused an event's content (SQLSTATE class 22, data exception: a NUL
    character, an integer out of range), so that writing it again cannot succeed. Whoever
    projects events steps over such an event rather than retrying it, and the live projection
    and a replay must agree on that, or the rebuilt read model would differ from the live one.
    ``error`` is SQLAlchemy's (wrapping the driver's) or asyncpg's own.
    """
    cause = error.orig if isinstance(error, DBAPIError) else error
    sqlstate = getattr(cause, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith("22")


def validate_schema_name(schema: str) -> str:
    """``schema`` if it is a plain lower-case identifier (it is spliced into SQL)."""
    if not _IDENTIFIER.fullmatch(schema):
        raise ValueError(f"schema name {schema!r} must be a lower-case identifier")
    return schema


def _array_type(column_type: TypeEngine[Any]) -> str:
    """The Postgres array type for a column's values, for ``unnest(CAST(:x AS <type>[]))``."""
    for python_type, name in (
        (Uuid, "uuid"),
        (BigInteger, "bigint"),
        (Integer, "integer"),
        (Boolean, "boolean"),
        (DateTime, "timestamptz"),
        (Text, "text"),
    ):
        if isinstance(column_type, python_type):
            return name
    if column_type.__class__.__name__ == "JSONB":
        return "jsonb"
    raise TypeError(f"no array mapping for column type {column_type!r}")


_JSON_TASK_COLUMNS = frozenset(c.name for c in _TASK_COLUMNS if _array_type(c.type) == "jsonb")


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    applied: int
    """Events indexed and folded (not counting ones below the checkpoint, duplicates or gaps)."""
    superseded: int
    """Of those, events from a superseded attempt (indexed, changed nothing)."""
    checkpoint: int
    """The checkpoint after the batch."""


class TaskProjector:
    """Writes events into the read model; every method runs in the caller's transaction.

    ``name`` keys the checkpoint row; the live projection uses the events stream's name.
    """

    def __init__(self, name: str, *, schema: str | None = None, announce: bool = False) -> None:
        """``announce``: announce the tasks each batch submits when it commits (see
        :mod:`opspawn_readmodel.announcements`); the live projection does, replays need not."""
        self.name = name
        self.schema = None if schema is None else validate_schema_name(schema)
        self.announce = announce
        prefix = "" if self.schema is None else f"{self.schema}."
        self._tasks = f"{prefix}{tasks.name}"
        self._events = f"{prefix}{task_events.name}"
        self._checkpoints = f"{prefix}{projection_checkpoints.name}"
        task_columns = [column.name for column in _TASK_COLUMNS]
        self._lock_statement = (
            f"SELECT last_sequence FROM {self._checkpoints} WHERE projection = $1 FOR UPDATE"
        )
        self._create_statement = (
            f"INSERT INTO {self._checkpoints} (projection, last_sequence, updated_at) "
            "VALUES ($1, 0, now()) ON CONFLICT DO NOTHING"
        )
        self._load_statement = (
            "SELECT indexed.ids, "
            + ", ".join(f"t.{column}" for column in task_columns)
            + f" FROM (SELECT ARRAY(SELECT event_id FROM {self._events} "
            "WHERE event_id = ANY($1::uuid[])) AS ids) AS indexed "
            f"LEFT JOIN {self._tasks} AS t ON t.task_id = ANY($2::uuid[])"
        )
        event_arrays = ", ".join(
            f"${number}::{kind}[]"
            for number, kind in enumerate(
                (
                    "bigint", "uuid", "uuid", "text", "integer", "timestamptz", "jsonb",
                    "integer", "boolean",
                ),
                start=1,
            )
        )  # fmt: skip
        upserted = [*task_columns, "last_sequence"]
        first_task_array = len(_EVENT_COLUMNS) + 1
        task_arrays = ", ".join(
            f"${number}::{kind}[]"
            for number, kind in enumerate(
                [*(_array_type(column.type) for column in _TASK_COLUMNS), "bigint"],
                start=first_task_array,
            )
        )
        after = first_task_array + len(upserted)
        updates = ", ".join(f"{c} = excluded.{c}" for c in upserted if c != "task_id")
        self._write_statement = (
            f"WITH new_events AS (INSERT INTO {self._events} ({', '.join(_EVENT_COLUMNS)}) "
            f"SELECT sequence, task_id, event_id, event_type, "
            f"COALESCE((payload->>'schema_version')::integer, schema_version), occurred_at, "
            f"payload, attempt, superseded FROM unnest({event_arrays}) "
            f"AS stored({', '.join(_EVENT_COLUMNS)})), "
            f"changed_tasks AS (INSERT INTO {self._tasks} ({', '.join(upserted)}) "
            f"SELECT * FROM unnest({task_arrays}) "
            f"ON CONFLICT (task_id) DO UPDATE SET {updates}), "
            f"moved AS (UPDATE {self._checkpoints} SET last_sequence = ${after}, "
            f"updated_at = now() WHERE projection = ${after + 1}) "
            f"SELECT pg_notify('{NEW_TASKS_CHANNEL}', ${after + 2}) WHERE ${after + 2} IS NOT NULL"
        )

    async def checkpoint(self, session: Session) -> int:
        """The last sequence applied or stepped over (0 before the first); does not lock."""
        rows = await _fetch(
            session,
            f"SELECT last_sequence FROM {self._checkpoints} WHERE projection = $1",
            self.name,
        )
        return int(rows[0]["last_sequence"]) if rows else 0

    async def apply(
        self, session: Session, sequence: int, event: Event, payload: bytes = b""
    ) -> bool:
        """Project one event; ``False`` (no change) if the checkpoint is already past it."""
        return await self._one(session, Delivered(sequence, event, payload))

    async def step_over(self, session: Session, sequence: int) -> bool:
        """Move the checkpoint past an event that cannot be projected; ``False`` if already past."""
        return await self._one(session, Delivered(sequence, None))

    async def _one(self, session: Session, delivered: Delivered) -> bool:
        before = await self._lock_checkpoint(session)
        if delivered.sequence <= before:
            return False
        await self._apply_fresh(session, [delivered])
        return True

    async def apply_batch(self, session: Session, batch: Sequence[Delivered]) -> BatchOutcome:
        """Project ``batch`` (sequence, event or ``None``) in ascending sequence order."""
        checkpoint = await self._lock_checkpoint(session)
        fresh = [delivered for delivered in batch if delivered.sequence > checkpoint]
        if not fresh:
            return BatchOutcome(0, 0, checkpoint)
        return await self._apply_fresh(session, fresh)

    async def _apply_fresh(self, session: Session, fresh: list[Delivered]) -> BatchOutcome:
        events = [
            (sequence, event, payload) for sequence, event, payload in fresh if event is not None
        ]
        indexed, states = await self._load(session, events)
        changed: dict[UUID, int] = {}
        rows: dict[str, list[Any]] = {column: [] for column in _EVENT_COLUMNS}
        sequences, task_ids, event_ids, event_types, versions, times, payloads, attempts, flags = (
            rows[column] for column in _EVENT_COLUMNS
        )
        superseded_count = 0
        submitted: list[UUID] = []
        for sequence, event, payload in events:
            if event.event_id in indexed:
                logger.warning(
                    "event %s (sequence %d) is already in task_events; not applied again",
                    event.event_id,
                    sequence,
                )
                continue
            indexed.add(event.event_id)
            before = states.get(event.task_id)
            superseded = is_superseded(before, event)
            superseded_count += superseded
            after = fold((event,), before)
            if after is None:
                logger.warning(
                    "event %s (sequence %d) is for task %s, which was never submitted",
                    event.event_type,
                    sequence,
                    event.task_id,
                )
            else:
                states[event.task_id] = after
                changed[event.task_id] = sequence
                if before is None and isinstance(event, TaskSubmitted):
                    submitted.append(event.task_id)
            sequences.append(sequence)
            task_ids.append(event.task_id)
            event_ids.append(event.event_id)
            event_types.append(event.event_type)
            versions.append(event.schema_version)
            times.append(event.occurred_at)
            payloads.append(payload.decode() if payload else event.model_dump_json())
            attempts.append(runner_attempt(event))
            flags.append(superseded)
        last = fresh[-1][0]
        announcement = announcement_payload(submitted) if self.announce else None
        await _fetch(
            session,
            self._write_statement,
            *rows.values(),
            *_task_arrays(states, changed).values(),
            last,
            self.name,
            announcement,
        )
        return BatchOutcome(len(rows["sequence"]), superseded_count, last)

    async def _load(
        self, session: Session, events: list[tuple[int, Event, bytes]]
    ) -> tuple[set[UUID], dict[UUID, TaskView]]:
        """Which of ``events`` are already indexed, and the current state of the tasks they touch
        (one round trip)."""
        if not events:
            return set(), {}
        records = await _fetch(
            session,
            self._load_statement,
            [event.event_id for _, event, _ in events],
            list({event.task_id for _, event, _ in events}),
        )
        indexed = {UUID(bytes=found.bytes) for found in records[0]["ids"]}
        states: dict[UUID, TaskView] = {}
        for record in records:
            if record["task_id"] is not None:
                state = TaskView.model_validate(record)  # JSON columns: decoded by the codecs
                states[state.task_id] = state
        return indexed, states

    async def _lock_checkpoint(self, session: Session) -> int:
        """Lock this projection's checkpoint row for the transaction (creating it at 0 on first
        use) and return it. It is the first statement: a SQLAlchemy connection begins its
        transaction here."""
        rows = await _fetch(session, self._lock_statement, self.name)
        if not rows:
            await _fetch(session, self._create_statement, self.name)
            rows = await _fetch(session, self._lock_statement, self.name)
        return int(rows[0]["last_sequence"])


async def _fetch(session: Session, statement: str, *arguments: Any) -> list[Mapping[str, Any]]:
    """Run ``statement`` (asyncpg ``$n`` parameters) on either kind of session; its rows."""
    if isinstance(session, AsyncConnection):
        result = await session.exec_driver_sql(statement, arguments)
        return [dict(row) for row in result.mappings()] if result.returns_rows else []
    return [dict(record.items()) for record in await session.fetch(statement, *arguments)]


def _task_arrays(states: dict[UUID, TaskView], changed: dict[UUID, int]) -> dict[str, list[Any]]:
    """Column arrays for the tasks upsert: one element per changed task."""
    arrays: dict[str, list[Any]] = {column.name: [] for column in _TASK_COLUMNS}
    arrays["last_sequence"] = []
    for task_id, sequence in changed.items():
        values = states[task_id].model_dump()
        for name in arrays.keys() - {"last_sequence"}:
            value = values[name]
            if name in _JSON_TASK_COLUMNS:
                value = None if value is None else json.dumps(value)
            elif name == "status":
                value = str(value)
            arrays[name].append(value)
        arrays["last_sequence"].append(sequence)
    return arrays
