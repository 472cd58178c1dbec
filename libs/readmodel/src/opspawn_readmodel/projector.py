"""Writing events into the read model, a batch per transaction: the projection's database half.

Contract of :meth:`TaskProjector.apply_batch` (the live projection and every replay use it):

- It runs in the caller's transaction and first locks the checkpoint row (the row named after
  the projection in ``projection_checkpoints``; several projections can share a database). Events
  at or below the checkpoint are ignored, so a redelivery, a restart that re-reads a few events,
  or a second projector of the same stream cannot apply anything twice; the lock serialises
  concurrent projectors.
- The rest are applied in sequence order: each valid event gets its ``task_events`` row (with the
  attempt it belongs to and whether that attempt was superseded) and is folded into its ``tasks``
  row with :func:`~opspawn_contracts.task.evolve`; ``None`` in place of an event (one that could
  not be read) only moves the checkpoint past it. The checkpoint moves to the batch's last
  sequence. Rows, index and checkpoint commit together or not at all.
- An event whose id is already indexed (republished after the dedup window) is not indexed or
  folded again; an event for a task never submitted is indexed but changes no task.

Throughput: a batch costs a fixed handful of statements whatever its size (lock the checkpoint,
look up already-indexed ids, load the touched tasks, insert the index rows, upsert the tasks,
move the checkpoint); rows travel as arrays through ``unnest``.

``schema`` points the projector at another schema (a shadow read model being rebuilt); ``None``
uses the connection's search path, as the live projection does.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy import Column, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import BigInteger, Boolean, DateTime, Integer, Text, TypeEngine, Uuid

from opspawn_contracts.events import Event
from opspawn_contracts.task import TaskView, evolve, is_superseded, runner_attempt
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


def refuses_content(error: DBAPIError) -> bool:
    """Whether PostgreSQL refused an event's content (SQLSTATE class 22, data exception: a NUL
    character, an integer out of range), so that writing it again cannot succeed. Whoever
    projects events steps over such an event rather than retrying it, and the live projection
    and a replay must agree on that, or the rebuilt read model would differ from the live one.
    """
    sqlstate = getattr(error.orig, "sqlstate", None)
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

    def __init__(self, name: str, *, schema: str | None = None) -> None:
        self.name = name
        self.schema = None if schema is None else validate_schema_name(schema)
        prefix = "" if self.schema is None else f"{self.schema}."
        self._tasks = f"{prefix}{tasks.name}"
        self._events = f"{prefix}{task_events.name}"
        self._checkpoints = f"{prefix}{projection_checkpoints.name}"
        self._insert_events = text(
            f"INSERT INTO {self._events} ({', '.join(_EVENT_COLUMNS)}) "
            "SELECT * FROM unnest(CAST(:sequence AS bigint[]), CAST(:task_id AS uuid[]), "
            "CAST(:event_id AS uuid[]), CAST(:event_type AS text[]), "
            "CAST(:schema_version AS integer[]), CAST(:occurred_at AS timestamptz[]), "
            "CAST(:payload AS jsonb[]), CAST(:attempt AS integer[]), "
            "CAST(:superseded AS boolean[]))"
        )
        columns = [*(column.name for column in _TASK_COLUMNS), "last_sequence"]
        arrays = [
            *(f"CAST(:{c.name} AS {_array_type(c.type)}[])" for c in _TASK_COLUMNS),
            "CAST(:last_sequence AS bigint[])",
        ]
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != "task_id")
        self._upsert_tasks = text(
            f"INSERT INTO {self._tasks} ({', '.join(columns)}) "
            f"SELECT * FROM unnest({', '.join(arrays)}) "
            f"ON CONFLICT (task_id) DO UPDATE SET {updates}"
        )

    async def checkpoint(self, connection: AsyncConnection) -> int:
        """The last sequence applied or stepped over (0 before the first); does not lock."""
        value = await connection.scalar(
            text(f"SELECT last_sequence FROM {self._checkpoints} WHERE projection = :name"),
            {"name": self.name},
        )
        return int(value or 0)

    async def apply(self, connection: AsyncConnection, sequence: int, event: Event) -> bool:
        """Project one event; ``False`` (no change) if the checkpoint is already past it."""
        return await self._one(connection, sequence, event)

    async def step_over(self, connection: AsyncConnection, sequence: int) -> bool:
        """Move the checkpoint past an event that cannot be projected; ``False`` if already past."""
        return await self._one(connection, sequence, None)

    async def _one(self, connection: AsyncConnection, sequence: int, event: Event | None) -> bool:
        before = await self._lock_checkpoint(connection)
        if sequence <= before:
            return False
        await self._apply_fresh(connection, [(sequence, event)])
        return True

    async def apply_batch(
        self, connection: AsyncConnection, batch: Sequence[tuple[int, Event | None]]
    ) -> BatchOutcome:
        """Project ``batch`` (sequence, event or ``None``) in ascending sequence order."""
        checkpoint = await self._lock_checkpoint(connection)
        fresh = [(sequence, event) for sequence, event in batch if sequence > checkpoint]
        if not fresh:
            return BatchOutcome(0, 0, checkpoint)
        return await self._apply_fresh(connection, fresh)

    async def _apply_fresh(
        self, connection: AsyncConnection, fresh: list[tuple[int, Event | None]]
    ) -> BatchOutcome:
        events = [(sequence, event) for sequence, event in fresh if event is not None]
        indexed = await self._already_indexed(connection, [event.event_id for _, event in events])
        states = await self._load(connection, {event.task_id for _, event in events})
        changed: dict[UUID, int] = {}
        rows: dict[str, list[Any]] = {column: [] for column in _EVENT_COLUMNS}
        sequences, task_ids, event_ids, event_types, versions, times, payloads, attempts, flags = (
            rows[column] for column in _EVENT_COLUMNS
        )
        superseded_count = 0
        for sequence, event in events:
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
            after = evolve(before, event)
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
            payloads.append(event.model_dump_json())
            attempts.append(runner_attempt(event))
            flags.append(superseded)
        if rows["sequence"]:
            await connection.execute(self._insert_events, rows)
        if changed:
            await connection.execute(self._upsert_tasks, _task_arrays(states, changed))
        last = fresh[-1][0]
        await connection.execute(
            text(
                f"UPDATE {self._checkpoints} SET last_sequence = :sequence, updated_at = now() "
                "WHERE projection = :name"
            ),
            {"sequence": last, "name": self.name},
        )
        return BatchOutcome(len(rows["sequence"]), superseded_count, last)

    async def _already_indexed(self, connection: AsyncConnection, ids: list[UUID]) -> set[UUID]:
        if not ids:
            return set()
        result = await connection.execute(
            text(f"SELECT event_id FROM {self._events} WHERE event_id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": ids},
        )
        return {row[0] for row in result}

    async def _load(self, connection: AsyncConnection, task_ids: set[UUID]) -> dict[UUID, TaskView]:
        if not task_ids:
            return {}
        result = await connection.execute(
            text(f"SELECT * FROM {self._tasks} WHERE task_id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": list(task_ids)},
        )
        return {row.task_id: TaskView.model_validate(row._asdict()) for row in result}

    async def _lock_checkpoint(self, connection: AsyncConnection) -> int:
        await connection.execute(
            text(
                f"INSERT INTO {self._checkpoints} (projection, last_sequence, updated_at) "
                "VALUES (:name, 0, now()) ON CONFLICT DO NOTHING"
            ),
            {"name": self.name},
        )
        value = await connection.scalar(
            text(
                f"SELECT last_sequence FROM {self._checkpoints} WHERE projection = :name FOR UPDATE"
            ),
            {"name": self.name},
        )
        return int(value or 0)


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
