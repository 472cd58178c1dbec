"""Writing events into the read model, a batch per transaction: the projection's database half.

Contract of :meth:`TaskProjector.apply_batch` (the live projection and every replay use it):

- It reads the checkpoint (the row named after the projection in ``projection_checkpoints``;
  several projections can share a database) and ignores events at or below it, so a redelivery,
  a restart that re-reads a few events, or a second projector of the same stream cannot apply
  anything twice. The write moves the checkpoint by compare-and-set: it changes anything only if
  the checkpoint is still what the read saw, and otherwise the batch is read and decided again,
  so concurrent projectors never interleave.
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

Throughput: a batch costs two statements whatever its size, and needs no transaction around them
(each statement is atomic on its own): one reads the checkpoint, the touched tasks and which of the
batch's event ids are already indexed; the other moves the checkpoint by compare-and-set and, only
if that held, inserts the index rows and upserts the tasks. Rows travel as arrays through
``unnest``. Round trips, not rows, are what a small batch costs (about 50 µs of client CPU each
on the 2-core benchmark machine), so the statements are written for the driver (asyncpg's ``$n``
parameters).


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

from opspawn_contracts.events import Event
from opspawn_contracts.task import TaskView, fold, is_superseded, runner_attempt
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


CHECKPOINT_TRIES = 10


class CheckpointContended(Exception):
    """Other projectors kept moving the checkpoint between this one's read and write."""


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    applied: int
    """Events indexed and folded (not counting ones below the checkpoint, duplicates or gaps)."""
    superseded: int
    """Of those, events from a superseded attempt (indexed, changed nothing)."""
    checkpoint: int
    """The checkpoint after the batch."""
    moved: bool = False
    """Whether this batch moved the checkpoint."""


class TaskProjector:
    """Writes events into the read model; every method runs in the caller's transaction.

    ``name`` keys the checkpoint row; the live projection uses the events stream's name.
    """

    def __init__(self, name: str, *, schema: str | None = None) -> None:
        self.name = name
        self.schema = None if schema is None else validate_schema_name(schema)
        prefix = "" if self.schema is None else f"{self.schema}."
        self._tasks = f"{prefix}{tasks.name}"
        self._events = f"{prefix}{task_events.name}"
        self._checkpoints = f"{prefix}{projection_checkpoints.name}"
        task_columns = [column.name for column in _TASK_COLUMNS]
        self._load_statement = (
            "SELECT checkpoint.at, indexed.ids, "
            + ", ".join(f"t.{column}" for column in task_columns)
            + f" FROM (SELECT (SELECT last_sequence FROM {self._checkpoints} "
            "WHERE projection = $3) AS at) AS checkpoint "
            f"CROSS JOIN (SELECT ARRAY(SELECT event_id FROM {self._events} "
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
        # $after: the new checkpoint; +1: the projection; +2: the checkpoint the batch was
        # decided at (-1: no checkpoint row yet).
        self._write_statement = (
            f"WITH moved AS (INSERT INTO {self._checkpoints} AS c "
            f"(projection, last_sequence, updated_at) VALUES (${after + 1}, ${after}, now()) "
            f"ON CONFLICT (projection) DO UPDATE SET last_sequence = excluded.last_sequence, "
            f"updated_at = excluded.updated_at WHERE c.last_sequence = ${after + 2} "
            f"RETURNING 1), "
            f"new_events AS (INSERT INTO {self._events} ({', '.join(_EVENT_COLUMNS)}) "
            f"SELECT sequence, task_id, event_id, event_type, "
            f"COALESCE((payload->>'schema_version')::integer, schema_version), occurred_at, "
            f"payload, attempt, superseded FROM unnest({event_arrays}) "
            f"AS stored({', '.join(_EVENT_COLUMNS)}) WHERE EXISTS (SELECT FROM moved)), "
            f"changed_tasks AS (INSERT INTO {self._tasks} ({', '.join(upserted)}) "
            f"SELECT * FROM unnest({task_arrays}) WHERE EXISTS (SELECT FROM moved) "
            f"ON CONFLICT (task_id) DO UPDATE SET {updates}) "
            f"SELECT EXISTS (SELECT FROM moved) AS moved"
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
        return (await self.apply_batch(session, [delivered])).moved

    async def apply_batch(self, session: Session, batch: Sequence[Delivered]) -> BatchOutcome:
        """Project ``batch`` (sequence, event or ``None``) in ascending sequence order."""
        for _ in range(CHECKPOINT_TRIES):
            outcome = await self._try_batch(session, batch)
            if outcome is not None:
                return outcome
        raise CheckpointContended(
            f"projection {self.name}: the checkpoint kept moving ({CHECKPOINT_TRIES} tries)"
        )

    async def _try_batch(self, session: Session, batch: Sequence[Delivered]) -> BatchOutcome | None:
        """Decide ``batch`` from one read and write it by compare-and-set; ``None`` if another
        projector moved the checkpoint in between."""
        events = [
            (sequence, event, payload) for sequence, event, payload in batch if event is not None
        ]
        checkpoint, indexed, states = await self._load(session, events)
        fresh = [delivered for delivered in batch if delivered.sequence > max(checkpoint, 0)]
        if not fresh:
            return BatchOutcome(0, 0, max(checkpoint, 0))
        changed: dict[UUID, int] = {}
        rows: dict[str, list[Any]] = {column: [] for column in _EVENT_COLUMNS}
        sequences, task_ids, event_ids, event_types, versions, times, payloads, attempts, flags = (
            rows[column] for column in _EVENT_COLUMNS
        )
        superseded_count = 0
        for sequence, event, payload in fresh:
            if event is None:
                continue
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
            sequences.append(sequence)
            task_ids.append(event.task_id)
            event_ids.append(event.event_id)
            event_types.append(event.event_type)
            versions.append(event.schema_version)
            times.append(event.occurred_at)
            payloads.append(payload.decode() if payload else event.model_dump_json())
            attempts.append(runner_attempt(event))
            flags.append(superseded)
        last = fresh[-1].sequence
        [written] = await _fetch(
            session,
            self._write_statement,
            *rows.values(),
            *_task_arrays(states, changed).values(),
            last,
            self.name,
            checkpoint,
        )
        if not written["moved"]:
            return None
        return BatchOutcome(len(rows["sequence"]), superseded_count, last, moved=True)

    async def _load(
        self, session: Session, events: list[tuple[int, Event, bytes]]
    ) -> tuple[int, set[UUID], dict[UUID, TaskView]]:
        """The checkpoint (-1 before the projection's first write), which of ``events`` are
        already indexed, and the current state of the tasks they touch (one round trip)."""
        records = await _fetch(
            session,
            self._load_statement,
            [event.event_id for _, event, _ in events],
            list({event.task_id for _, event, _ in events}),
            self.name,
        )
        first = records[0]
        checkpoint = -1 if first["at"] is None else int(first["at"])
        indexed = {UUID(bytes=found.bytes) for found in first["ids"]}
        states: dict[UUID, TaskView] = {}
        for record in records:
            if record["task_id"] is not None:
                state = TaskView.model_validate(record)  # JSON columns: decoded by the codecs
                states[state.task_id] = state
        return checkpoint, indexed, states


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
